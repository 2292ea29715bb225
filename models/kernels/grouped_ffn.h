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

// The CPU kernels behind grouped_relu_ffn, for a caller that fuses more into one autograd node (the
// top-1 Switch layer). Activations and weights float32 on the CPU, weights contiguous; the products
// in float32, or in bf16 with float32 accumulation (`bf16`: under Bf16Products).
namespace grouped_cpu {

// Whether x [N, D] and the weights suit these kernels (the gate is float32 like x).
bool applies(const at::Tensor& x, const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo);

struct Forward {
  at::Tensor out;  // [N, D]; undefined from grouped_f32::forward, whose caller places y
  at::Tensor xs;   // [M, D] gathered inputs, in the products' dtype (float32 or bf16)
  at::Tensor h;    // [M, F] float32 hidden units after ReLU and dropout
  at::Tensor y;    // [M, D] float32 expert outputs before the gate
  at::Tensor hb;   // [M, F] h in the products' dtype (h itself for float32)
};
// The experts' products on their gathered rows; the caller places y (times the gate) in its rows.
Forward forward(const at::Tensor& x, const ExpertGroups& groups, const std::vector<at::Tensor>& wi,
                const std::vector<at::Tensor>& wo, double dropout, bool bf16);

struct Backward {
  at::Tensor gxs;                    // [M, D] input gradient of each assignment, for the caller to place
  at::Tensor ggate;                  // [M]
  std::vector<at::Tensor> gwi, gwo;  // [F, D], [D, F]; undefined for experts without tokens
};
// grad [N, D] is the gradient of forward's out; the products run in the dtype forward's did.
Backward backward(const at::Tensor& grad, const Forward& saved, const at::Tensor& gate, const ExpertGroups& groups,
                  const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout);

}  // namespace grouped_cpu

}  // namespace distill
