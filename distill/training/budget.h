// What training a model cost: the currency in which the report checks that the dense baseline
// had as much training as the student's whole path (the teacher's training plus distillation).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill {

struct Budget {
  int64_t steps = 0;        // optimizer steps
  int64_t examples = 0;     // training examples (batch rows) seen
  int64_t tokens = 0;       // real encoder + decoder tokens seen
  double train_flops = 0;   // the model's forward and backward (3x its forward FLOPs on the padded
                            // batches), plus the frozen teacher's forwards when distilling
  double seconds = 0;       // wall time of the training loop
  int64_t world_size = 1;   // data-parallel processes it trained on (the most, over summed stages)
  std::vector<double> tokens_per_s_by_rank;  // each rank's own throughput in its last run (not summed)

  Budget& operator+=(const Budget& other);
  nlohmann::json to_json() const;
  // Reads what to_json wrote; missing keys (a stage made by an older distill) stay 0.
  static Budget from_json(const nlohmann::json& j);
};

inline Budget operator+(Budget a, const Budget& b) { return a += b; }

}  // namespace distill
