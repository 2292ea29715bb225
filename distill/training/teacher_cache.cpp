#include "distill/training/teacher_cache.h"

#include <torch/torch.h>

#include <algorithm>

#include "models/errors.h"

namespace distill {

TeacherCache::TeacherCache(int64_t top_k, double temperature) : k_(top_k), temperature_(temperature) {
  if (k_ < 1) throw ConfigError("teacher cache: top_k must be >= 1");
}

double TeacherCache::megabytes() const {
  return static_cast<double>(positions_) * static_cast<double>(k_ * 8 + 4) / (1024.0 * 1024.0);
}

SoftTargets TeacherCache::targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits) {
  const auto B = batch.labels.size(0);
  if (static_cast<int64_t>(batch.example_ids.size()) != B) {
    throw Error("teacher cache: the batch does not carry its example ids");
  }
  bool complete = true;
  for (auto id : batch.example_ids) complete = complete && id < entries_.size() && entries_[id].filled();
  if (complete) {
    ++hits_;
  } else {
    ++misses_;
    fill(batch, top_k_soft_targets(teacher_logits(), k_, temperature_));
  }
  return assemble(batch);
}

void TeacherCache::fill(const Batch& batch, const SoftTargets& fresh) {
  k_ = fresh.ids.size(-1);  // a k above the vocabulary was cut to V
  auto rows = split_rows(fresh, batch.labels);
  for (size_t row = 0; row < batch.example_ids.size(); ++row) {
    const auto id = batch.example_ids[row];
    if (id >= entries_.size()) entries_.resize(id + 1);
    Entry& e = entries_[id];
    if (e.filled()) continue;
    const auto L = static_cast<int64_t>(rows[row].rest.size());
    static_cast<ExampleTargets&>(e) = std::move(rows[row]);
    if (L == 0) e.rest.push_back(0.0f);  // an example without targets is still "filled"
    ++examples_;
    positions_ += L;
  }
}

SoftTargets TeacherCache::assemble(const Batch& batch) const {
  const int64_t B = batch.labels.size(0), T = batch.labels.size(1), k = k_;
  SoftTargets t = zero_targets(B, T, k);
  auto* ids = t.ids.data_ptr<int64_t>();
  auto* probs = t.probs.data_ptr<float>();
  auto* rest = t.rest.data_ptr<float>();
  const auto lengths = target_lengths(batch.labels);
  for (int64_t row = 0; row < B; ++row) {
    const Entry& e = entries_[batch.example_ids[static_cast<size_t>(row)]];
    const int64_t L = lengths[static_cast<size_t>(row)];
    if (static_cast<int64_t>(e.ids.size()) != L * k) {
      throw Error("teacher cache: example " + std::to_string(batch.example_ids[static_cast<size_t>(row)]) +
                  " changed length between epochs; the cache needs data.static_examples");
    }
    std::copy(e.ids.begin(), e.ids.end(), ids + row * T * k);
    std::copy(e.probs.begin(), e.probs.end(), probs + row * T * k);
    std::copy(e.rest.begin(), e.rest.begin() + L, rest + row * T);
  }
  return t;
}

}  // namespace distill
