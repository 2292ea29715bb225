#include "models/kernels/switch_top1.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "models/errors.h"
#include "models/kernels/grouped_ffn.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/row_kernels.h"
#include "models/kernels/sgemm.h"

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
  at::Tensor slot;      // [N] int64: the token's assignment in groups, -1 if dropped
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
  const bool* active = routing.active.defined() ? routing.active.data_ptr<bool>() : nullptr;
  const auto by_expert = route_pass(p, routing.batch, routing.seq_len, E, 1, routing.mode, routing.capacity, ex,
                                    r.kept.data_ptr<bool>(), active);
  int64_t M = 0;
  for (const auto& list : by_expert) {
    r.groups.counts.push_back(static_cast<int64_t>(list.size()));
    M += static_cast<int64_t>(list.size());
  }
  r.groups.token = at::empty({M}, r.expert.options());
  r.gate = at::empty({M}, x.options());
  r.slot = at::full({N}, -1, r.expert.options());
  int64_t *tok = r.groups.token.data_ptr<int64_t>(), *slot = r.slot.data_ptr<int64_t>();
  float* g = r.gate.data_ptr<float>();
  int64_t a = 0;
  for (const auto& list : by_expert) {
    for (int64_t t : list) {
      tok[a] = t;
      g[a] = p[t * E + ex[t]];
      slot[t] = a++;
    }
  }
  return r;
}

// Route, run the experts, and write each token's row once: its expert's output times the gate,
// or zero if it was dropped (a token has at most one assignment).
struct Ran {
  Routed r;
  grouped_cpu::Forward f;  // f.out [N, D]
};

Ran run_forward(const at::Tensor& x, const at::Tensor& noise, const at::Tensor& w, const std::vector<at::Tensor>& wi,
                const std::vector<at::Tensor>& wo, const Top1Routing& routing, double dropout, bool bf16) {
  Ran s;
  s.r = route(x, noise, w, routing);  // float32 always: the router's selective precision
  s.f = grouped_cpu::forward(x, s.r.groups, wi, wo, dropout, bf16);
  const int64_t N = x.size(0), D = x.size(1);
  s.f.out = at::empty({N, D}, x.options());
  float* out = s.f.out.data_ptr<float>();
  const float *y = s.f.y.data_ptr<float>(), *gate = s.r.gate.data_ptr<float>();
  const int64_t* slot = s.r.slot.data_ptr<int64_t>();
  at::parallel_for(0, N, 128, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t a = slot[t];
      if (a >= 0) {
        rows::scaled_copy(out + t * D, y + a * D, gate[a], D);
      } else {
        std::fill(out + t * D, out + (t + 1) * D, 0.0f);
      }
    }
  });
  return s;
}

// Raw pointers follow: shapes are checked once, here.
void check_shapes(const at::Tensor& x, const at::Tensor& noise, const at::Tensor& w, const std::vector<at::Tensor>& wi,
                  const std::vector<at::Tensor>& wo, const Top1Routing& routing) {
  auto shape = [](const at::Tensor& t) {
    std::string s = "[";
    for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + "]";
  };
  if (x.dim() != 2 || w.dim() != 2) {
    throw Error("top-1 Switch layer: expected x [N, D] and router weight [E, D], got " + shape(x) + " and " + shape(w));
  }
  const int64_t N = x.size(0), D = x.size(1), E = w.size(0);
  const int64_t F = wi.empty() ? 0 : wi[0].size(0);
  std::string bad;
  if (N != routing.batch * routing.seq_len) {
    bad = "x " + shape(x) + " for a batch of " + std::to_string(routing.batch) + " x " + std::to_string(routing.seq_len);
  }
  if (w.size(1) != D) bad = "router weight " + shape(w) + " for x " + shape(x);
  if (noise.defined() && !noise.sizes().equals(x.sizes())) bad = "noise " + shape(noise) + " for x " + shape(x);
  if (routing.active.defined() && (routing.active.dim() != 1 || routing.active.size(0) != N ||
                                   routing.active.scalar_type() != at::kBool || !routing.active.is_contiguous() ||
                                   !routing.active.device().is_cpu())) {
    bad = "active " + shape(routing.active) + " for x " + shape(x) + " (expected a contiguous CPU bool [N])";
  }
  if (static_cast<int64_t>(wi.size()) != E || static_cast<int64_t>(wo.size()) != E) {
    bad = "expert weights for " + std::to_string(E) + " experts";
  }
  for (size_t e = 0; e < wi.size() && e < wo.size() && bad.empty(); ++e) {
    const bool ok = wi[e].dim() == 2 && wo[e].dim() == 2 && wi[e].size(0) == F && wi[e].size(1) == D &&
                    wo[e].size(0) == D && wo[e].size(1) == F;
    if (!ok) bad = "expert " + std::to_string(e) + " weights " + shape(wi[e]) + ", " + shape(wo[e]);
  }
  if (!bad.empty()) throw Error("top-1 Switch layer: mismatched shapes: " + bad);
}

