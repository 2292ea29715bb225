// Switch Transformer sparse FFN: a float32 router sends each token to its top-k experts, each
// expert takes at most `capacity` tokens, and tokens over capacity get zero expert output.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "models/arch/model_config.h"
#include "models/arch/routing.h"
#include "models/arch/t5_layers.h"

namespace distill {

// What one sparse layer decided, for losses, statistics and parity checks.
struct RouterOutput {
  torch::Tensor logits;         // [B, S, E] float32 (float64 in a float64 model), before softmax
  torch::Tensor top_experts;    // [B, S, k] int64, chosen experts, best first (before capacity)
  torch::Tensor top_kept;       // [B, S, k] bool, the assignment was processed by its expert
  torch::Tensor expert_choice;  // [B, S] int64, top-1 expert before capacity
  torch::Tensor kept;           // [B, S] bool, the top-1 assignment was processed
  torch::Tensor active;         // [B, S] bool, the tokens routed (padding is not); undefined: all
  int64_t capacity = 0;         // tokens per expert: per sequence (kFixed) or per batch (kFactor)
};

class SwitchRouterImpl : public torch::nn::Module {
 public:
  SwitchRouterImpl(int64_t d_model, const RoutingOptions& options);
  // x [B, S, D] any dtype -> logits [B, S, E] float32 (jitter applied in training).
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear classifier{nullptr};

 private:
  RoutingOptions options_;
};
TORCH_MODULE(SwitchRouter);

// The experts of one layer, named expert_0 ... expert_{E-1} as in Hugging Face.
class SwitchExpertsImpl : public torch::nn::Module {
 public:
  SwitchExpertsImpl(int64_t num_experts, const FfnOptions& expert);
  const FfnOptions& options() const { return options_; }
  std::vector<DenseActDense> experts;

 private:
  FfnOptions options_;
};
TORCH_MODULE(SwitchExperts);

struct SparseMlpOutput {
  torch::Tensor hidden;  // [B, S, D] gated expert outputs; exactly zero for dropped tokens
  RouterOutput router;
};

class SwitchSparseMlpImpl : public torch::nn::Module {
 public:
  SwitchSparseMlpImpl(int64_t d_model, const RoutingOptions& routing, const FfnOptions& expert);
  // x [B, S, D] (already layer-normed); mask [B, S] (nonzero = real token) is honoured when the
  // options say ignore_padding: padding then gets no expert and takes no capacity.
  SparseMlpOutput forward(const torch::Tensor& x, const torch::Tensor& mask = {});
  // Top-1 layers with ReLU experts run as one fused node in float32 on the CPU (switch_top1.h);
  // false takes the general path, as PyTorch's fast-path switches do (tests compare the two).
  void set_fused_top1(bool on) { fused_top1_ = on; }

  SwitchRouter router{nullptr};
  SwitchExperts experts{nullptr};

 private:
  RoutingOptions options_;
  bool fused_top1_ = true;
};
TORCH_MODULE(SwitchSparseMlp);

// Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2; over the `active` [B, S]
// tokens only when given.
torch::Tensor router_z_loss(const torch::Tensor& logits, const torch::Tensor& active = {});
// Load balancing: E * sum_i f_i * P_i per sequence, averaged over the batch, where f_i is the
// fraction of tokens whose top-1 choice is expert i and P_i the mean router probability. With
// `active` [B, S], both are over a sequence's active tokens, and sequences without any are left out.
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_choice,
                                  const torch::Tensor& active = {});

struct RouterLosses {
  torch::Tensor z_loss;    // kPaper: mean over the sparse layers; kHf: over their tokens; zero without any
  torch::Tensor aux_loss;  // kPaper: mean over the sparse layers; kHf: over their tokens; zero without any
  std::vector<torch::Tensor> layer_aux;  // each layer's load-balancing loss, detached (1.0 = balanced)
};
RouterLosses router_losses(const std::vector<RouterOutput>& layers, const torch::Device& device,
                           RouterLoss rule = RouterLoss::kPaper);

}  // namespace distill
