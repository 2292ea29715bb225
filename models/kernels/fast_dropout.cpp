#include "models/kernels/fast_dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <mutex>

#include "models/errors.h"
#include "models/kernels/row_kernels.h"

namespace distill {
namespace {

template <typename T>
void fill_mask(T* out, int64_t n, uint64_t seed, double p) {
  const uint32_t threshold = dropout_threshold(p);
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  const T zero = static_cast<T>(0.0);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = dropout_keep(seed, i, threshold) ? scale : zero;
  });
}

// float32, the common case: the row kernel is built for AVX2/AVX-512 (the hash needs 32-bit
// vector multiplies, which baseline x86-64 lacks).
template <>
void fill_mask<float>(float* out, int64_t n, uint64_t seed, double p) {
  const uint32_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    rows::dropout_scales(out + begin, seed, begin, threshold, scale, end - begin);
  });
}

}  // namespace

uint64_t dropout_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get<at::CPUGeneratorImpl>()->random64();
}

torch::Tensor dropout_mask(const torch::Tensor& x, double p) {
  auto mask = torch::empty(x.sizes(), x.options().device(torch::kCPU));
  const uint64_t seed = dropout_seed();
  switch (mask.scalar_type()) {
    case torch::kFloat32: fill_mask(mask.data_ptr<float>(), mask.numel(), seed, p); break;
    case torch::kFloat64: fill_mask(mask.data_ptr<double>(), mask.numel(), seed, p); break;
    case torch::kBFloat16: fill_mask(mask.data_ptr<c10::BFloat16>(), mask.numel(), seed, p); break;
    case torch::kFloat16: fill_mask(mask.data_ptr<c10::Half>(), mask.numel(), seed, p); break;
    default: throw Error("dropout: unsupported dtype " + std::string(c10::toString(mask.scalar_type())));
  }
  return mask.to(x.device());
}

FastDropoutImpl::FastDropoutImpl(double p) : p_(p) {}

torch::Tensor FastDropoutImpl::forward(const torch::Tensor& x) {
  if (!is_training() || p_ <= 0) return x;
  return x * dropout_mask(x, p_);
}

}  // namespace distill
