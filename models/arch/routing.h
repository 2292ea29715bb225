// Which expert each token goes to: routing options, expert capacity and the top-k decision with
// its capacity queues.
#pragma once

#include <torch/types.h>

#include <vector>

#include "models/arch/model_config.h"

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
  bool ignore_padding = false;                       // route real tokens only (a mask is given)
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
// position; in kFixed mode each sequence has its own queues of length `capacity`. `active` [B, S]
// bool, when given, names the tokens to route: the others (padding) are chosen for but never kept
// and take no capacity.
Routing route_tokens(const torch::Tensor& probs, int64_t top_k, CapacityMode mode, int64_t capacity,
                     const torch::Tensor& active = {});

// The loop behind route_tokens, on raw [B * S, E] probabilities (float or double): writes each
// token's k choices to experts [N * k] and whether each was kept to kept [N * k], and returns the
// kept assignments (n * k + rank) grouped by expert. `active` [N] may be null (every token).
template <typename T>
std::vector<std::vector<int64_t>> route_pass(const T* probs, int64_t B, int64_t S, int64_t E, int64_t k, CapacityMode mode,
                                            int64_t capacity, int64_t* experts, bool* kept, const bool* active = nullptr);

// One token's row of d logits += d gate * p[e] * (1{j == e} - p[j]): the gradient of a top-1 gate,
// p[e] of p = softmax(logits), through the softmax.
template <typename T>
inline void add_top1_gate_gradient(T* dlogits, const T* p, T dgate, int64_t e, int64_t E) {
  const T c = dgate * p[e];
  for (int64_t j = 0; j < E; ++j) dlogits[j] -= c * p[j];
  dlogits[e] += c;
}

// Capacity under `options` in training or evaluation: kFixed's expert_capacity, or kFactor's
// ceil(tokens * k / E * factor) for a batch that routes `tokens` tokens. In evaluation inside a
// DroplessRouting scope: `tokens`, which no expert can exceed, so every token is kept.
int64_t expert_capacity_for(const RoutingOptions& options, int64_t tokens, bool training);

// Inside it (on this thread), sparse layers in evaluation keep every token. Greedy decoding opens
// one: a decoding step routes one token per sequence, every row at the same position, so a
// per-batch capacity would drop tokens according to which other rows share the batch (measured on
// G2P: a top-2 teacher decoded 24.7% of words exactly with capacity factor 2.0, 34.3% without), and
// a sequence's output would depend on its neighbours.
class DroplessRouting {
 public:
  DroplessRouting();
  ~DroplessRouting();
  DroplessRouting(const DroplessRouting&) = delete;
  DroplessRouting& operator=(const DroplessRouting&) = delete;

 private:
  bool previous_;
};

}  // namespace distill
