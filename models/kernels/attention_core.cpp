#include "models/kernels/attention_core.h"

#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

#include "models/errors.h"
#include "models/kernels/batched_matmul.h"
#include "models/kernels/fast_dropout.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/row_kernels.h"
#include "models/kernels/sgemm.h"

namespace distill {
namespace {

using blas::Op;

// The products of one (batch, head) task: float32 sgemm, or, under bf16 products, both operands
// rounded to bf16 (into this task's scratch) and multiplied with float32 accumulation; softmax,
// dropout and every result stay float32.
class HeadProducts {
 public:
  explicit HeadProducts(bool bf16) : bf16_(bf16) {}
  // C [m, n] = op(A) op(B): A stored [m, k] (Op::N) or [k, m] (Op::T) with row stride lda, B likewise.
  void operator()(Op oa, Op ob, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                  float* c, int64_t ldc) {
    if (!bf16_) {
      blas::sgemm(oa, ob, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
      return;
    }
    const int64_t ac = oa == Op::N ? k : m, bc = ob == Op::N ? n : k;
    const uint16_t* a16 = rounded(a_, a, oa == Op::N ? m : k, ac, lda);
    const uint16_t* b16 = rounded(b_, b, ob == Op::N ? k : n, bc, ldb);
    blas::gemm_bf16(oa, ob, m, n, k, 1.0f, a16, ac, b16, bc, 0.0f, c, ldc);
  }

 private:
  static const uint16_t* rounded(std::vector<uint16_t>& buf, const float* src, int64_t rows, int64_t cols, int64_t ld) {
    buf.resize(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) rows::to_bf16(buf.data() + r * cols, src + r * ld, cols);
    return buf.data();
  }
  bool bf16_;
  std::vector<uint16_t> a_, b_;
};

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

// The heads held in columns [offset, offset + H * Dk) of a contiguous [B, L, W] projection output.
Heads packed_heads(const at::Tensor& t, int64_t offset, int64_t Dk) {
  return {t.data_ptr<float>() + offset, t.size(1) * t.size(2), Dk, t.size(2)};
}

struct Shape {
  int64_t B, H, T, S, Dk;
  // Where bf16 products pay for a head: oneDNN's bf16 gemm costs tens of microseconds per call
  // beyond its arithmetic, so small heads lose (d256's T, S <= 128, Dk 64: the student step 1.31x
  // slower in bf16) and large ones win (base8's encoder, 512 x 512 x 64: the step 0.90x).
  bool bf16_pays() const { return T * S * Dk >= (int64_t{1} << 22); }
};

// The bias as a [B, H, T, S] view with unit last stride (the kernels read its rows); other
// broadcast dimensions get stride 0.
at::Tensor bias_view(const at::Tensor& bias, const Shape& s) {
  if (!bias.defined()) return {};
  auto b = bias;
  if (b.size(-1) != s.S) {  // broadcast over the keys: rows made real
    auto sizes = b.sizes().vec();
    sizes.back() = s.S;
    b = b.expand(sizes);
  }
  if (b.stride(-1) != 1) b = b.contiguous();
  return b.expand({s.B, s.H, s.T, s.S});
}

// Autograd takes no undefined inputs: no bias is a zero one, [1, 1, 1, S].
at::Tensor bias_or_zeros(const at::Tensor& bias, int64_t S) {
  return bias.defined() ? bias : at::zeros({1, 1, 1, S}, at::kFloat);
}

// Forward of the float32 path. probs [B, H, T, S] receives the softmax before dropout (saved for
// backward); the result is the context [B, T, H*Dk]. exact_scores: q k^T from float32 operands
// under bf16 too, where a gradient will flow through the softmax (projection.h says why).
at::Tensor forward_sgemm(const Heads& q, const Heads& k, const Heads& v, const at::Tensor& bias, const Shape& s,
                         uint64_t seed, double dropout, bool bf16, bool exact_scores, at::Tensor& probs) {
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
    std::vector<float> dropped(dropout > 0 ? static_cast<size_t>(T * S) : 0);
    HeadProducts mm(bf16 && s.bf16_pays()), scores_mm(bf16 && s.bf16_pays() && !exact_scores);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      float* p = pp + n * T * S;  // [T, S]
      scores_mm(Op::N, Op::T, T, S, Dk, q.at(b, h), q.ld, k.at(b, h), k.ld, p, S);  // scores [T, S]
      for (int64_t t = 0; t < T; ++t) {  // softmax of the row in three passes
        float* row = p + t * S;
        const float mx = rows::add_bias_max(row, pbias ? pbias + b * bb + h * bh + t * bt : nullptr, S);
        rows::scale(row, 1.0f / rows::exp_sum(row, mx, S), S);
      }
      const float* used = p;
      if (dropout > 0) {
        // Element index in [B, H, T, S], as dropout_mask numbers them.
        rows::dropout_add(dropped.data(), nullptr, p, seed, n * T * S, threshold, scale_kept, T * S);
        used = dropped.data();
      }
      mm(Op::N, Op::N, T, Dk, S, used, S, v.at(b, h), v.ld, pc + b * T * I + h * Dk, I);  // [T, Dk]
    }
  });
  return ctx;
}

