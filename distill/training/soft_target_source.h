// Where a student's soft targets come from when the teacher does not run at every step (a cache in
// memory, a file), and the row helpers those stores share. Needs no model: a store's reader can be
// built and fuzzed on its own.
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

// The interface of those stores.
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

}  // namespace distill
