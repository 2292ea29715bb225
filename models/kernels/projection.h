// y = x W^T without bias, the product behind every projection of the models (attention, FFNs,
// LM head). Float32 on the CPU goes through blas::sgemm, forward and backward; anything else, and
// anything under bf16 autocast, through ATen's linear.
#pragma once

#include <torch/torch.h>

namespace distill {

// x [..., in], weight [out, in] -> [..., out]
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight);

}  // namespace distill