// The forward alone (no autograd): its own dropout seed, the probabilities not kept.
at::Tensor forward_only(const Heads& q, const Heads& k, const Heads& v, const at::Tensor& bias, const Shape& s,
                        double dropout) {
  at::Tensor probs;
  return forward_sgemm(q, k, v, bias_view(bias, s), s, dropout > 0 ? dropout_seed() : 0, dropout, bf16_products_active(),
                       /*exact_scores=*/false, probs);
}

// Backward of the float32 path: the heads' gradients go to gq, gk and gv (every element written),
// the scores' gradient to scores [B, H, T, S] when it is not null (the bias needs it).
void backward_sgemm(const at::Tensor& grad_in, const Heads& q, const Heads& k, const Heads& v, const at::Tensor& probs,
                    const Shape& s, uint64_t seed, double dropout, bool bf16, const Heads& gq, const Heads& gk,
                    const Heads& gv, float* pgs) {
  const auto [B, H, T, S, Dk] = s;
  const int64_t I = H * Dk;
  const auto grad = grad_in.contiguous();  // [B, T, H*Dk]
  const float *pg = grad.data_ptr<float>(), *pp = probs.data_ptr<float>();
  const uint32_t threshold = dropout_threshold(dropout);
  const float scale_kept = dropout_scale(dropout);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(static_cast<size_t>(T * S)), local(pgs ? 0 : static_cast<size_t>(T * S));
    std::vector<float> mask(dropout > 0 ? static_cast<size_t>(T * S) : 0);
    HeadProducts mm(bf16 && s.bf16_pays());
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
      mm(Op::T, Op::N, S, Dk, T, used, S, gctx, I, gv.at(b, h), gv.ld);  // [S, Dk]
      // dP = dctx V^T, back through dropout.
      mm(Op::N, Op::T, T, S, Dk, gctx, I, v.at(b, h), v.ld, w, S);  // [T, S]
      if (dropout > 0) rows::multiply(w, w, mask.data(), T * S);
      // Softmax backward: dscores = P * (dP - rowsum(dP * P)).
      float* ds = pgs ? pgs + base : local.data();
      for (int64_t t = 0; t < T; ++t) {
        const float* pr = p + t * S;
        const float* wr = w + t * S;
        rows::softmax_backward(ds + t * S, pr, wr, rows::dot(wr, pr, S), S);
      }
      mm(Op::N, Op::N, T, Dk, S, ds, S, k.at(b, h), k.ld, gq.at(b, h), gq.ld);  // dQ [T, Dk]
      mm(Op::T, Op::N, S, Dk, T, ds, S, q.at(b, h), q.ld, gk.at(b, h), gk.ld);  // dK [S, Dk]
    }
  });
}

// What forward keeps beside the saved tensors, and backward's use of it: the dropout seed, whether
// the products ran in bf16, the bias's shape for its gradient.
uint64_t save_settings(torch::autograd::AutogradContext* ctx, const at::Tensor& bias_in, double dropout, bool bf16) {
  const uint64_t seed = dropout > 0 ? dropout_seed() : 0;
  ctx->saved_data["seed"] = seed_to_int(seed);
  ctx->saved_data["bf16"] = bf16;
  ctx->saved_data["dropout"] = dropout;
  ctx->saved_data["bias_sizes"] = bias_in.defined() ? c10::IValue(bias_in.sizes().vec()) : c10::IValue();
  return seed;
}

