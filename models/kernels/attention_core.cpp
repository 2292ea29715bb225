#include "models/kernels/attention_core.h"

#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstring>
#include <vector>

#include "models/kernels/batched_matmul.h"
#include "models/kernels/fast_dropout.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/row_kernels.h"
#include "models/kernels/sgemm.h"

namespace distill {
namespace {

using blas::Op;

// A [B, H, L, Dk] float32 view with unit last stride: where head (b, h) starts and its row stride.
struct Heads {
  float* data;
  int64_t sb, sh, ld;
  float* at(int64_t b, int64_t h) const { return data + b * sb + h * sh; }
};

Heads heads_of(at::Tensor& t) {
  if (t.stride(3) != 1) t = t.contiguous();
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

struct Shape {
  int64_t B, H, T, S, Dk;
};

// The bias as a [B, H, T, S] view with unit last stride; broadcast dimensions get stride 0.
at::Tensor bias_view(const at::Tensor& bias, const Shape& s) {
  if (!bias.defined()) return {};
  auto b = bias.size(-1) > 1 && bias.stride(-1) != 1 ? bias.contiguous() : bias;
  return b.expand({s.B, s.H, s.T, s.S});
}

// Forward of the float32 path. probs [B, H, T, S] receives the softmax before dropout (saved for
// backward); the result is the context [B, T, H*Dk].
at::Tensor forward_sgemm(const Heads& q, const Heads& k, const Heads& v, const at::Tensor& bias, const Shape& s,
                         uint64_t seed, double dropout, at::Tensor& probs) {
  const auto [B, H, T, S, Dk] = s;
  const int64_t I = H * Dk;
  probs = at::empty({B, H, T, S}, at::kFloat);
  auto ctx = at::empty({B, T, I}, at::kFloat);  // [B, T, H*Dk]
  float *pp = probs.data_ptr<float>(), *pc = ctx.data_ptr<float>();
  // Bias as [B, H, T, S] strides; broadcast dimensions have stride 0.
  const float* pbias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const int64_t bb = pbias ? bias.stride(0) : 0, bh = pbias ? bias.stride(1) : 0, bt = pbias ? bias.stride(2) : 0;
  const uint32_t threshold = dropout_threshold(dropout);
  const float scale_kept = dropout_scale(dropout);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dropped(dropout > 0 ? static_cast<size_t>(T * S) : 0), mask(dropped.size());
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      float* p = pp + n * T * S;  // [T, S]
      blas::sgemm(Op::N, Op::T, T, S, Dk, 1.0f, q.at(b, h), q.ld, k.at(b, h), k.ld, 0.0f, p, S);  // scores [T, S]
      for (int64_t t = 0; t < T; ++t) {
        float* row = p + t * S;
        const float mx = rows::add_bias_max(row, pbias ? pbias + b * bb + h * bh + t * bt : nullptr, S);
        rows::add_scalar(row, -mx, S);
      }
      // ATen's vectorised exp (serial inside this parallel region).
      at::from_blob(p, {T * S}, at::kFloat).exp_();
      for (int64_t t = 0; t < T; ++t) rows::scale(p + t * S, 1.0f / rows::sum(p + t * S, S), S);
      const float* used = p;
      if (dropout > 0) {
        // Element index in [B, H, T, S], as dropout_mask numbers them.
        rows::dropout_scales(mask.data(), seed, n * T * S, threshold, scale_kept, T * S);
        rows::multiply(dropped.data(), p, mask.data(), T * S);
        used = dropped.data();
      }
      blas::sgemm(Op::N, Op::N, T, Dk, S, 1.0f, used, S, v.at(b, h), v.ld, 0.0f, pc + b * T * I + h * Dk,
                  I);  // [T, Dk]
    }
  });
  return ctx;
}

struct Grads {
  at::Tensor q, k, v;  // [B, H, T or S, Dk] (transposed views of [B, T or S, H, Dk] buffers)
  at::Tensor scores;   // [B, H, T, S] when the bias needs its gradient
};

