#include "models/switch_moe.h"

#include "models/grouped_ffn.h"
#include "models/mixed_precision.h"
#include "models/projection.h"

#include <torch/nn/functional/embedding.h>
#include <torch/nn/functional/linear.h>

#include <cmath>
#include <string>

namespace distill {

int64_t expert_capacity_for(const RoutingOptions& o, int64_t batch, int64_t seq_len, bool training) {
  if (o.capacity_mode == CapacityMode::kFixed) return o.expert_capacity;
  const double factor = training ? o.capacity_factor_train : o.capacity_factor_eval;
  const double assignments = static_cast<double>(batch * seq_len * o.top_k);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(assignments / o.num_experts * factor)));
}

namespace {

// One pass over [N, E] probabilities: top-k choices, queue positions and the dispatch order. At
// this size (a few thousand tokens, a handful of experts) a plain loop beats a dozen tensor ops.
template <typename T>
void route_pass(const T* p, int64_t B, int64_t S, int64_t E, int64_t k, CapacityMode mode, int64_t capacity,
                int64_t* experts, bool* kept, std::vector<std::vector<int64_t>>& by_expert) {
  const int64_t N = B * S;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = p + n * E;
    int64_t* choice = experts + n * k;
    for (int64_t r = 0; r < k; ++r) {
      // Strictly greater: ties go to the lowest index, as Hugging Face's argmax.
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t j = 0; j < r; ++j) taken = taken || choice[j] == e;
        if (!taken && (best < 0 || row[e] > row[best])) best = e;
      }
      choice[r] = best;
    }
  }
  // Every first choice queues before any second choice: per sequence (fixed) or over the whole
  // batch, rows in order (factor).
  std::vector<int64_t> load(static_cast<size_t>(E), 0);
  auto queue = [&](int64_t b, int64_t r) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t a = (b * S + s) * k + r;
      kept[a] = ++load[static_cast<size_t>(experts[a])] <= capacity;
    }
  };
  if (mode == CapacityMode::kFixed) {
    for (int64_t b = 0; b < B; ++b) {
      std::fill(load.begin(), load.end(), 0);
      for (int64_t r = 0; r < k; ++r) queue(b, r);
    }
  } else {
    for (int64_t r = 0; r < k; ++r)
      for (int64_t b = 0; b < B; ++b) queue(b, r);
  }
  by_expert.assign(static_cast<size_t>(E), {});
  for (int64_t a = 0; a < N * k; ++a) {
    if (kept[a]) by_expert[static_cast<size_t>(experts[a])].push_back(a);
  }
}

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
        const int64_t t = tok[a], e = ex[t];
        const scalar_t c = dg[a] * p[t * E + e];
        for (int64_t j = 0; j < E; ++j) dl[t * E + j] -= c * p[t * E + j];
        dl[t * E + e] += c;
      }
    });
    return {dlogits, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

Routing route_tokens(const torch::Tensor& probs, int64_t top_k, CapacityMode mode, int64_t capacity) {
  const int64_t B = probs.size(0), S = probs.size(1), E = probs.size(2), k = top_k, N = B * S;
  auto p = probs.detach().to(torch::kCPU).contiguous();
  auto experts = torch::empty({N, k}, torch::kLong);
  auto kept = torch::empty({N, k}, torch::kBool);
  std::vector<std::vector<int64_t>> by_expert;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "route_tokens", [&] {
    route_pass(p.data_ptr<scalar_t>(), B, S, E, k, mode, capacity, experts.data_ptr<int64_t>(), kept.data_ptr<bool>(), by_expert);
  });
  Routing r;
  r.capacity = capacity;
  r.experts = experts.to(probs.device());
  r.kept = kept.to(probs.device());
  auto values = probs.reshape({N, E}).gather(1, r.experts);  // [N, k], differentiable
  r.gates = k == 1 ? values : values / values.sum(-1, /*keepdim=*/true);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(N * k));
  for (const auto& list : by_expert) {
    r.counts.push_back(static_cast<int64_t>(list.size()));
    order.insert(order.end(), list.begin(), list.end());
  }
  r.assignment = torch::tensor(order, torch::kLong).to(probs.device());
  return r;
}

SwitchRouterImpl::SwitchRouterImpl(int64_t d_model, const RoutingOptions& options) : options_(options) {
  classifier = register_module(
      "classifier", torch::nn::Linear(torch::nn::LinearOptions(d_model, options.num_experts).bias(options.router_bias)));
}

torch::Tensor SwitchRouterImpl::forward(const torch::Tensor& x) {
  // The router runs in float32 (or wider) whatever the model dtype: a bf16 softmax over experts
  // is too coarse for stable routing.
  NoAutocast fp32;
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

SparseMlpOutput SwitchSparseMlpImpl::forward(const torch::Tensor& x) {
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2), E = options_.num_experts, k = options_.top_k;
  auto logits = router->forward(x);  // [B, S, E] float32
  const bool top1_gate = k == 1 && x.device().is_cpu();
  torch::Tensor probs;  // [B, S, E]
  {
    // With top-1 the gates' gradient is Top1GateFunction's; top-k differentiates through these.
    c10::optional<torch::NoGradGuard> top1;
    if (top1_gate) top1.emplace();
    probs = torch::softmax(logits, -1);
  }
  const int64_t capacity = expert_capacity_for(options_, B, S, is_training());
  Routing r = route_tokens(probs, k, options_.capacity_mode, capacity);

  // Grouped dispatch: kept assignments sorted by expert, one matmul chain per expert on a
  // contiguous slice, results added back into their tokens' rows. Dropped tokens receive nothing.
  auto flat = x.reshape({B * S, D});  // [N, D]
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
  const auto& ffn = experts->options();
  if (!ffn.gated && ffn.act == "relu") {
    std::vector<torch::Tensor> wi, wo;
    for (const auto& ex : experts->experts) {
      wi.push_back(ex->wi->weight);
      wo.push_back(ex->wo->weight);
    }
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
  ro.capacity = capacity;
  return {out.view({B, S, D}), ro};
}

torch::Tensor router_z_loss(const torch::Tensor& logits) {
  auto log_z = torch::logsumexp(logits, -1);  // [B, S]
  return log_z.pow(2).sum() / log_z.numel();
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_choice) {
  const int64_t E = logits.size(-1);
  auto probs = torch::softmax(logits, -1, torch::kFloat32);                                 // [B, S, E]
  auto f = torch::nn::functional::one_hot(expert_choice, E).to(torch::kFloat32).mean(-2);  // [B, E]
  auto p = probs.mean(-2);                                                                  // [B, E]
  return (f * p).mean() * static_cast<double>(E * E);  // = E * mean_b sum_i f_i P_i, HF's form
}

RouterLosses router_losses(const std::vector<RouterOutput>& layers, const torch::Device& device) {
  auto zero = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  if (layers.empty()) return {zero, zero};
  torch::Tensor z = zero, aux = zero;
  for (const auto& l : layers) {
    z = z + router_z_loss(l.logits);
    aux = aux + load_balancing_loss(l.logits, l.expert_choice);
  }
  const double n = static_cast<double>(layers.size());
  return {z / n, aux / n};
}

}  // namespace distill