// Runs backward_sgemm with the saved settings; returns the bias's gradient when it needs one.
at::Tensor run_backward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad, const Heads& q, const Heads& k,
                        const Heads& v, const at::Tensor& probs, const Shape& s, const Heads& gq, const Heads& gk,
                        const Heads& gv, bool want_bias) {
  at::Tensor scores = want_bias ? at::empty({s.B, s.H, s.T, s.S}, at::kFloat) : at::Tensor();  // [B, H, T, S]
  backward_sgemm(grad, q, k, v, probs, s, seed_from_int(ctx->saved_data["seed"].toInt()),
                 ctx->saved_data["dropout"].toDouble(), ctx->saved_data["bf16"].toBool(), gq, gk, gv,
                 want_bias ? scores.data_ptr<float>() : nullptr);
  return want_bias ? at::sum_to(scores, ctx->saved_data["bias_sizes"].toIntVector()) : at::Tensor();
}

struct AttentionCoreFunction : public torch::autograd::Function<AttentionCoreFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& v_in, const at::Tensor& bias_in, double dropout) {
    at::Tensor q = q_in, k = k_in, v = v_in;
    const Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
    const Heads hq = heads_of(q), hk = heads_of(k), hv = heads_of(v);
    const bool bf16 = bf16_products_active();  // backward multiplies as forward did
    const uint64_t seed = save_settings(ctx, bias_in, dropout, bf16);
    at::Tensor probs;
    auto out = forward_sgemm(hq, hk, hv, bias_view(bias_in, s), s, seed, dropout, bf16, /*exact_scores=*/true, probs);
    ctx->save_for_backward({q, k, v, probs});
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor q = saved[0], k = saved[1], v = saved[2];
    const Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
    // Gradients in [B, L, H, Dk] buffers, handed back as [B, H, L, Dk] views.
    auto gq = at::empty({s.B, s.T, s.H, s.Dk}, at::kFloat), gk = at::empty({s.B, s.S, s.H, s.Dk}, at::kFloat),
         gv = at::empty({s.B, s.S, s.H, s.Dk}, at::kFloat);
    const auto heads = [](at::Tensor& t) { return Heads{t.data_ptr<float>(), t.stride(0), t.stride(2), t.stride(1)}; };
    auto gbias = run_backward(ctx, grads[0], heads_of(q), heads_of(k), heads_of(v), saved[3], s, heads(gq), heads(gk),
                              heads(gv), ctx->needs_input_grad(3));
    return {gq.transpose(1, 2), gk.transpose(1, 2), gv.transpose(1, 2), gbias, at::Tensor()};
  }
};

// Attention on the projections as they come out of their products: self-attention reads q, k and v
// from one [B, T, 3I] tensor, cross-attention q from [B, T, I] and k, v from [B, S, 2I]. The
// gradients come back in the same layout, so the projections' backward takes them as they are (no
// split, no concatenation). Autograd takes no undefined inputs: self-attention passes its source
// twice and gets its whole gradient through the first.
struct PackedAttentionFunction : public torch::autograd::Function<PackedAttentionFunction> {
  static Shape shape_of(const at::Tensor& src_q, const at::Tensor& src_kv, int64_t heads, bool self) {
    const int64_t I = self ? src_q.size(2) / 3 : src_q.size(2);
    return {src_q.size(0), heads, src_q.size(1), src_kv.size(1), I / heads};
  }
  // q, k, v heads of (src_q, src_kv) in that layout
  static std::array<Heads, 3> heads_in(const at::Tensor& src_q, const at::Tensor& src_kv, const Shape& s, bool self) {
    const int64_t I = s.H * s.Dk;
    if (self) return {packed_heads(src_q, 0, s.Dk), packed_heads(src_q, I, s.Dk), packed_heads(src_q, 2 * I, s.Dk)};
    return {packed_heads(src_q, 0, s.Dk), packed_heads(src_kv, 0, s.Dk), packed_heads(src_kv, I, s.Dk)};
  }

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& src_q, const at::Tensor& src_kv,
                            const at::Tensor& bias_in, int64_t heads, bool self, double dropout) {
    const Shape s = shape_of(src_q, src_kv, heads, self);
    const auto h = heads_in(src_q, src_kv, s, self);
    const bool bf16 = bf16_products_active();
    const uint64_t seed = save_settings(ctx, bias_in, dropout, bf16);
    at::Tensor probs;
    auto out = forward_sgemm(h[0], h[1], h[2], bias_view(bias_in, s), s, seed, dropout, bf16, /*exact_scores=*/true, probs);
    ctx->save_for_backward({src_q, self ? at::Tensor() : src_kv, probs});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["self"] = self;
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const bool self = ctx->saved_data["self"].toBool();
    const at::Tensor& src_q = saved[0];
    const at::Tensor& src_kv = self ? src_q : saved[1];
    const Shape s = shape_of(src_q, src_kv, ctx->saved_data["heads"].toInt(), self);
    auto g_q = at::empty_like(src_q), g_kv = self ? at::Tensor() : at::empty_like(src_kv);
    const auto h = heads_in(src_q, src_kv, s, self), g = heads_in(g_q, g_kv, s, self);
    auto gbias = run_backward(ctx, grads[0], h[0], h[1], h[2], saved[2], s, g[0], g[1], g[2], ctx->needs_input_grad(2));
    return {g_q, g_kv, gbias, at::Tensor(), at::Tensor(), at::Tensor()};
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
    return AttentionCoreFunction::apply(q, k, v, bias_or_zeros(bias, k.size(2)), dropout);
  }
  at::Tensor qq = q, kk = k, vv = v;
  const Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  return forward_only(heads_of(qq), heads_of(kk), heads_of(vv), bias, s, dropout);
}

