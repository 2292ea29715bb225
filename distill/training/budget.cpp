#include "distill/training/budget.h"

#include <algorithm>

namespace distill {

Budget& Budget::operator+=(const Budget& o) {
  steps += o.steps;
  examples += o.examples;
  tokens += o.tokens;
  train_flops += o.train_flops;
  seconds += o.seconds;
  world_size = std::max(world_size, o.world_size);
  if (tokens_per_s_by_rank.empty()) tokens_per_s_by_rank = o.tokens_per_s_by_rank;
  return *this;
}

nlohmann::json Budget::to_json() const {
  nlohmann::json j = {{"steps", steps}, {"examples", examples}, {"tokens", tokens}, {"train_flops", train_flops}, {"seconds", seconds}, {"world_size", world_size}};
  if (!tokens_per_s_by_rank.empty()) j["tokens_per_s_by_rank"] = tokens_per_s_by_rank;
  return j;
}

Budget Budget::from_json(const nlohmann::json& j) {
  Budget b;
  if (!j.is_object()) return b;
  b.steps = j.value("steps", int64_t{0});
  b.examples = j.value("examples", int64_t{0});
  b.tokens = j.value("tokens", int64_t{0});
  b.train_flops = j.value("train_flops", 0.0);
  b.seconds = j.value("seconds", 0.0);
  b.world_size = j.value("world_size", int64_t{1});
  b.tokens_per_s_by_rank = j.value("tokens_per_s_by_rank", std::vector<double>{});
  return b;
}

}  // namespace distill
