#include "models/kernels/projection.h"

#include "models/errors.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/sgemm.h"

namespace distill {
namespace {

using blas::Op;

// op_a(a) [m, k] times op_b(b) [k, n], both contiguous, into c [m, n] float32 with row stride ldc
void product_into(Op op_a, Op op_b, const at::Tensor& a, const at::Tensor& b, int64_t m, int64_t n, int64_t k, float* c,
                  int64_t ldc) {
  if (a.scalar_type() == at::kBFloat16) {
    blas::gemm_bf16(op_a, op_b, m, n, k, 1.0f, reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>()), a.size(1),
                    reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>()), b.size(1), 0.0f, c, ldc);
  } else {
    blas::sgemm(op_a, op_b, m, n, k, 1.0f, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1), 0.0f, c, ldc);
  }
}

at::Tensor product(Op op_a, Op op_b, const at::Tensor& a, const at::Tensor& b, int64_t m, int64_t n, int64_t k) {
  auto out = at::empty({m, n}, a.options().dtype(at::kFloat));
  product_into(op_a, op_b, a, b, m, n, k, out.data_ptr<float>(), n);
  return out;
}

// x [N, in] (float32 or bf16), w [out, in] of the same dtype -> [N, out] float32
at::Tensor forward_2d(const at::Tensor& x, const at::Tensor& w) {
  return product(Op::N, Op::T, x, w, x.size(0), w.size(0), x.size(1));
}

// The parts as one [sum of rows, in] weight: a view when they sit back to back in one allocation (as
// T5Attention keeps q, k and v), else their concatenation.
at::Tensor concat(const std::vector<at::Tensor>& parts) {
  if (parts.size() == 1) return parts[0].contiguous();
  bool adjacent = true;
  int64_t rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& p = parts[i];
    adjacent = adjacent && p.is_contiguous() && p.scalar_type() == parts[0].scalar_type() && p.size(1) == parts[0].size(1) &&
               p.storage().is_alias_of(parts[0].storage()) &&
               (i == 0 || static_cast<const char*>(p.data_ptr()) ==
                              static_cast<const char*>(parts[i - 1].data_ptr()) + parts[i - 1].nbytes());
    rows += p.size(0);
  }
  if (!adjacent) return at::cat(parts, 0);
  return parts[0].as_strided({rows, parts[0].size(1)}, {parts[0].size(1), 1}, parts[0].storage_offset());
}

// The operands of one product: float32 as given, or bf16 copies (the weight's cached). Under bf16,
// x32 and w32 keep the float32 operands of the leading exact parts' columns.
struct Operands {
  at::Tensor x, w;
  at::Tensor x32, w32;  // [N, in], [R, in]: the exact columns' operands (bf16 with exact parts only)
};
Operands operands(const at::Tensor& x, const std::vector<at::Tensor>& parts, bool bf16, size_t exact_parts) {
  if (!bf16) return {x, concat(parts), {}, {}};
  Operands op{to_bf16(x), bf16_copy(parts), {}, {}};
  if (exact_parts > 0) {
    op.x32 = x;
    op.w32 = concat({parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(exact_parts)});
  }
  return op;
}

// x [N, in] -> [N, out] float32: the exact columns (if any) from the float32 operands, the rest from
// op.x and op.w.
at::Tensor forward_of(const Operands& op) {
  if (!op.w32.defined()) return forward_2d(op.x, op.w);
  const int64_t N = op.x.size(0), in = op.x.size(1), out = op.w.size(0), R = op.w32.size(0);
  auto y = at::empty({N, out}, op.x32.options());  // [N, out]
  product_into(Op::N, Op::T, op.x32, op.w32, N, R, in, y.data_ptr<float>(), out);
  if (out > R) product_into(Op::N, Op::T, op.x, op.w.narrow(0, R, out - R), N, out - R, in, y.data_ptr<float>() + R, out);
  return y;
}

// Inputs: x [N, in], then the weight's parts. bf16 is decided at forward and kept for backward
// (which runs outside the caller's Bf16Products scope).
struct ProjectionFunction : public torch::autograd::Function<ProjectionFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, at::TensorList parts_in, bool bf16,
                            int64_t exact_parts) {
    const std::vector<at::Tensor> parts(parts_in.begin(), parts_in.end());
    const auto op = operands(x, parts, bf16, static_cast<size_t>(exact_parts));
    ctx->save_for_backward({op.x, op.w});  // bf16 x: half the memory; w: the product's weight as used
    std::vector<int64_t> rows;
    for (const auto& p : parts) rows.push_back(p.size(0));
    ctx->saved_data["rows"] = c10::List<int64_t>(rows);
    ctx->saved_data["bf16"] = bf16;
    return forward_of(op);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool bf16 = ctx->saved_data["bf16"].toBool();
    const auto& x = saved[0];  // [N, in]
    const auto& w = saved[1];  // [out, in]
    const auto rows = ctx->saved_data["rows"].toIntVector();
    const auto g = bf16 ? to_bf16(grads[0]) : grads[0].contiguous();  // [N, out]
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = product(Op::N, Op::N, g, w, g.size(0), w.size(1), w.size(0));  // [N, in]
    bool want_w = false;
    for (size_t i = 0; i < rows.size(); ++i) want_w = want_w || ctx->needs_input_grad(1 + i);
    if (want_w) gw = product(Op::T, Op::N, g, x, w.size(0), w.size(1), g.size(0));  // [out, in]
    torch::autograd::tensor_list out{gx};
    int64_t row = 0;
    for (const int64_t r : rows) {
      out.push_back(gw.defined() ? gw.narrow(0, row, r) : at::Tensor());
      row += r;
    }
    out.push_back(at::Tensor());  // bf16
    out.push_back(at::Tensor());  // exact_parts
    return out;
  }
};

}  // namespace

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, size_t exact_parts) {
  return project(x, std::vector<torch::Tensor>{weight}, exact_parts);
}

torch::Tensor project(const torch::Tensor& x, const std::vector<torch::Tensor>& parts, size_t exact_parts) {
  if (exact_parts > parts.size()) {
    throw Error("project: " + std::to_string(exact_parts) + " exact parts of " + std::to_string(parts.size()));
  }
  bool direct = x.scalar_type() == torch::kFloat32 && x.device().is_cpu() && x.dim() >= 1 && !parts.empty();
  for (const auto& w : parts) {
    direct = direct && w.scalar_type() == torch::kFloat32 && w.device().is_cpu() && w.dim() == 2 &&
             x.size(-1) == w.size(1);
  }
  if (!direct) return torch::nn::functional::linear(x, parts.size() == 1 ? parts[0] : torch::cat(parts, 0));  // autograd through cat
  int64_t out_features = 0;
  for (const auto& w : parts) out_features += w.size(0);
  auto out_shape = x.sizes().vec();
  out_shape.back() = out_features;
  const auto x2 = x.reshape({-1, x.size(-1)}).contiguous();  // [N, in]
  const bool bf16 = bf16_products_active();
  bool grad = torch::GradMode::is_enabled() && x.requires_grad();
  for (const auto& w : parts) grad = grad || (torch::GradMode::is_enabled() && w.requires_grad());
  if (grad) {  // a TensorList, so autograd sees each part
    return ProjectionFunction::apply(x2, at::TensorList(parts), bf16, static_cast<int64_t>(exact_parts)).view(out_shape);
  }
  return forward_of(operands(x2, parts, bf16, /*exact_parts=*/0)).view(out_shape);  // nothing to differentiate
}

}  // namespace distill
