// y = x W^T without bias, the product behind every projection of the models (attention, FFNs,
// LM head). Float32 on the CPU goes through blas::sgemm, forward and backward; under Bf16Products
// through blas::gemm_bf16 (bf16 operands, float32 accumulation and result, the weight's cached bf16
// copy); other dtypes and devices through ATen's linear. Exact parts: when the product is
// differentiated under bf16 products, the first `exact_parts` parts' outputs are still multiplied
// from float32 operands (attention's q and k: unscaled T5 scores are large, and bf16-rounded q and
// k move them enough to turn a sharp softmax's gradient around); their backward products are bf16
// like the rest. A forward pass alone (a frozen teacher, evaluation) rounds them too: its outputs
// are not moved measurably (README, "bfloat16 products").
#pragma once

#include <torch/torch.h>

#include <vector>

namespace distill {

// x [..., in], weight [out, in] -> [..., out]
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, size_t exact_parts = 0);
// The same with the weight given as parts concatenated along dim 0 (q, k and v as one product);
// each part gets its own gradient.
torch::Tensor project(const torch::Tensor& x, const std::vector<torch::Tensor>& parts, size_t exact_parts = 0);

}  // namespace distill
