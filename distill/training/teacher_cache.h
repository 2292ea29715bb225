// The frozen teacher's top-k soft targets per training example, kept in memory so that epochs
// after the first skip the teacher. Needs examples that are identical in every epoch
// (data.static_examples): the cache is keyed by example id.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "data/batching.h"
#include "distill/training/losses.h"
#include "distill/training/soft_target_source.h"

namespace distill {

class TeacherCache : public SoftTargetSource {
 public:
  TeacherCache(int64_t top_k, double temperature);

  // The soft targets of `batch`. When an example of the batch is not cached yet, calls
  // `teacher_logits` once and caches every missing example.
  SoftTargets targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits) override;

  int64_t hits() const override { return hits_; }
  int64_t misses() const override { return misses_; }
  int64_t examples() const override { return examples_; }
  double megabytes() const override;

 private:
  struct Entry : ExampleTargets {
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