Grads backward_sgemm(const at::Tensor& grad_in, const Heads& q, const Heads& k, const Heads& v, const at::Tensor& probs,
                     const Shape& s, uint64_t seed, double dropout, bool want_scores) {
  const auto [B, H, T, S, Dk] = s;
  const int64_t I = H * Dk;
  const auto grad = grad_in.contiguous();  // [B, T, H*Dk]
  auto gq = at::empty({B, T, H, Dk}, at::kFloat), gk = at::empty({B, S, H, Dk}, at::kFloat), gv = at::empty({B, S, H, Dk}, at::kFloat);
  Grads out;
  if (want_scores) out.scores = at::empty({B, H, T, S}, at::kFloat);
  const float *pg = grad.data_ptr<float>(), *pp = probs.data_ptr<float>();
  float *pgq = gq.data_ptr<float>(), *pgk = gk.data_ptr<float>(), *pgv = gv.data_ptr<float>();
  float* pgs = want_scores ? out.scores.data_ptr<float>() : nullptr;
  const uint32_t threshold = dropout_threshold(dropout);
  const float scale_kept = dropout_scale(dropout);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(static_cast<size_t>(T * S)), local(pgs ? 0 : static_cast<size_t>(T * S));
    std::vector<float> mask(dropout > 0 ? static_cast<size_t>(T * S) : 0);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H, base = n * T * S;
      const float* p = pp + base;                   // [T, S] softmax
      const float* gctx = pg + b * T * I + h * Dk;  // [T, Dk], row stride I
      float* w = work.data();
      // dV = dropout(P)^T dctx
      const float* used = p;
      if (dropout > 0) {
        rows::dropout_scales(mask.data(), seed, base, threshold, scale_kept, T * S);
        rows::multiply(w, p, mask.data(), T * S);
        used = w;
      }
      blas::sgemm(Op::T, Op::N, S, Dk, T, 1.0f, used, S, gctx, I, 0.0f, pgv + b * S * I + h * Dk, I);  // [S, Dk]
      // dP = dctx V^T, back through dropout.
      blas::sgemm(Op::N, Op::T, T, S, Dk, 1.0f, gctx, I, v.at(b, h), v.ld, 0.0f, w, S);  // [T, S]
      if (dropout > 0) rows::multiply(w, w, mask.data(), T * S);
      // Softmax backward: dscores = P * (dP - rowsum(dP * P)).
      float* ds = pgs ? pgs + base : local.data();
      for (int64_t t = 0; t < T; ++t) {
        const float* pr = p + t * S;
        const float* wr = w + t * S;
        rows::softmax_backward(ds + t * S, pr, wr, rows::dot(wr, pr, S), S);
      }
      blas::sgemm(Op::N, Op::N, T, Dk, S, 1.0f, ds, S, k.at(b, h), k.ld, 0.0f, pgq + b * T * I + h * Dk,
                  I);  // dQ [T, Dk]
      blas::sgemm(Op::T, Op::N, S, Dk, T, 1.0f, ds, S, q.at(b, h), q.ld, 0.0f, pgk + b * S * I + h * Dk,
                  I);  // dK [S, Dk]
    }
  });
  out.q = gq.transpose(1, 2);
  out.k = gk.transpose(1, 2);
  out.v = gv.transpose(1, 2);
  return out;
}

int64_t seed_as_int(uint64_t seed) {
  int64_t out;
  std::memcpy(&out, &seed, sizeof out);
  return out;
}

uint64_t seed_from_int(int64_t v) {
  uint64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

struct AttentionCoreFunction : public torch::autograd::Function<AttentionCoreFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& v_in, const at::Tensor& bias_in, double dropout) {
    at::Tensor q = q_in, k = k_in, v = v_in;
    const Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
    const auto bias = bias_view(bias_in, s);
    const Heads hq = heads_of(q), hk = heads_of(k), hv = heads_of(v);
    const uint64_t seed = dropout > 0 ? dropout_seed() : 0;
    at::Tensor probs;
    auto out = forward_sgemm(hq, hk, hv, bias, s, seed, dropout, probs);
    ctx->save_for_backward({q, k, v, probs});
    ctx->saved_data["seed"] = seed_as_int(seed);
    ctx->saved_data["dropout"] = dropout;
    ctx->saved_data["bias_sizes"] = bias_in.defined() ? c10::IValue(bias_in.sizes().vec()) : c10::IValue();
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor q = saved[0], k = saved[1], v = saved[2];
    const auto& probs = saved[3];
    const Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
    const Heads hq = heads_of(q), hk = heads_of(k), hv = heads_of(v);
    const bool want_bias = ctx->needs_input_grad(3);
    auto g = backward_sgemm(grads[0], hq, hk, hv, probs, s, seed_from_int(ctx->saved_data["seed"].toInt()),
                            ctx->saved_data["dropout"].toDouble(), want_bias);
    at::Tensor gbias;
    if (want_bias) gbias = at::sum_to(g.scores, ctx->saved_data["bias_sizes"].toIntVector());
    return {g.q, g.k, g.v, gbias, at::Tensor()};
  }
};

bool fast_path(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias) {
  auto ok = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat && t.device().is_cpu(); };
  return ok(q) && ok(k) && ok(v) && (!bias.defined() || ok(bias)) && q.dim() == 4;
}

}  // namespace

at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                          double dropout) {
  if (!fast_path(q, k, v, bias)) return attention_core_reference(q, k, v, bias, dropout);
  if (torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                                        (bias.defined() && bias.requires_grad()))) {
    return AttentionCoreFunction::apply(q, k, v, bias, dropout);
  }
  at::Tensor qq = q, kk = k, vv = v, probs;
  const Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  return forward_sgemm(heads_of(qq), heads_of(kk), heads_of(vv), bias_view(bias, s), s, dropout > 0 ? dropout_seed() : 0,
                       dropout, probs);
}

at::Tensor attention_core_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                                    double dropout) {
  const auto B = q.size(0), H = q.size(1), T = q.size(2), Dk = q.size(3);
  auto scores = batched_matmul(q, k.transpose(2, 3));  // [B, H, T, S]
  if (bias.defined()) scores = scores + bias;
  auto probs = torch::softmax(scores.to(torch::kFloat32), -1).to(scores.scalar_type());
  if (dropout > 0) probs = probs * dropout_mask(probs, dropout);
  auto ctx = batched_matmul(probs, v);                  // [B, H, T, Dk]
  return ctx.transpose(1, 2).reshape({B, T, H * Dk});   // [B, T, H*Dk]
}

}  // namespace distill
