#include "models/switch_top1.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "models/grouped_ffn.h"
#include "models/mixed_precision.h"
#include "models/row_kernels.h"
#include "models/sgemm.h"

namespace distill {
namespace {

using blas::Op;

// The routing half of the forward: what backward needs besides the experts' own state.
struct Routed {
  at::Tensor xr;        // [N, D] the router's input: x, or x * noise
  at::Tensor logits;    // [N, E]
  at::Tensor probs;     // [N, E] softmax of the logits
  at::Tensor expert;    // [N] int64
  at::Tensor kept;      // [N] bool
  at::Tensor gate;      // [M] probability of the chosen expert, per kept token
  ExpertGroups groups;  // kept tokens grouped by expert
};

Routed route(const at::Tensor& x, const at::Tensor& noise, const at::Tensor& w, const Top1Routing& routing) {
  const int64_t N = x.size(0), D = x.size(1), E = w.size(0);
  Routed r;
  r.xr = noise.defined() ? (x * noise).contiguous() : x;
  r.logits = at::empty({N, E}, x.options());
  r.probs = at::empty({N, E}, x.options());
  const float *px = r.xr.data_ptr<float>(), *pw = w.data_ptr<float>();
  float *l = r.logits.data_ptr<float>(), *p = r.probs.data_ptr<float>();
  // Product and softmax on both threads: on one, they took 40 and 29 us at small8.
  at::parallel_for(0, N, 256, [&](int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    blas::sgemm(Op::N, Op::T, n, E, D, 1.0f, px + lo * D, D, pw, D, 0.0f, l + lo * E, E);  // [n, E]
    float* pr = p + lo * E;
    for (int64_t i = 0; i < n; ++i) {
      const float* li = l + (lo + i) * E;
      const float top = *std::max_element(li, li + E);
      for (int64_t e = 0; e < E; ++e) pr[i * E + e] = li[e] - top;
    }
    at::from_blob(pr, {n * E}, x.options()).exp_();  // ATen's vectorised exp, serial in this region
    for (int64_t i = 0; i < n; ++i) rows::scale(pr + i * E, 1.0f / rows::sum(pr + i * E, E), E);
  });
  r.expert = at::empty({N}, x.options().dtype(at::kLong));
  r.kept = at::empty({N}, x.options().dtype(at::kBool));
  int64_t* ex = r.expert.data_ptr<int64_t>();
  const auto by_expert =
      route_pass(p, routing.batch, routing.seq_len, E, 1, routing.mode, routing.capacity, ex, r.kept.data_ptr<bool>());
  int64_t M = 0;
  for (const auto& list : by_expert) {
    r.groups.counts.push_back(static_cast<int64_t>(list.size()));
    M += static_cast<int64_t>(list.size());
  }
  r.groups.token = at::empty({M}, r.expert.options());
  r.gate = at::empty({M}, x.options());
  int64_t* tok = r.groups.token.data_ptr<int64_t>();
  float* g = r.gate.data_ptr<float>();
  for (const auto& list : by_expert) {
    for (int64_t t : list) {
      *tok++ = t;
      *g++ = p[t * E + ex[t]];
    }
  }
  return r;
}

// The weights as the function's TensorList: E wi, then E wo.
std::vector<at::Tensor> first(at::TensorList weights, size_t n) { return {weights.begin(), weights.begin() + n}; }
std::vector<at::Tensor> last(at::TensorList weights, size_t n) { return {weights.end() - n, weights.end()}; }

struct Top1SwitchFunction : public torch::autograd::Function<Top1SwitchFunction> {
  // Outputs: out [N, D], logits [N, E], expert [N], kept [N]; the last two are not differentiable.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& router_weight, const c10::optional<at::Tensor>& noise_or,
                                                at::TensorList weights, Top1Routing routing, double dropout) {
    const at::Tensor noise = noise_or.value_or(at::Tensor());
    const size_t E = weights.size() / 2;
    const auto wi = first(weights, E), wo = last(weights, E);
    Routed r = route(x, noise, router_weight, routing);
    auto f = grouped_f32::forward(x, r.gate, r.groups, wi, wo, dropout);
    std::vector<at::Tensor> saved{r.xr, r.probs, r.expert, r.gate, r.groups.token, f.xs, f.h, f.y, router_weight,
                                  noise.defined() ? noise : at::Tensor()};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["counts"] = c10::List<int64_t>(r.groups.counts);
    ctx->saved_data["dropout"] = dropout;
    ctx->mark_non_differentiable({r.expert, r.kept});
    return {f.out, r.logits, r.expert, r.kept};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &xr = saved[0], &probs = saved[1], &expert = saved[2], &gate = saved[3], &w = saved[8], &noise = saved[9];
    const ExpertGroups groups{saved[4], ctx->saved_data["counts"].toIntVector()};
    grouped_f32::Forward f;
    f.xs = saved[5];
    f.h = saved[6];
    f.y = saved[7];
    const size_t E = groups.counts.size();
    const at::TensorList weights = at::TensorList(saved).slice(10);
    const auto wi = first(weights, E), wo = last(weights, E);
    const double dropout = ctx->saved_data["dropout"].toDouble();
    const int64_t N = xr.size(0), D = xr.size(1), M = groups.token.size(0), Ei = static_cast<int64_t>(E);

    auto b = grouped_f32::backward(grads[0], f, gate, groups, wi, wo, dropout);
    // The logits' gradient: what the router losses sent, plus the gates' through the softmax,
    // d logits[t, j] = d gate * p[t, e] * (1{j == e} - p[t, j]) for kept token t on expert e.
    auto dlogits = grads[1].defined() ? grads[1].contiguous().clone() : at::zeros_like(probs);  // [N, E]
    {
      float* dl = dlogits.data_ptr<float>();
      const float *p = probs.data_ptr<float>(), *dg = b.ggate.data_ptr<float>();
      const int64_t *tok = groups.token.data_ptr<int64_t>(), *ex = expert.data_ptr<int64_t>();
      for (int64_t a = 0; a < M; ++a) {
        const int64_t t = tok[a], e = ex[t];
        const float c = dg[a] * p[t * Ei + e];
        for (int64_t j = 0; j < Ei; ++j) dl[t * Ei + j] -= c * p[t * Ei + j];
        dl[t * Ei + e] += c;
      }
    }
    const float* dl = dlogits.data_ptr<float>();
    at::Tensor gw;
    if (ctx->needs_input_grad(1)) {
      gw = at::empty({Ei, D}, xr.options());
      blas::sgemm(Op::T, Op::N, Ei, D, N, 1.0f, dl, Ei, xr.data_ptr<float>(), D, 0.0f, gw.data_ptr<float>(),
                  D);  // [E, D]
    }
    at::Tensor gx;
    if (ctx->needs_input_grad(0)) {
      // Each block of rows starts as the router's input gradient, (d logits W) * noise.
      const float* pw = w.data_ptr<float>();
      const float* pn = noise.defined() ? noise.data_ptr<float>() : nullptr;
      gx = grouped_f32::add_to_tokens(b.gxs, groups.token, N, [&](int64_t lo, int64_t hi, float* rows) {
        blas::sgemm(Op::N, Op::N, hi - lo, D, Ei, 1.0f, dl + lo * Ei, Ei, pw, D, 0.0f, rows, D);  // [hi - lo, D]
        if (pn) rows::multiply(rows, rows, pn + lo * D, (hi - lo) * D);
      });
    }
    torch::autograd::variable_list out{gx, gw, at::Tensor()};  // noise: none
    out.insert(out.end(), b.gwi.begin(), b.gwi.end());
    out.insert(out.end(), b.gwo.begin(), b.gwo.end());
    out.push_back(at::Tensor());  // routing
    out.push_back(at::Tensor());  // dropout
    return out;
  }
};

}  // namespace

