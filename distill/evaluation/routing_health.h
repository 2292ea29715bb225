// How each sparse layer spread its real tokens over batches: dropped-token rates, expert loads,
// dead experts, router confidence and the balance loss. Evaluation and training both report it.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/process/distributed.h"
#include "models/arch/routing.h"
#include "models/arch/switch_moe.h"

namespace distill {

// An expert is dead when it gets less than this share of an even split (1/E) of the tokens.
constexpr double kDeadExpertShare = 0.05;
// A layer that drops more than this share of its real tokens at evaluation capacity is flagged.
constexpr double kDroppedWarning = 0.05;

struct LayerRouting {
  std::string layer;                          // Hugging Face prefix of the sparse FFN, e.g. encoder.block.1.layer.1
  double dropped_rate = 0;                    // real tokens whose top-1 expert was over capacity, as run
  std::optional<double> dropped_rate_train;   // evaluation: the same router choices under the training capacity
  std::vector<double> load;                   // share of the real tokens whose top-1 choice is each expert
  double max_load = 0;                        // largest share (1/E when balanced)
  double min_load = 0;                        // smallest share
  int64_t dead_experts = 0;                   // experts under kDeadExpertShare of an even share
  double mean_gate = 0;                       // mean router probability of the chosen expert (1/E: uniform router)
  double aux_loss = 0;                        // load-balancing loss over the real tokens (1 = balanced)
  int64_t tokens = 0;                         // real tokens seen
  nlohmann::json to_json() const;
};

class RoutingAccumulator {
 public:
  // With `train_routing`, also counts what the training capacity would have dropped.
  explicit RoutingAccumulator(std::optional<RoutingOptions> train_routing = std::nullopt);
  // One batch of one layer: its routing and its real tokens [B, S] bool.
  void add(const std::string& prefix, const RouterOutput& routing, const at::Tensor& real);
  std::vector<LayerRouting> layers() const;
  // Sums every rank's accumulation into each rank's, for the layers named by `prefixes` (each
  // rank passes the same, e.g. every sparse layer of the model) with `num_experts` experts.
  void reduce(Collective& c, const std::vector<std::string>& prefixes, int64_t num_experts);
  bool empty() const { return layers_.empty(); }
  void clear() { layers_.clear(); }

 private:
  struct Sums {
    double tokens = 0, dropped = 0, dropped_train = 0, gate = 0, aux = 0;
    int64_t batches = 0;
    at::Tensor load;  // [E] float64 counts
  };
  std::optional<RoutingOptions> train_;
  std::map<std::string, Sums> layers_;
};

// One line per layer that drops more than kDroppedWarning of its tokens or has dead experts.
std::vector<std::string> routing_warnings(const std::vector<LayerRouting>& layers, const std::string& model);

}  // namespace distill
