// y = x W^T without bias, the product behind every projection of the models (attention, FFNs,
// LM head). Float32 on the CPU goes through blas::sgemm, forward and backward; under Bf16Products
// through blas::gemm_bf16 (bf16 operands, float32 accumulation and result, the weight's cached bf16
// copy); other dtypes and devices through ATen's linear.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace distill {

// x [..., in], weight [out, in] -> [..., out]
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight);
// The same with the weight given as parts concatenated along dim 0 (q, k and v as one product);
// each part gets its own gradient.
torch::Tensor project(const torch::Tensor& x, const std::vector<torch::Tensor>& parts);

}  // namespace distill
