// Matching the hidden units of two FFNs of one width, for merging experts (Git Re-Basin, Ainsworth
// et al. 2023; MC-SMoE, Li et al. 2024): the same function can sit in any order of units, so
// experts are put in one order before they are averaged.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

namespace distill {

// Minimum-cost perfect assignment of an n x n cost matrix (Hungarian algorithm, O(n^3)):
// row i is assigned column result[i].
std::vector<int64_t> min_cost_assignment(const at::Tensor& cost);

// features [F, K] describe each unit of a reference FFN and of another (its input weights and its
// output column, concatenated). Returns perm with other unit perm[i] matched to reference unit i,
// maximising the summed cosine similarity of matched units.
std::vector<int64_t> match_units(const at::Tensor& reference_features, const at::Tensor& features);

}  // namespace distill
