// bfloat16 mixed precision on the CPU, at the level of the matrix products: inside a Bf16Products
// scope every product of the model's kernels (projections, the experts, large attention heads)
// reads bf16 operands and accumulates and writes float32, on the CPU's bf16 dot-product units.
// Everything else stays float32: master weights, gradients, optimizer state, norms, softmaxes, the
// router (as the Switch paper's "selective precision"), the LM head and the losses. The bf16 copy
// of a weight is made once per version of the weight (an optimizer step makes a new version), not
// per call.
#pragma once

#include <ATen/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <vector>

namespace distill {

// Turns bf16 products on for its lifetime on this thread (no-op when `enabled` is false).
class Bf16Products {
 public:
  explicit Bf16Products(bool enabled);
  ~Bf16Products();
  Bf16Products(const Bf16Products&) = delete;
  Bf16Products& operator=(const Bf16Products&) = delete;

 private:
  bool previous_;
};

// Inside it, products run in float32 even under Bf16Products (the router).
class Fp32Products {
 public:
  Fp32Products();
  ~Fp32Products();
  Fp32Products(const Fp32Products&) = delete;
  Fp32Products& operator=(const Fp32Products&) = delete;

 private:
  bool previous_;
};

// True inside a Bf16Products scope and outside any Fp32Products.
bool bf16_products_active();

// The bf16 copy of a float32 weight ([rows, cols], contiguous), cached until the weight changes:
// the cache keys on the tensor and its version counter, which in-place updates bump (the fused
// AdamW bumps it by hand). A frozen teacher's weights are thus cast once.
at::Tensor bf16_copy(const at::Tensor& weight);
// The bf16 copy of the weights concatenated along dim 0 (the q, k, v projections as one product).
at::Tensor bf16_copy(const std::vector<at::Tensor>& parts);
// Drops every cached copy (tests).
void clear_bf16_copies();
// Drops the copies of weights that were freed (a finished stage's model): they would otherwise
// stay until the cache has doubled. Live weights keep theirs.
void drop_freed_bf16_copies();
// Cached copies and their bytes (tests).
struct Bf16CacheStats {
  int64_t copies = 0, bytes = 0;
};
Bf16CacheStats bf16_cache_stats();

// dst[i] = bf16(src[i]), rounding to nearest even.
void to_bf16(c10::BFloat16* dst, const float* src, int64_t n);
// A contiguous bf16 copy of a float32 tensor (activations; not cached).
at::Tensor to_bf16(const at::Tensor& x);

}  // namespace distill
