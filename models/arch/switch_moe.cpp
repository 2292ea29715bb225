#include "models/arch/switch_moe.h"

#include "models/kernels/grouped_ffn.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/projection.h"
#include "models/kernels/switch_top1.h"

#include <torch/nn/functional/embedding.h>
#include <torch/nn/functional/linear.h>

#include <cmath>
#include <string>

namespace distill {

namespace {

// Top-1 gates as one autograd node: gate[a] = probs[token[a], expert[token[a]]] with probs =
// softmax(logits). Softmax, gather and index_select with their three backward nodes took ~80 us
// at small8 (an expert's six products take ~130); this is one pass each way over [N, E].
struct Top1GateFunction : public torch::autograd::Function<Top1GateFunction> {
  // logits [N, E] (for the graph only), probs [N, E] (their softmax, detached), expert [N], token [M]
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& /*logits*/,
                               const torch::Tensor& probs, const torch::Tensor& expert, const torch::Tensor& token) {
    ctx->save_for_backward({probs, expert, token});
    const int64_t M = token.size(0), E = probs.size(1);
    auto gate = torch::empty({M}, probs.options());
    const int64_t* tok = token.data_ptr<int64_t>();
    const int64_t* ex = expert.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "top1_gate", [&] {
      const scalar_t* p = probs.data_ptr<scalar_t>();
      scalar_t* g = gate.data_ptr<scalar_t>();
      for (int64_t a = 0; a < M; ++a) g[a] = p[tok[a] * E + ex[tok[a]]];
    });
    return gate;
  }