// The weights as the function's TensorList: E wi, then E wo.
std::vector<at::Tensor> first(at::TensorList weights, size_t n) { return {weights.begin(), weights.begin() + n}; }
std::vector<at::Tensor> last(at::TensorList weights, size_t n) { return {weights.end() - n, weights.end()}; }

struct Top1SwitchFunction : public torch::autograd::Function<Top1SwitchFunction> {
  // Outputs: out [N, D], logits [N, E], expert [N], kept [N]; the last two are not differentiable.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& router_weight, const c10::optional<at::Tensor>& noise_or,
                                                at::TensorList weights, Top1Routing routing, double dropout,
                                                bool bf16) {
    const at::Tensor noise = noise_or.value_or(at::Tensor());
    const size_t E = weights.size() / 2;
    auto s = run_forward(x, noise, router_weight, first(weights, E), last(weights, E), routing, dropout, bf16);
    const Routed& r = s.r;
    std::vector<at::Tensor> saved{r.xr,  r.probs, r.expert, r.slot,        r.gate, r.groups.token,
                                  s.f.xs, s.f.h,  s.f.y,    router_weight, noise,  s.f.hb};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["counts"] = c10::List<int64_t>(r.groups.counts);
    ctx->saved_data["dropout"] = dropout;
    ctx->mark_non_differentiable({r.expert, r.kept});
    return {s.f.out, r.logits, r.expert, r.kept};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &xr = saved[0], &probs = saved[1], &expert = saved[2], &slot = saved[3], &gate = saved[4];
    const auto &w = saved[9], &noise = saved[10];
    const ExpertGroups groups{saved[5], ctx->saved_data["counts"].toIntVector()};
    grouped_cpu::Forward f;
    f.xs = saved[6];
    f.h = saved[7];
    f.y = saved[8];
    f.hb = saved[11];
    const size_t E = groups.counts.size();
    const at::TensorList weights = at::TensorList(saved).slice(12);
    const double dropout = ctx->saved_data["dropout"].toDouble();
    const int64_t N = xr.size(0), D = xr.size(1), Ei = static_cast<int64_t>(E);

    auto b = grouped_cpu::backward(grads[0], f, gate, groups, first(weights, E), last(weights, E), dropout);

    // Per block of token rows, on the intra-op threads: the logits' gradient (the router losses',
    // plus the gate's through the softmax for a kept token), then the input gradient, the router's
    // (d logits W) * noise plus the expert's, then the block's share of the router weight's.
    const bool want_gx = ctx->needs_input_grad(0), want_gw = ctx->needs_input_grad(1);
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / 128));
    auto dlogits = at::empty({N, Ei}, probs.options());                                // [N, E]
    auto gx = want_gx ? at::empty({N, D}, xr.options()) : at::Tensor();                // [N, D]
    auto gw_parts = want_gw ? at::empty({blocks, Ei, D}, xr.options()) : at::Tensor();  // [blocks, E, D]
    const auto glogits = grads[1].defined() ? grads[1].contiguous() : at::Tensor();
    const float* pgl = glogits.defined() ? glogits.data_ptr<float>() : nullptr;
    const float *p = probs.data_ptr<float>(), *dg = b.ggate.data_ptr<float>(), *gxs = b.gxs.data_ptr<float>(),
                *pw = w.data_ptr<float>(), *pxr = xr.data_ptr<float>();
    const float* pn = noise.defined() ? noise.data_ptr<float>() : nullptr;
    const int64_t *ps = slot.data_ptr<int64_t>(), *ex = expert.data_ptr<int64_t>();
    float* dl = dlogits.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t lo = N * blk / blocks, hi = N * (blk + 1) / blocks, n = hi - lo;
        for (int64_t t = lo; t < hi; ++t) {
          float* dlt = dl + t * Ei;
          const float* pt = p + t * Ei;
          for (int64_t j = 0; j < Ei; ++j) dlt[j] = pgl ? pgl[t * Ei + j] : 0.0f;
          if (ps[t] >= 0) add_top1_gate_gradient(dlt, pt, dg[ps[t]], ex[t], Ei);
        }
        if (want_gx) {
          float* pgx = gx.data_ptr<float>();
          for (int64_t t = lo; t < hi; ++t) {
            rows::combine(pgx + t * D, ps[t] >= 0 ? gxs + ps[t] * D : nullptr, pn ? pn + t * D : nullptr, dl + t * Ei,
                          pw, Ei, D);  // [D]
          }
        }
        if (want_gw) {
          blas::sgemm(Op::T, Op::N, Ei, D, n, 1.0f, dl + lo * Ei, Ei, pxr + lo * D, D, 0.0f,
                      gw_parts.data_ptr<float>() + blk * Ei * D, D);  // [E, D]
        }
      }
    });
    // [E, D]: the blocks' shares added in a fixed order (ATen's sum took 8 us at this size).
    const auto gw = want_gw ? gw_parts[0] : at::Tensor();
    for (int64_t blk = 1; blk < blocks; ++blk) {
      rows::axpy(gw.data_ptr<float>(), gw_parts.data_ptr<float>() + blk * Ei * D, 1.0f, Ei * D);
    }
    torch::autograd::variable_list out{gx, gw, at::Tensor()};  // noise: none
    out.insert(out.end(), b.gwi.begin(), b.gwi.end());
    out.insert(out.end(), b.gwo.begin(), b.gwo.end());
    out.push_back(at::Tensor());  // routing
    out.push_back(at::Tensor());  // dropout
    out.push_back(at::Tensor());  // bf16
    return out;
  }
};

}  // namespace

