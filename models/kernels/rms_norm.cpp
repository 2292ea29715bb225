#include "models/kernels/rms_norm.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "models/kernels/row_kernels.h"

namespace distill {
namespace {

// Rows per task: enough work to be worth a thread, few enough that both threads get some.
constexpr int64_t kRowGrain = 16;

// y = w * x * r per row, r = 1 / sqrt(mean(x^2) + eps) saved per row.
at::Tensor forward_rows(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& rstd) {
  const int64_t N = x.size(0), D = x.size(1);
  auto y = at::empty({N, D}, x.options());
  rstd = at::empty({N}, x.options());
  const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pr = rstd.data_ptr<float>();
  at::parallel_for(0, N, kRowGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* xi = px + i * D;
      const float r = static_cast<float>(1.0 / std::sqrt(static_cast<double>(rows::dot(xi, xi, D)) / D + eps));
      pr[i] = r;
      rows::scaled_product(py + i * D, xi, pw, r, D);
    }
  });
  return y;
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps) {
    at::Tensor rstd;
    auto y = forward_rows(x, w, eps, rstd);
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  // With u = w * g: gx = r * u - x * r^3 * dot(u, x) / D; gw = sum over rows of g * x * r.
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &rstd = saved[2];
    const auto g = grads[0].contiguous();
    const int64_t N = x.size(0), D = x.size(1);
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    auto gx = want_x ? at::empty({N, D}, x.options()) : at::Tensor();
    // Each task adds its rows' share of gw into its own row of parts; the parts are summed after,
    // in task order, so the result does not depend on which thread ran what.
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, N / kRowGrain));
    auto parts = want_w ? at::zeros({tasks, D}, x.options()) : at::Tensor();
    const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>(), *pr = rstd.data_ptr<float>(),
                *pg = g.data_ptr<float>();
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> u(static_cast<size_t>(D));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t lo = N * t / tasks, hi = N * (t + 1) / tasks;
        float* part = want_w ? parts.data_ptr<float>() + t * D : nullptr;
        for (int64_t i = lo; i < hi; ++i) {
          const float *xi = px + i * D, *gi = pg + i * D;
          const float r = pr[i];
          if (want_w) rows::axpy_product(part, gi, xi, r, D);  // part += r * g * x
          if (want_x) {
            rows::multiply(u.data(), pw, gi, D);
            const float c = -r * r * r * rows::dot(u.data(), xi, D) / static_cast<float>(D);
            rows::rms_norm_input_grad(gx.data_ptr<float>() + i * D, u.data(), xi, r, c, D);
          }
        }
      }
    });
    at::Tensor gw;
    if (want_w) {
      gw = parts[0].clone();
      for (int64_t t = 1; t < tasks; ++t) rows::axpy(gw.data_ptr<float>(), parts.data_ptr<float>() + t * D, 1.0f, D);
    }
    return {gx, gw, at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto variance = x.to(torch::kFloat32).pow(2).mean(-1, /*keepdim=*/true);
  auto y = x * torch::rsqrt(variance + eps);
  if (weight.scalar_type() != torch::kFloat32) y = y.to(weight.scalar_type());
  return weight * y;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const bool fast = x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && x.device().is_cpu() &&
                    weight.device().is_cpu() && x.dim() >= 1 && weight.dim() == 1 && x.size(-1) == weight.size(0) &&
                    x.numel() > 0;
  if (!fast) return rms_norm_reference(x, weight, eps);
  const auto x2 = x.reshape({-1, x.size(-1)}).contiguous();  // [N, D]
  const auto w = weight.contiguous();
  const bool grad = torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  if (grad) return RmsNormFunction::apply(x2, w, eps).view(x.sizes());
  at::Tensor rstd;
  return forward_rows(x2, w, eps, rstd).view(x.sizes());
}

}  // namespace distill