  // d logits[t, j] = d gate * p[t, e] * (1{j == e} - p[t, j]) for the token's assignment; zero for
  // tokens without one (dropped).
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& probs = saved[0];
    const auto& expert = saved[1];
    const auto& token = saved[2];
    const auto dgate = grads[0].contiguous();
    const int64_t M = token.size(0), E = probs.size(1);
    auto dlogits = torch::zeros_like(probs);  // [N, E]
    const int64_t* tok = token.data_ptr<int64_t>();
    const int64_t* ex = expert.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "top1_gate_backward", [&] {
      const scalar_t* p = probs.data_ptr<scalar_t>();
      const scalar_t* dg = dgate.data_ptr<scalar_t>();
      scalar_t* dl = dlogits.data_ptr<scalar_t>();
      for (int64_t a = 0; a < M; ++a) {
        const int64_t t = tok[a];
        add_top1_gate_gradient(dl + t * E, p + t * E, dg[a], ex[t], E);
      }
    });
    return {dlogits, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

SwitchRouterImpl::SwitchRouterImpl(int64_t d_model, const RoutingOptions& options) : options_(options) {
  classifier = register_module(
      "classifier", torch::nn::Linear(torch::nn::LinearOptions(d_model, options.num_experts).bias(options.router_bias)));
}

torch::Tensor SwitchRouterImpl::forward(const torch::Tensor& x) {
  // The router runs in float32 (or wider) whatever the model dtype: a bf16 softmax over experts
  // is too coarse for stable routing.
  Fp32Products fp32;
  const auto dtype = c10::promoteTypes(classifier->weight.scalar_type(), torch::kFloat32);
  auto h = x.to(dtype);
  if (is_training() && options_.jitter_noise > 0) {
    h = h * torch::empty_like(h).uniform_(1.0 - options_.jitter_noise, 1.0 + options_.jitter_noise);
  }
  auto bias = classifier->bias.defined() ? classifier->bias.to(dtype) : torch::Tensor();
  auto logits = project(h, classifier->weight.to(dtype));  // [..., E]
  return bias.defined() ? logits + bias : logits;
}

SwitchExpertsImpl::SwitchExpertsImpl(int64_t num_experts, const FfnOptions& expert) : options_(expert) {
  for (int64_t e = 0; e < num_experts; ++e) {
    experts.push_back(register_module("expert_" + std::to_string(e), DenseActDense(expert)));
  }
}

SwitchSparseMlpImpl::SwitchSparseMlpImpl(int64_t d_model, const RoutingOptions& routing, const FfnOptions& expert)
    : options_(routing) {
  router = register_module("router", SwitchRouter(d_model, routing));
  experts = register_module("experts", SwitchExperts(routing.num_experts, expert));
}

SparseMlpOutput SwitchSparseMlpImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2), E = options_.num_experts, k = options_.top_k;
  torch::Tensor active;  // [B, S] bool
  if (options_.ignore_padding && mask.defined()) active = (mask != 0).to(torch::kCPU).contiguous();
  const int64_t routed = active.defined() ? active.sum().item<int64_t>() : B * S;
  const int64_t capacity = expert_capacity_for(options_, routed, is_training());
  const auto& ffn = experts->options();
  const bool relu_experts = !ffn.gated && ffn.act == "relu";
  auto flat = x.reshape({B * S, D});  // [N, D]
  std::vector<torch::Tensor> wi, wo;  // the ReLU experts' weights
  if (relu_experts) {
    for (const auto& ex : experts->experts) {
      wi.push_back(ex->wi->weight);
      wo.push_back(ex->wo->weight);
    }
  }
  if (k == 1 && relu_experts && fused_top1_ && !router->classifier->bias.defined()) {
    const auto& w = router->classifier->weight;
    if (top1_switch_applies(flat, w, wi, wo)) {
      const double jitter = is_training() ? options_.jitter_noise : 0.0;
      // Drawn as SwitchRouter draws it, so both paths see the same noise.
      auto noise = jitter > 0 ? torch::empty_like(flat).uniform_(1.0 - jitter, 1.0 + jitter) : torch::Tensor();
      const Top1Routing routing{B, S, options_.capacity_mode, capacity,
                                active.defined() ? active.view({B * S}) : torch::Tensor()};
      auto f = top1_switch(flat, noise, w, wi, wo, routing, is_training() ? ffn.dropout : 0.0);
      RouterOutput ro;
      ro.logits = f.logits.view({B, S, E});
      ro.top_experts = f.expert.view({B, S, 1});
      ro.top_kept = f.kept.view({B, S, 1});
      ro.expert_choice = f.expert.view({B, S});
      ro.kept = f.kept.view({B, S});
      ro.active = active;
      ro.capacity = capacity;
      return {f.out.view({B, S, D}), ro};
    }
  }

  auto logits = router->forward(x);  // [B, S, E] float32
  const bool top1_gate = k == 1 && x.device().is_cpu();
  torch::Tensor probs;  // [B, S, E]
  {
    // With top-1 the gates' gradient is Top1GateFunction's; top-k differentiates through these.
    c10::optional<torch::NoGradGuard> top1;
    if (top1_gate) top1.emplace();
    probs = torch::softmax(logits, -1);
  }
  Routing r = route_tokens(probs, k, options_.capacity_mode, capacity, active);

  // Grouped dispatch: kept assignments sorted by expert, one matmul chain per expert on a
  // contiguous slice, results added back into their tokens' rows. Dropped tokens receive nothing.
  torch::Tensor src, gate;            // [M] token and gate of each assignment
  if (top1_gate) {
    src = r.assignment;
    gate = Top1GateFunction::apply(logits.reshape({B * S, E}), probs.reshape({B * S, E}).contiguous(),
                                   r.experts.reshape(-1).contiguous(), src.contiguous());
  } else {
    src = r.assignment.div(k, "floor");
    gate = r.gates.reshape(-1).index_select(0, r.assignment);
  }

  torch::Tensor out;  // [N, D]
  if (relu_experts) {
    out = grouped_relu_ffn(flat, gate, {src, r.counts}, wi, wo, is_training() ? ffn.dropout : 0.0);
  } else {
    auto xs = flat.index_select(0, src);  // [M, D]
    auto parts = xs.split_with_sizes(r.counts);
    std::vector<torch::Tensor> outs;
    for (int64_t e = 0; e < E; ++e) {
      if (r.counts[static_cast<size_t>(e)] > 0) outs.push_back(experts->experts[e]->forward(parts[e]));
    }
    out = torch::zeros_like(flat);
    if (!outs.empty()) out = out.index_add(0, src, torch::cat(outs, 0) * gate.to(x.scalar_type()).unsqueeze(1));
  }

  RouterOutput ro;
  ro.logits = logits;
  ro.top_experts = r.experts.view({B, S, k});
  ro.top_kept = r.kept.view({B, S, k});
  ro.expert_choice = ro.top_experts.select(2, 0);
  ro.kept = ro.top_kept.select(2, 0);
  ro.active = active;
  ro.capacity = capacity;
  return {out.view({B, S, D}), ro};
}