namespace {

// The packed entry points: the sources' layout checked, then the fused node, its forward alone, or
// (other dtypes, devices or layouts) the heads as views through attention_core.
at::Tensor packed_attention(const at::Tensor& src_q, const at::Tensor& src_kv, int64_t heads, const at::Tensor& bias,
                            double dropout) {
  const bool self = !src_kv.defined();
  const int64_t parts = self ? 3 : 1;
  if (heads <= 0 || src_q.dim() != 3 || src_q.size(2) % (parts * heads) != 0 ||
      (!self && (src_kv.dim() != 3 || src_kv.size(0) != src_q.size(0) || src_kv.size(2) != 2 * src_q.size(2)))) {
    throw Error("attention core: expected " +
                std::string(self ? "qkv [B, T, 3 * H * Dk]" : "q [B, T, H * Dk] and kv [B, S, 2 * H * Dk]") + " with H = " +
                std::to_string(heads) + ", got " + c10::str(src_q.sizes()) + (self ? "" : " and " + c10::str(src_kv.sizes())));
  }
  const int64_t I = src_q.size(2) / parts;
  const auto fits = [](const at::Tensor& t) { return !t.defined() || (t.scalar_type() == at::kFloat && t.device().is_cpu()); };
  if (fits(src_q) && fits(src_kv) && fits(bias) && src_q.is_contiguous() && (self || src_kv.is_contiguous())) {
    const bool grad = torch::GradMode::is_enabled() &&
                      (src_q.requires_grad() || (!self && src_kv.requires_grad()) || (bias.defined() && bias.requires_grad()));
    const auto& kv = self ? src_q : src_kv;
    if (grad) return PackedAttentionFunction::apply(src_q, kv, bias_or_zeros(bias, kv.size(1)), heads, self, dropout);
    const Shape s = PackedAttentionFunction::shape_of(src_q, kv, heads, self);
    const auto h = PackedAttentionFunction::heads_in(src_q, kv, s, self);
    return forward_only(h[0], h[1], h[2], bias, s, dropout);
  }
  const auto as_heads = [&](const at::Tensor& t) { return t.reshape({t.size(0), t.size(1), heads, I / heads}).transpose(1, 2); };
  const auto kv = (self ? src_q.narrow(2, I, 2 * I) : src_kv).split(I, -1);
  return attention_core(as_heads(src_q.narrow(2, 0, I)), as_heads(kv[0]), as_heads(kv[1]), bias, dropout);
}

}  // namespace

at::Tensor self_attention_core(const at::Tensor& qkv, int64_t heads, const at::Tensor& bias, double dropout) {
  return packed_attention(qkv, {}, heads, bias, dropout);
}

at::Tensor cross_attention_core(const at::Tensor& q, const at::Tensor& kv, int64_t heads, const at::Tensor& bias,
                                double dropout) {
  if (!kv.defined()) throw Error("cross attention core: kv is undefined");
  return packed_attention(q, kv, heads, bias, dropout);
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
