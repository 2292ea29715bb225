// Dropout with a counter-based mask generator. LibTorch's CPU bernoulli_ draws element by element
// and made dropout ~60% of a small student's forward pass; this draws one 64-bit seed from the
// torch generator per call (so checkpoints that save the generator resume exactly) and hashes
// (seed, element index) in parallel, independent of the thread count (~4x faster than bernoulli_).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <cstring>

namespace distill {

// Keep mask scaled by 1 / (1 - p), in x's dtype and shape: x * mask is inverted dropout.
torch::Tensor dropout_mask(const torch::Tensor& x, double p);

// The generator behind dropout_mask, for kernels that apply dropout inside their own loops:
// element i of a tensor is kept iff dropout_keep(seed, i, dropout_threshold(p)), where seed is one
// dropout_seed() per tensor. Same seed, same mask as dropout_mask.
uint64_t dropout_seed();
inline uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 16777216.0 + 0.5); }  // 24-bit uniforms
// A seed kept in an autograd node's saved_data (an IValue holds int64_t): the same 64 bits.
inline int64_t seed_to_int(uint64_t seed) {
  int64_t out;
  std::memcpy(&out, &seed, sizeof out);
  return out;
}
inline uint64_t seed_from_int(int64_t v) {
  uint64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
// What a kept element is multiplied by (1 without dropout).
inline float dropout_scale(double p) { return p > 0 ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f; }
// murmur3's 32-bit finaliser of (seed, index): a simple loop the compiler vectorises.
inline bool dropout_keep(uint64_t seed, int64_t i, uint32_t threshold) {
  uint32_t h = (static_cast<uint32_t>(i) * 0x9E3779B1u + static_cast<uint32_t>(seed)) ^ static_cast<uint32_t>(seed >> 32);
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return (h >> 8) >= threshold;
}

// base + dropout(x, p) in one pass over memory, with dropout_mask's mask (drawn from one
// dropout_seed()) regenerated in backward instead of stored; base undefined: dropout alone.
// Float32 CPU tensors of one shape; anything else goes through x * dropout_mask(x, p).
torch::Tensor add_dropout(const torch::Tensor& base, const torch::Tensor& x, double p);
// dropout(relu(x), p) in one pass (p == 0: relu alone); backward reads only the output.
torch::Tensor relu_dropout(const torch::Tensor& x, double p);

class FastDropoutImpl : public torch::nn::Module {
 public:
  explicit FastDropoutImpl(double p = 0.5);
  torch::Tensor forward(const torch::Tensor& x);
  // base + forward(x): a residual connection around dropout, fused while training
  torch::Tensor add_to(const torch::Tensor& base, const torch::Tensor& x);
  double p() const { return p_; }

 private:
  double p_;
};
TORCH_MODULE(FastDropout);

}  // namespace distill
