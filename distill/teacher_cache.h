// The frozen teacher's top-k soft targets per training example, kept in memory so that epochs
// after the first skip the teacher. Needs examples that are identical in every epoch
// (data.static_examples): the cache is keyed by example id.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "data/batching.h"
#include "distill/losses.h"

namespace distill {

class TeacherCache {
 public:
  TeacherCache(int64_t top_k, double temperature);

  // The soft targets of `batch`. When an example of the batch is not cached yet, calls
  // `teacher_logits` once ([B, T, V] for the batch) and caches every missing example.
  SoftTargets targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits);

  int64_t hits() const { return hits_; }      // batches served without the teacher
  int64_t misses() const { return misses_; }  // batches that ran the teacher
  int64_t examples() const { return examples_; }
  double megabytes() const;

 private:
  struct Entry {
    std::vector<int32_t> ids;    // [L, k] token ids of the L real target positions
    std::vector<float> probs;    // [L, k]
    std::vector<float> rest;     // [L]
    bool filled() const { return !rest.empty(); }
  };
  void fill(const Batch& batch, const SoftTargets& fresh);
  SoftTargets assemble(const Batch& batch) const;

  int64_t k_;
  double temperature_;
  std::vector<Entry> entries_;  // by example id
  int64_t hits_ = 0, misses_ = 0, examples_ = 0, positions_ = 0;
};

}  // namespace distill