torch::Tensor router_z_loss(const torch::Tensor& logits, const torch::Tensor& active) {
  auto log_z = torch::logsumexp(logits, -1);  // [B, S]
  if (!active.defined()) return log_z.pow(2).sum() / log_z.numel();
  auto m = active.to(logits.device(), log_z.scalar_type());
  return (log_z.pow(2) * m).sum() / m.sum().clamp_min(1.0);
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_choice,
                                  const torch::Tensor& active) {
  const int64_t E = logits.size(-1);
  auto probs = torch::softmax(logits, -1, torch::kFloat32);                     // [B, S, E]
  auto chosen = torch::nn::functional::one_hot(expert_choice, E).to(torch::kFloat32);  // [B, S, E]
  if (!active.defined()) {
    auto f = chosen.mean(-2);  // [B, E]
    auto p = probs.mean(-2);   // [B, E]
    return (f * p).mean() * static_cast<double>(E * E);  // = E * mean_b sum_i f_i P_i, HF's form
  }
  auto m = active.to(logits.device(), torch::kFloat32).unsqueeze(-1);  // [B, S, 1]
  auto n = m.sum(-2);                                                   // [B, 1] active tokens
  auto f = (chosen * m).sum(-2) / n.clamp_min(1.0);                     // [B, E]
  auto p = (probs * m).sum(-2) / n.clamp_min(1.0);                      // [B, E]
  auto per_sequence = (f * p).sum(-1);                                  // [B]
  auto with_tokens = (n.squeeze(-1) > 0).to(torch::kFloat32);
  return (per_sequence * with_tokens).sum() / with_tokens.sum().clamp_min(1.0) * static_cast<double>(E);
}

RouterLosses router_losses(const std::vector<RouterOutput>& layers, const torch::Device& device, RouterLoss rule) {
  auto zero = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  if (layers.empty()) return {zero, zero, {}};
  torch::Tensor z = zero, aux = zero;
  std::vector<torch::Tensor> layer_aux;
  for (const auto& l : layers) {
    auto a = load_balancing_loss(l.logits, l.expert_choice, l.active);
    layer_aux.push_back(a.detach());
    if (rule == RouterLoss::kPaper) {
      z = z + router_z_loss(l.logits, l.active);
      aux = aux + a;
    }
  }
  if (rule == RouterLoss::kHf) {
    // Hugging Face: the stack's router logits concatenated along the sequence, every token counted
    // (padding too), a dropped token's expert index 0 (its capacity-masked one-hot is all zeros).
    std::vector<torch::Tensor> logits, index;
    for (const auto& l : layers) {
      logits.push_back(l.logits);
      index.push_back(torch::where(l.kept, l.expert_choice, torch::zeros_like(l.expert_choice)));
    }
    auto all = torch::cat(logits, 1);  // [B, L*S, E]
    return {router_z_loss(all), load_balancing_loss(all, torch::cat(index, 1)), std::move(layer_aux)};
  }
  const double n = static_cast<double>(layers.size());
  return {z / n, aux / n, std::move(layer_aux)};
}

}  // namespace distill
