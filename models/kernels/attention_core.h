// The core of T5 attention, softmax(q k^T + bias) v with dropout on the probabilities, as one
// autograd node. In float32 on the CPU each (batch, head) is one task: both products go straight
// to sgemm on the strided heads, and bias, softmax and dropout run on the score rows while they
// are in cache. Backward recomputes the dropout mask from its seed instead of storing it and
// writes the heads' gradients in place, so the [B, H, T, S] score tensors are touched once per
// pass instead of once per op.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

namespace distill {

// q [B, H, T, Dk], k and v [B, H, S, Dk] (any strides), bias broadcastable to [B, H, T, S]
// (may require grad). T5 does not scale the scores. Dropout p applies to the probabilities.
// Returns the context [B, T, H * Dk], heads side by side. Under Bf16Products, when a head's
// product is large enough to pay (T * S * Dk >= 2^22, e.g. 512 x 512 x 64), its products forward
// and backward read bf16-rounded operands with float32 accumulation, as the projections do; scores,
// bias, softmax, dropout and the saved probabilities stay float32. Smaller heads stay float32.
// Other dtypes and devices take the equivalent ATen ops.
at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                          double dropout);

// The same on the projections as they come out of their products, so that backward hands the
// gradients back in that layout (no split or concatenation around the node). Self-attention:
// qkv [B, T, 3 * H * Dk], q, k and v side by side as project(x, {q, k, v}) returns them.
// Cross-attention: q [B, T, H * Dk] and kv [B, S, 2 * H * Dk]. Throws Error on other shapes.
at::Tensor self_attention_core(const at::Tensor& qkv, int64_t heads, const at::Tensor& bias, double dropout);
at::Tensor cross_attention_core(const at::Tensor& q, const at::Tensor& kv, int64_t heads, const at::Tensor& bias,
                                double dropout);

// The same with plain ATen ops: the reference for tests and benchmarks.
at::Tensor attention_core_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                                    double dropout);

}  // namespace distill
