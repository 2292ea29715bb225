// Switch Transformer sparse FFN: a float32 router sends each token to its top-k experts, each
// expert takes at most `capacity` tokens, and tokens over capacity get zero expert output.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "models/model_config.h"
#include "models/t5_layers.h"

namespace distill {

struct RoutingOptions {
  int64_t num_experts = 8;                           // E
  int64_t top_k = 1;                                 // experts per token
  CapacityMode capacity_mode = CapacityMode::kFixed; // per sequence (HF) or per batch (paper)
  int64_t expert_capacity = 64;                      // kFixed: tokens per expert and sequence
  double capacity_factor_train = 1.25;               // kFactor, training
  double capacity_factor_eval = 2.0;                 // kFactor, evaluation
  double jitter_noise = 0.0;                         // multiplicative router-input noise, training only
  bool router_bias = false;                          // classifier bias
};

// What one sparse layer decided, for losses, statistics and parity checks.
struct RouterOutput {
  torch::Tensor logits;         // [B, S, E] float32 (float64 in a float64 model), before softmax
  torch::Tensor top_experts;    // [B, S, k] int64, chosen experts, best first (before capacity)
  torch::Tensor top_kept;       // [B, S, k] bool, the assignment was processed by its expert
  torch::Tensor expert_choice;  // [B, S] int64, top-1 expert before capacity
  torch::Tensor kept;           // [B, S] bool, the top-1 assignment was processed
  int64_t capacity = 0;         // tokens per expert: per sequence (kFixed) or per batch (kFactor)
};

// Pure routing decision on router probabilities, exposed for tests.
struct Routing {
  torch::Tensor experts;  // [N, k] int64 chosen experts, best first
  torch::Tensor gates;    // [N, k] float32: the probability for k == 1, renormalised over k otherwise
  torch::Tensor kept;     // [N, k] bool
  int64_t capacity = 0;
  // The kept assignments grouped by expert (stable within an expert), ready for dispatch.
  torch::Tensor assignment;     // [M] int64 flat index n * k + rank into experts / gates
  std::vector<int64_t> counts;  // [E] kept assignments per expert
};

// probs [B, S, E]. Assignments queue for their expert in order of rank, then batch row, then
// position; in kFixed mode each sequence has its own queues of length `capacity`.
Routing route_tokens(const torch::Tensor& probs, int64_t top_k, CapacityMode mode, int64_t capacity);

// Capacity for a [B, S] batch under `options`, in training or evaluation.
int64_t expert_capacity_for(const RoutingOptions& options, int64_t batch, int64_t seq_len, bool training);

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
  SparseMlpOutput forward(const torch::Tensor& x);  // x [B, S, D] (already layer-normed)

  SwitchRouter router{nullptr};
  SwitchExperts experts{nullptr};

 private:
  RoutingOptions options_;
};
TORCH_MODULE(SwitchSparseMlp);

// Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2.
torch::Tensor router_z_loss(const torch::Tensor& logits);
// Load balancing: E * sum_i f_i * P_i per sequence, averaged over the batch, where f_i is the
// fraction of tokens whose top-1 choice is expert i and P_i the mean router probability.
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_choice);

struct RouterLosses {
  torch::Tensor z_loss;    // mean over the sparse layers; zero when there are none
  torch::Tensor aux_loss;  // mean over the sparse layers; zero when there are none
};
RouterLosses router_losses(const std::vector<RouterOutput>& layers, const torch::Device& device);

}  // namespace distill
