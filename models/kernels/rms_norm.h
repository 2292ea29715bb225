// T5's layer norm (RMS, no mean, no bias: y = w * x / sqrt(mean(x^2) + eps)) as one autograd node
// with a one-pass forward and backward per row. As ATen ops it was six passes forward and about ten
// backward over [N, D], 22 times per d256 step.
#pragma once

#include <ATen/Tensor.h>

namespace distill {

// x [..., D], weight [D] -> [..., D]. Float32 on the CPU takes the fused kernel; anything else the
// ATen ops (variance in float32, the result in the weight's dtype, as Hugging Face's T5LayerNorm).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The same with ATen ops: the reference for tests.
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace distill
