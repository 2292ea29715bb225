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

namespace distill {

// Real target positions of each row of labels [B, T] (-100 only on padding, at the end).
std::vector<int64_t> target_lengths(const at::Tensor& labels);

// One example's stored targets: its L real positions' ids [L, k], probabilities [L, k], rest [L].
struct ExampleTargets {
  std::vector<int32_t> ids;
  std::vector<float> probs;
  std::vector<float> rest;
};

// Each row of a batch's targets, cut to its real positions.
std::vector<ExampleTargets> split_rows(const SoftTargets& targets, const at::Tensor& labels);

// Zero targets [B, T, k] for a store to fill row by row (padding stays zero).
SoftTargets zero_targets(int64_t B, int64_t T, int64_t k);

// Where a student's soft targets come from when the teacher does not run at every step.
class SoftTargetSource {
 public:
  virtual ~SoftTargetSource() = default;
  // The soft targets of `batch`; `teacher_logits` ([B, T, V] for the batch) is called when the
  // source does not hold every example of it.
  virtual SoftTargets targets(const Batch& batch, const std::function<at::Tensor()>& teacher_logits) = 0;
  virtual int64_t hits() const = 0;      // batches served without the teacher
  virtual int64_t misses() const = 0;    // batches that ran the teacher
  virtual int64_t examples() const = 0;  // examples held
  virtual double megabytes() const = 0;
};

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
