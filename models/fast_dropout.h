// Dropout with a counter-based mask generator. LibTorch's CPU bernoulli_ draws element by element
// and made dropout ~60% of a small student's forward pass; this draws one 64-bit seed from the
// torch generator per call (so checkpoints that save the generator resume exactly) and hashes
// (seed, element index) in parallel, independent of the thread count (~4x faster than bernoulli_).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace distill {

// Keep mask scaled by 1 / (1 - p), in x's dtype and shape: x * mask is inverted dropout.
torch::Tensor dropout_mask(const torch::Tensor& x, double p);

class FastDropoutImpl : public torch::nn::Module {
 public:
  explicit FastDropoutImpl(double p = 0.5);
  torch::Tensor forward(const torch::Tensor& x);
  double p() const { return p_; }

 private:
  double p_;
};
TORCH_MODULE(FastDropout);

}  // namespace distill
