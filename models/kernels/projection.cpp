#include "models/kernels/projection.h"

#include "models/kernels/mixed_precision.h"
#include "models/kernels/sgemm.h"

namespace distill {
namespace {

// op_a(a) [m, k] times op_b(b) [k, n], both contiguous -> [m, n]
at::Tensor product(blas::Op op_a, blas::Op op_b, const at::Tensor& a, const at::Tensor& b, int64_t m, int64_t n,
                   int64_t k) {
  auto out = at::empty({m, n}, a.options());
  blas::sgemm(op_a, op_b, m, n, k, 1.0f, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1), 0.0f,
              out.data_ptr<float>(), n);
  return out;
}

at::Tensor forward_2d(const at::Tensor& x, const at::Tensor& w) {
  return product(blas::Op::N, blas::Op::T, x, w, x.size(0), w.size(0), x.size(1));  // [N, out]
}

struct ProjectionFunction : public torch::autograd::Function<ProjectionFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    return forward_2d(x, w);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];              // [N, in]
    const auto& w = saved[1];              // [out, in]
    const auto g = grads[0].contiguous();  // [N, out]
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = product(blas::Op::N, blas::Op::N, g, w, g.size(0), w.size(1), w.size(0));  // [N, in]
    if (ctx->needs_input_grad(1)) gw = product(blas::Op::T, blas::Op::N, g, x, w.size(0), w.size(1), g.size(0));  // [out, in]
    return {gx, gw};
  }
};

}  // namespace

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight) {
  const bool direct = x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32 &&
                      x.device().is_cpu() && weight.device().is_cpu() && x.dim() >= 1 && weight.dim() == 2 &&
                      x.size(-1) == weight.size(1) && !bf16_autocast_active();
  if (!direct) return torch::nn::functional::linear(x, weight);
  auto out_shape = x.sizes().vec();
  out_shape.back() = weight.size(0);
  const auto x2 = x.reshape({-1, x.size(-1)}).contiguous();  // [N, in]
  const auto w = weight.contiguous();                        // [out, in]
  const bool grad = torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  return (grad ? ProjectionFunction::apply(x2, w) : forward_2d(x2, w)).view(out_shape);
}

}  // namespace distill
