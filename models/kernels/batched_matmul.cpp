#include "models/kernels/batched_matmul.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <vector>

#include "models/kernels/sgemm.h"

namespace distill {
namespace {

struct MatrixView {
  blas::Op trans = blas::Op::N;
  int64_t ld = 0;
  std::vector<int64_t> offsets;  // element offset of each matrix in the batch
};

// How sgemm reads the last two dimensions of t (after making them unit-stride one way or the
// other), and where each matrix of the batch starts.
MatrixView view_of(torch::Tensor& t) {
  const auto d = t.dim();
  auto rows = t.size(d - 2), cols = t.size(d - 1);
  auto sr = t.stride(d - 2), sc = t.stride(d - 1);
  const bool row_major = sc == 1 && sr >= std::max<int64_t>(1, cols);
  const bool col_major = sr == 1 && sc >= std::max<int64_t>(1, rows);
  if (!row_major && !col_major) {
    t = t.contiguous();
    sr = t.stride(d - 2);
    sc = 1;
  }
  MatrixView v;
  if (sc == 1) {
    v.trans = blas::Op::N;
    v.ld = std::max<int64_t>(1, sr);
  } else {
    v.trans = blas::Op::T;
    v.ld = std::max<int64_t>(1, sc);
  }
  int64_t batch = 1;
  for (int64_t i = 0; i < d - 2; ++i) batch *= t.size(i);
  v.offsets.resize(static_cast<size_t>(batch));
  for (int64_t n = 0; n < batch; ++n) {
    int64_t rest = n, off = 0;
    for (int64_t i = d - 3; i >= 0; --i) {
      off += (rest % t.size(i)) * t.stride(i);
      rest /= t.size(i);
    }
    v.offsets[static_cast<size_t>(n)] = off;
  }
  return v;
}

torch::Tensor raw_batched_matmul(torch::Tensor a, torch::Tensor b) {
  const auto d = a.dim();
  const auto M = a.size(d - 2), K = a.size(d - 1), N = b.size(d - 1);
  auto out_shape = a.sizes().vec();
  out_shape[static_cast<size_t>(d - 1)] = N;
  auto out = torch::empty(out_shape, a.options());
  if (out.numel() == 0) return out;
  if (K == 0) return out.zero_();
  const MatrixView va = view_of(a), vb = view_of(b);
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* pc = out.data_ptr<float>();
  const auto batch = static_cast<int64_t>(va.offsets.size());
  // One sgemm per matrix; inside the parallel region sgemm runs single-threaded.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      blas::sgemm(va.trans, vb.trans, M, N, K, 1.0f, pa + va.offsets[static_cast<size_t>(n)], va.ld,
                  pb + vb.offsets[static_cast<size_t>(n)], vb.ld, 0.0f, pc + n * M * N, N);
    }
  });
  return out;
}

struct BatchedMatmulFunction : public torch::autograd::Function<BatchedMatmulFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
    return raw_batched_matmul(a, b);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    torch::Tensor ga, gb;
    if (ctx->needs_input_grad(0)) ga = raw_batched_matmul(g, saved[1].transpose(-1, -2));  // [.., M, K]
    if (ctx->needs_input_grad(1)) gb = raw_batched_matmul(saved[0].transpose(-1, -2), g);  // [.., K, N]
    return {ga, gb};
  }
};

}  // namespace

torch::Tensor batched_matmul(const torch::Tensor& a, const torch::Tensor& b) {
  const bool direct = a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32 && a.device().is_cpu() &&
                      b.device().is_cpu() && a.dim() >= 3 && a.dim() == b.dim() &&
                      a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2) && a.size(-1) == b.size(-2);
  if (!direct) return torch::matmul(a, b);
  if (!a.requires_grad() && !b.requires_grad()) return raw_batched_matmul(a, b);
  return BatchedMatmulFunction::apply(a, b);
}

}  // namespace distill
