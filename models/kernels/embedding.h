// Embedding lookup (rows of a table by id) as one autograd node. ATen's dense embedding backward
// sorts the ids and counts them before adding rows (about 0.3 ms per call at small8, four calls
// per step: the shared vocabulary twice and the two relative position biases); here backward adds
// the gradient rows in id order of appearance into a zeroed table, columns split across threads,
// so the result does not depend on the thread count.
#pragma once

#include <ATen/Tensor.h>

namespace distill {

// weight [V, D], ids (int64, any shape [...], each in [0, V)) -> [..., D]. Float32 on the CPU takes
// the fused backward; anything else ATen's embedding. Out-of-range ids throw (ATen's index check).
at::Tensor embedding_lookup(const at::Tensor& weight, const at::Tensor& ids);

}  // namespace distill