bool top1_switch_applies(const at::Tensor& x, const at::Tensor& router_weight, const std::vector<at::Tensor>& wi,
                         const std::vector<at::Tensor>& wo) {
  const bool router_ok = router_weight.scalar_type() == at::kFloat && router_weight.device().is_cpu() &&
                         router_weight.dim() == 2 && router_weight.is_contiguous();
  return router_ok && x.dim() == 2 && !bf16_autocast_active() && grouped_f32::applies(x, wi, wo);
}

Top1SwitchOutput top1_switch(const at::Tensor& x_in, const at::Tensor& noise_in, const at::Tensor& router_weight,
                             const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo,
                             const Top1Routing& routing, double dropout) {
  const auto x = x_in.contiguous();
  const auto noise = noise_in.defined() ? noise_in.contiguous() : noise_in;
  bool needs_grad = x.requires_grad() || router_weight.requires_grad();
  for (size_t e = 0; e < wi.size(); ++e) needs_grad = needs_grad || wi[e].requires_grad() || wo[e].requires_grad();
  if (!torch::GradMode::is_enabled() || !needs_grad) {
    Routed r = route(x, noise, router_weight, routing);
    return {grouped_f32::forward(x, r.gate, r.groups, wi, wo, dropout).out, r.logits, r.expert, r.kept};
  }
  std::vector<at::Tensor> weights(wi);
  weights.insert(weights.end(), wo.begin(), wo.end());
  // Optional, not undefined: autograd records every tensor argument as an input with a device.
  const c10::optional<at::Tensor> noise_or = noise.defined() ? c10::optional<at::Tensor>(noise) : c10::nullopt;
  auto outs = Top1SwitchFunction::apply(x, router_weight, noise_or, at::TensorList(weights), routing, dropout);
  return {outs[0], outs[1], outs[2], outs[3]};
}

}  // namespace distill
