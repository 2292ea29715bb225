// Small loops over contiguous float rows for the fused kernels (attention core, grouped experts).
// Each is built for AVX-512, AVX2 and baseline x86-64 and picked when the program loads, so the
// default (SSE2) build still runs them at full vector width. Reductions keep 16 partial results:
// one running sum is a dependency chain the compiler may not reorder, ~10x slower.
#pragma once

#include <cstdint>

namespace distill::rows {

// row += bias (skipped when bias is null); returns the row's maximum.
float add_bias_max(float* row, const float* bias, int64_t n);
// row += c
void add_scalar(float* row, float c, int64_t n);
// row *= c
void scale(float* row, float c, int64_t n);
float sum(const float* row, int64_t n);
// row = exp(row - shift), returning the new row's sum: a softmax's middle pass. exp is Cephes'
// polynomial (within 2 ulp of expf up to 88; exactly 0 below -87.3, NaN stays NaN), vectorised.
float exp_sum(float* row, float shift, int64_t n);
float dot(const float* a, const float* b, int64_t n);
// out = a * b (out may alias a or b)
void multiply(float* out, const float* a, const float* b, int64_t n);
// out += c * x
void axpy(float* out, const float* x, float c, int64_t n);
// out = c * a
void scaled_copy(float* out, const float* a, float c, int64_t n);
// out = base + s * (c W) for c [k] and W [k, n] row-major: a product with a short inner dimension
// (k = experts, for the router's input gradient). base and s may be null (zero and one).
void combine(float* out, const float* base, const float* s, const float* c, const float* w, int64_t k, int64_t n);
// out = a * c; returns dot(a, b)
float scaled_copy_dot(float* out, const float* a, float c, const float* b, int64_t n);
// out = p * (g - c): the softmax backward of a row whose dot(g, p) is c
void softmax_backward(float* out, const float* p, const float* g, float c, int64_t n);
// mask[j] = s if dropout keeps element first + j (see fast_dropout.h), else 0
void dropout_scales(float* mask, uint64_t seed, int64_t first, uint32_t threshold, float s, int64_t n);
// out = relu(x), then dropout of elements first..first+n-1 (kept ones scaled by s); without
// dropout relu only. out may alias x.
void relu_dropout(float* out, const float* x, bool dropout, uint64_t seed, int64_t first, uint32_t threshold, float s,
                  int64_t n);
// out = h > 0 ? g * s : 0, the backward of relu_dropout given its output h (out may alias g)
void relu_dropout_backward(float* out, const float* g, const float* h, float s, int64_t n);
// out = dropout of x (elements first..first+n-1, kept ones scaled by s), plus base unless null:
// the forward and backward of dropout and of a residual connection around it
void dropout_add(float* out, const float* base, const float* x, uint64_t seed, int64_t first, uint32_t threshold, float s,
                 int64_t n);
// One AdamW update of n elements (PyTorch's arithmetic): m = b1 m + a1 g, v = b2 v + a2 g^2,
// p = p decay + step_size m / (sqrt(v) inv_bc2 + eps)
struct AdamWCoefficients {
  float decay, b1, a1, b2, a2, inv_bc2, eps, step_size;
};
void adamw(float* p, float* m, float* v, const float* g, const AdamWCoefficients& c, int64_t n);
// out = c * a * b
void scaled_product(float* out, const float* a, const float* b, float c, int64_t n);
// out += c * a * b
void axpy_product(float* out, const float* a, const float* b, float c, int64_t n);
// out = r * u + c * x (the RMS norm's input gradient)
void rms_norm_input_grad(float* out, const float* u, const float* x, float r, float c, int64_t n);
// out[j] = bfloat16 bits of x[j], rounded to nearest even (NaN stays NaN)
void to_bf16(uint16_t* out, const float* x, int64_t n);

}  // namespace distill::rows
