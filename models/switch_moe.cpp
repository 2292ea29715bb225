#include "models/switch_moe.h"

#include "models/grouped_ffn.h"
#include "models/mixed_precision.h"

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

Routing route_tokens(const torch::Tensor& probs, int64_t top_k, CapacityMode mode, int64_t capacity) {
  const int64_t B = probs.size(0), S = probs.size(1), E = probs.size(2), k = top_k;
  torch::Tensor values, experts;  // [B, S, k]
  if (k == 1) {
    // argmax, not topk: ties go to the lowest index, exactly as Hugging Face's router.
    experts = probs.argmax(-1, /*keepdim=*/true);
    values = probs.gather(-1, experts);
  } else {
    std::tie(values, experts) = probs.topk(k, -1);
  }
  auto gates = k == 1 ? values : values / values.sum(-1, /*keepdim=*/true);

  // Queue position of each assignment at its expert: a cumulative count over one-hot rows laid
  // out rank-major, so every first choice is served before any second choice.
  auto onehot = torch::nn::functional::one_hot(experts, E).to(torch::kInt32);  // [B, S, k, E]
  torch::Tensor kept;
  if (mode == CapacityMode::kFixed) {
    auto q = onehot.permute({0, 2, 1, 3}).reshape({B, k * S, E});   // [B, k*S, E]
    auto priority = (q.cumsum(1) * q).sum(-1);                     // [B, k*S]
    kept = (priority <= capacity).view({B, k, S}).permute({0, 2, 1}); // [B, S, k]
  } else {
    auto q = onehot.permute({2, 0, 1, 3}).reshape({k * B * S, E}); // [k*B*S, E]
    auto priority = (q.cumsum(0) * q).sum(-1);                     // [k*B*S]
    kept = (priority <= capacity).view({k, B, S}).permute({1, 2, 0}); // [B, S, k]
  }
  return Routing{experts.reshape({B * S, k}), gates.reshape({B * S, k}),
                 kept.reshape({B * S, k}).contiguous(), capacity};
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
  return torch::nn::functional::linear(h, classifier->weight.to(dtype), bias);
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
  auto logits = router->forward(x);                           // [B, S, E] float32
  auto probs = torch::softmax(logits, -1);                    // [B, S, E]
  const int64_t capacity = expert_capacity_for(options_, B, S, is_training());
  Routing r = route_tokens(probs, k, options_.capacity_mode, capacity);

  // Grouped dispatch: kept assignments sorted by expert, one matmul chain per expert on a
  // contiguous slice, results scattered back with index_add_. Dropped tokens receive nothing.
  auto flat = x.reshape({B * S, D});                                            // [N, D]
  auto token = torch::arange(B * S, r.experts.options()).unsqueeze(1).expand({B * S, k}).reshape(-1);
  auto keep = r.kept.reshape(-1).nonzero().squeeze(1);
  auto expert_of = r.experts.reshape(-1).index_select(0, keep);                 // [M]
  auto order = std::get<1>(torch::sort(expert_of, c10::optional<bool>(true), 0, false));  // stable, by expert
  auto src = token.index_select(0, keep).index_select(0, order);                // [M]
  auto gate = r.gates.reshape(-1).index_select(0, keep).index_select(0, order); // [M]
  auto counts = torch::bincount(expert_of, {}, E).to(torch::kCPU);
  auto counts_a = counts.accessor<int64_t, 1>();

  torch::Tensor out;  // [N, D]
  const auto& ffn = experts->options();
  if (!ffn.gated && ffn.act == "relu") {
    std::vector<torch::Tensor> wi, wo;
    for (const auto& ex : experts->experts) {
      wi.push_back(ex->wi->weight);
      wo.push_back(ex->wo->weight);
    }
    std::vector<int64_t> count_list(counts_a.data(), counts_a.data() + E);
    out = grouped_relu_ffn(flat, gate, {src, count_list}, wi, wo, is_training() ? ffn.dropout : 0.0);
  } else {
    auto xs = flat.index_select(0, src);  // [M, D]
    auto parts = xs.split_with_sizes(c10::IntArrayRef(counts_a.data(), static_cast<size_t>(E)));
    std::vector<torch::Tensor> outs;
    for (int64_t e = 0; e < E; ++e) {
      if (counts_a[e] > 0) outs.push_back(experts->experts[e]->forward(parts[e]));
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
