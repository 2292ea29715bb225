// The experts of a Switch layer as one autograd node: each expert's tokens are gathered into a
// contiguous slice, run through its ReLU FFN (D -> F -> D, dropout on the hidden units) and
// scattered back scaled by their gate. Backward is written out per expert, so there are no
// per-expert autograd nodes, no zero-filled slice gradients and no gather/scatter graph.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

namespace distill {

struct ExpertGroups {
  at::Tensor token;              // [M] int64: the token row of each assignment, grouped by expert
  std::vector<int64_t> counts;   // [E] assignments per expert, in the order of `token`
};

// x [N, D]; gate [M] (one per assignment, differentiable); wi[e] [F, D], wo[e] [D, F].
// Returns [N, D]: sum over a token's assignments of gate * wo relu(wi x); zero rows for tokens
// without any. `dropout` is applied to the hidden units when > 0.
at::Tensor grouped_relu_ffn(const at::Tensor& x, const at::Tensor& gate, const ExpertGroups& groups,
                            const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout);

}  // namespace distill
