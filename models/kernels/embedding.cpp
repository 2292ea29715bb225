#include "models/kernels/embedding.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "models/kernels/row_kernels.h"

namespace distill {
namespace {

// Columns per task: threads split the table's width, every task visits every id in order.
constexpr int64_t kColumnGrain = 64;

struct EmbeddingFunction : public torch::autograd::Function<EmbeddingFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& ids) {
    ctx->save_for_backward({ids});
    ctx->saved_data["rows"] = weight.size(0);
    return at::index_select(weight, 0, ids);  // [N, D]
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto ids = ctx->get_saved_variables()[0];
    const auto g = grads[0].contiguous();  // [N, D]
    const int64_t N = g.size(0), D = g.size(1);
    auto gw = at::zeros({ctx->saved_data["rows"].toInt(), D}, g.options());  // [V, D]
    const int64_t* pid = ids.data_ptr<int64_t>();
    const float* pg = g.data_ptr<float>();
    float* pw = gw.data_ptr<float>();
    const int64_t grain = N * D < 32768 ? D : kColumnGrain;  // small: one task
    at::parallel_for(0, D, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = 0; i < N; ++i) rows::axpy(pw + pid[i] * D + lo, pg + i * D + lo, 1.0f, hi - lo);
    });
    return {gw, at::Tensor()};
  }
};

}  // namespace

at::Tensor embedding_lookup(const at::Tensor& weight, const at::Tensor& ids) {
  const bool fast = weight.scalar_type() == at::kFloat && weight.device().is_cpu() && weight.dim() == 2 &&
                    weight.is_contiguous() && ids.scalar_type() == at::kLong && ids.device().is_cpu();
  if (!fast) return torch::embedding(weight, ids);
  auto out_shape = ids.sizes().vec();
  out_shape.push_back(weight.size(1));
  const auto flat = ids.reshape({-1}).contiguous();  // [N]
  if (torch::GradMode::is_enabled() && weight.requires_grad()) {
    return EmbeddingFunction::apply(weight, flat).view(out_shape);
  }
  return at::index_select(weight, 0, flat).view(out_shape);
}

}  // namespace distill
