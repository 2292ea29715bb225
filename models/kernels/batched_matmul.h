// Batched matrix product for attention. Debian's LibTorch (no MKL) runs a float32 bmm as a loop
// of dispatched mm calls over the batch — 7000 select/mm dispatches per training step of a small
// model. This calls OpenBLAS's sgemm directly per matrix inside one parallel loop, reading
// strided views (e.g. heads split from a fused projection) without copies.
#pragma once

#include <torch/types.h>

namespace distill {

// a [..., M, K] @ b [..., K, N] -> [..., M, N] with equal leading dimensions; differentiable.
// float32 CPU tensors take the direct path; anything else falls back to torch::matmul.
torch::Tensor batched_matmul(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace distill