bool top1_switch_applies(const at::Tensor& x, const at::Tensor& router_weight, const std::vector<at::Tensor>& wi,
                         const std::vector<at::Tensor>& wo) {
  const bool router_ok = router_weight.scalar_type() == at::kFloat && router_weight.device().is_cpu() &&
                         router_weight.dim() == 2 && router_weight.is_contiguous();
  return router_ok && x.dim() == 2 && grouped_cpu::applies(x, wi, wo);
}

Top1SwitchOutput top1_switch(const at::Tensor& x_in, const at::Tensor& noise_in, const at::Tensor& router_weight,
                             const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo,
                             const Top1Routing& routing, double dropout) {
  const auto x = x_in.contiguous();
  const auto noise = noise_in.defined() ? noise_in.contiguous() : noise_in;
  check_shapes(x, noise, router_weight, wi, wo, routing);
  bool needs_grad = x.requires_grad() || router_weight.requires_grad();
  for (size_t e = 0; e < wi.size(); ++e) needs_grad = needs_grad || wi[e].requires_grad() || wo[e].requires_grad();
  const bool bf16 = bf16_products_active();
  if (!torch::GradMode::is_enabled() || !needs_grad) {
    auto s = run_forward(x, noise, router_weight, wi, wo, routing, dropout, bf16);
    return {s.f.out, s.r.logits, s.r.expert, s.r.kept};
  }
  std::vector<at::Tensor> weights(wi);
  weights.insert(weights.end(), wo.begin(), wo.end());
  // Optional, not undefined: autograd records every tensor argument as an input with a device.
  const c10::optional<at::Tensor> noise_or = noise.defined() ? c10::optional<at::Tensor>(noise) : c10::nullopt;
  auto outs = Top1SwitchFunction::apply(x, router_weight, noise_or, at::TensorList(weights), routing, dropout, bf16);
  return {outs[0], outs[1], outs[2], outs[3]};
}

}  // namespace distill
