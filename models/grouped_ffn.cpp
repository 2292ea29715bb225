#include "models/grouped_ffn.h"

#include <torch/torch.h>

#include "models/errors.h"
#include "models/fast_dropout.h"
#include "models/mixed_precision.h"

namespace distill {
namespace {

// Calls fn(e, begin, n) for every expert with n > 0 assignments, which occupy rows [begin, begin + n).
template <typename Fn>
void for_each_group(const std::vector<int64_t>& counts, Fn&& fn) {
  int64_t begin = 0;
  for (size_t e = 0; e < counts.size(); begin += counts[e++]) {
    if (counts[e] > 0) fn(static_cast<int64_t>(e), begin, counts[e]);
  }
}

struct Forward {
  at::Tensor out;  // [N, D]
  at::Tensor xs;   // [M, D] gathered inputs
  at::Tensor h;    // [M, F] hidden units after ReLU and dropout
  at::Tensor y;    // [M, D] expert outputs before the gate
};

Forward run_forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& token, const std::vector<int64_t>& counts,
                    const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout) {
  Forward f;
  const int64_t M = token.size(0), D = x.size(1), F = wi.empty() ? 0 : wi[0].size(0);
  f.xs = x.index_select(0, token);  // [M, D]
  f.h = at::empty({M, F}, x.options());
  f.y = at::empty({M, D}, x.options());
  for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
    auto h = f.h.narrow(0, begin, n);
    at::mm_out(h, f.xs.narrow(0, begin, n), wi[static_cast<size_t>(e)].t());  // [n, F]
  });
  f.h.relu_();
  if (dropout > 0) f.h.mul_(dropout_mask(f.h, dropout));
  for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
    auto y = f.y.narrow(0, begin, n);
    at::mm_out(y, f.h.narrow(0, begin, n), wo[static_cast<size_t>(e)].t());  // [n, D]
  });
  f.out = at::zeros_like(x).index_add_(0, token, f.y * gate.to(x.scalar_type()).unsqueeze(1));
  return f;
}

struct GroupedFfnFunction : public torch::autograd::Function<GroupedFfnFunction> {
  // Inputs: x, gate, then E wi and E wo weights.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gate,
                            const at::Tensor& token, std::vector<int64_t> counts, at::TensorList weights, double dropout) {
    const size_t E = counts.size();
    std::vector<at::Tensor> wi(weights.begin(), weights.begin() + static_cast<int64_t>(E));
    std::vector<at::Tensor> wo(weights.begin() + static_cast<int64_t>(E), weights.end());
    auto f = run_forward(x, gate, token, counts, wi, wo, dropout);
    std::vector<at::Tensor> saved{f.xs, f.h, f.y, gate, token};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["counts"] = c10::List<int64_t>(counts);
    ctx->saved_data["dropout"] = dropout;
    ctx->saved_data["rows"] = x.size(0);
    return f.out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& xs = saved[0];
    const auto& h = saved[1];
    const auto& y = saved[2];
    const auto& gate = saved[3];
    const auto& token = saved[4];
    const auto counts = ctx->saved_data["counts"].toIntVector();
    const double dropout = ctx->saved_data["dropout"].toDouble();
    const int64_t N = ctx->saved_data["rows"].toInt(), E = static_cast<int64_t>(counts.size());
    auto wi = [&](int64_t e) { return saved[static_cast<size_t>(5 + e)]; };
    auto wo = [&](int64_t e) { return saved[static_cast<size_t>(5 + E + e)]; };

    auto gy = grads[0].index_select(0, token);                        // [M, D]
    auto ggate = (gy * y).sum(1).to(gate.scalar_type());               // [M]
    gy.mul_(gate.to(gy.scalar_type()).unsqueeze(1));
    auto gh = at::empty_like(h);                                       // [M, F]
    std::vector<at::Tensor> gwi(static_cast<size_t>(E)), gwo(static_cast<size_t>(E));
    for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
      auto gy_e = gy.narrow(0, begin, n);
      gwo[static_cast<size_t>(e)] = at::mm(gy_e.t(), h.narrow(0, begin, n));  // [D, F]
      auto gh_e = gh.narrow(0, begin, n);
      at::mm_out(gh_e, gy_e, wo(e));                                           // [n, F]
    });
    // Through dropout and ReLU at once: a kept, positive unit has h > 0, every other unit h == 0.
    gh = at::threshold_backward(gh, h, 0);
    if (dropout > 0) gh.mul_(1.0 / (1.0 - dropout));
    auto gxs = at::empty_like(xs);                                     // [M, D]
    for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
      auto gh_e = gh.narrow(0, begin, n);
      gwi[static_cast<size_t>(e)] = at::mm(gh_e.t(), xs.narrow(0, begin, n));  // [F, D]
      auto gxs_e = gxs.narrow(0, begin, n);
      at::mm_out(gxs_e, gh_e, wi(e));                                           // [n, D]
    });
    auto gx = at::zeros({N, xs.size(1)}, xs.options()).index_add_(0, token, gxs);

    torch::autograd::tensor_list out{gx, ggate, at::Tensor(), at::Tensor()};
    out.insert(out.end(), gwi.begin(), gwi.end());
    out.insert(out.end(), gwo.begin(), gwo.end());
    out.push_back(at::Tensor());
    return out;
  }
};

}  // namespace

at::Tensor grouped_relu_ffn(const at::Tensor& x, const at::Tensor& gate, const ExpertGroups& groups,
                            const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout) {
  if (wi.size() != groups.counts.size() || wo.size() != groups.counts.size()) {
    throw Error("grouped_relu_ffn: expected one wi and one wo per expert");
  }
  bool needs_grad = torch::GradMode::is_enabled() && (x.requires_grad() || gate.requires_grad());
  for (size_t e = 0; e < wi.size() && !needs_grad; ++e) {
    needs_grad = torch::GradMode::is_enabled() && (wi[e].requires_grad() || wo[e].requires_grad());
  }
  std::vector<at::Tensor> weights(wi);
  weights.insert(weights.end(), wo.begin(), wo.end());
  if (bf16_autocast_active() && x.scalar_type() == at::kFloat) {
    // Autocast does not reach inside a custom function: cast here, differentiably, like autocast would.
    auto xb = x.to(at::kBFloat16);
    for (auto& w : weights) w = w.to(at::kBFloat16);
    const size_t E = wi.size();
    std::vector<at::Tensor> wib(weights.begin(), weights.begin() + static_cast<int64_t>(E)), wob(weights.begin() + static_cast<int64_t>(E), weights.end());
    NoAutocast plain;
    return grouped_relu_ffn(xb, gate, groups, wib, wob, dropout);
  }
  if (!needs_grad) return run_forward(x, gate, groups.token, groups.counts, wi, wo, dropout).out;
  return GroupedFfnFunction::apply(x, gate, groups.token, groups.counts, at::TensorList(weights), dropout);
}

}  // namespace distill
