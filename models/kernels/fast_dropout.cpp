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

namespace {

bool fusable(const torch::Tensor& t) { return t.scalar_type() == torch::kFloat32 && t.device().is_cpu(); }

// out = base + dropout(x) (base may be null) over the flat index, in parallel chunks.
void run_dropout_add(float* out, const float* base, const float* x, uint64_t seed, double p, int64_t n) {
  const uint32_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    rows::dropout_add(out + begin, base ? base + begin : nullptr, x + begin, seed, begin, threshold, scale, end - begin);
  });
}

// The gradient through dropout: the forward's mask, regenerated from its seed.
at::Tensor dropout_backward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad) {
  const auto g = grad.contiguous();
  auto gx = at::empty(g.sizes(), g.options());
  run_dropout_add(gx.data_ptr<float>(), nullptr, g.data_ptr<float>(), seed_from_int(ctx->saved_data["seed"].toInt()),
                  ctx->saved_data["p"].toDouble(), g.numel());
  return gx;
}

// base undefined: dropout alone
at::Tensor dropout_forward(torch::autograd::AutogradContext* ctx, const at::Tensor& base_in, const at::Tensor& x_in, double p) {
  const auto x = x_in.contiguous();
  const auto base = base_in.defined() ? base_in.contiguous() : at::Tensor();
  const uint64_t seed = dropout_seed();
  auto out = at::empty(x.sizes(), x.options());
  run_dropout_add(out.data_ptr<float>(), base.defined() ? base.data_ptr<float>() : nullptr, x.data_ptr<float>(), seed, p,
                  x.numel());
  if (ctx != nullptr) {
    ctx->saved_data["seed"] = seed_to_int(seed);
    ctx->saved_data["p"] = p;
  }
  return out;
}

struct DropoutFunction : public torch::autograd::Function<DropoutFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double p) {
    return dropout_forward(ctx, {}, x, p);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    return {dropout_backward(ctx, grads[0]), at::Tensor()};
  }
};

struct AddDropoutFunction : public torch::autograd::Function<AddDropoutFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& base, const at::Tensor& x, double p) {
    return dropout_forward(ctx, base, x, p);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    return {grads[0], ctx->needs_input_grad(1) ? dropout_backward(ctx, grads[0]) : at::Tensor(), at::Tensor()};
  }
};

at::Tensor relu_dropout_forward(const at::Tensor& x_in, double p) {
  const auto x = x_in.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  const uint64_t seed = p > 0 ? dropout_seed() : 0;
  const uint32_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), 16384, [&](int64_t begin, int64_t end) {
    rows::relu_dropout(po + begin, px + begin, p > 0, seed, begin, threshold, scale, end - begin);
  });
  return out;
}

struct ReluDropoutFunction : public torch::autograd::Function<ReluDropoutFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double p) {
    auto out = relu_dropout_forward(x, p);
    ctx->save_for_backward({out});
    ctx->saved_data["p"] = p;
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto h = ctx->get_saved_variables()[0];  // the output: > 0 exactly where the unit was kept and positive
    const auto g = grads[0].contiguous();
    auto gx = at::empty(g.sizes(), g.options());
    const float scale = dropout_scale(ctx->saved_data["p"].toDouble());
    const float *pg = g.data_ptr<float>(), *ph = h.data_ptr<float>();
    float* po = gx.data_ptr<float>();
    at::parallel_for(0, g.numel(), 16384, [&](int64_t begin, int64_t end) {
      rows::relu_dropout_backward(po + begin, pg + begin, ph + begin, scale, end - begin);
    });
    return {gx, at::Tensor()};
  }
};

}  // namespace

torch::Tensor add_dropout(const torch::Tensor& base, const torch::Tensor& x, double p) {
  if (p <= 0) return base.defined() ? base + x : x;
  const bool fused = fusable(x) && (!base.defined() || (fusable(base) && base.sizes() == x.sizes()));
  if (!fused) {
    auto dropped = x * dropout_mask(x, p);
    return base.defined() ? base + dropped : dropped;
  }
  const bool grad = torch::GradMode::is_enabled() && (x.requires_grad() || (base.defined() && base.requires_grad()));
  if (!grad) return dropout_forward(nullptr, base, x, p);
  return base.defined() ? AddDropoutFunction::apply(base, x, p) : DropoutFunction::apply(x, p);
}

torch::Tensor relu_dropout(const torch::Tensor& x, double p) {
  if (!fusable(x)) {
    auto h = torch::relu(x);
    return p > 0 ? h * dropout_mask(h, p) : h;
  }
  if (torch::GradMode::is_enabled() && x.requires_grad()) return ReluDropoutFunction::apply(x, p);
  return relu_dropout_forward(x, p);
}

FastDropoutImpl::FastDropoutImpl(double p) : p_(p) {}

torch::Tensor FastDropoutImpl::forward(const torch::Tensor& x) { return add_dropout({}, x, is_training() ? p_ : 0.0); }

torch::Tensor FastDropoutImpl::add_to(const torch::Tensor& base, const torch::Tensor& x) {
  return add_dropout(base, x, is_training() ? p_ : 0.0);
}

}  // namespace distill
