#include "models/kernels/attention_core.h"

#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <vector>

#include "models/kernels/batched_matmul.h"
#include "models/kernels/fast_dropout.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/row_kernels.h"
#include "models/kernels/sgemm.h"

namespace distill {
namespace {

using blas::Op;

// The products of one (batch, head) task: float32 sgemm, or, under bf16 products, both operands
// rounded to bf16 (into this task's scratch) and multiplied with float32 accumulation; scores,
// softmax, dropout and every result stay float32.
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

struct Shape {
  int64_t B, H, T, S, Dk;
  // Where bf16 products pay for a head: oneDNN's bf16 gemm costs tens of microseconds per call
  // beyond its arithmetic, so small heads lose (d256's T, S <= 128, Dk 64: the student step 1.31x
  // slower in bf16) and large ones win (base8's encoder, 512 x 512 x 64: the step 0.90x).
  bool bf16_pays() const { return T * S * Dk >= (int64_t{1} << 22); }
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
                         uint64_t seed, double dropout, bool bf16, at::Tensor& probs) {
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
    HeadProducts mm(bf16 && s.bf16_pays());
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      float* p = pp + n * T * S;  // [T, S]
      mm(Op::N, Op::T, T, S, Dk, q.at(b, h), q.ld, k.at(b, h), k.ld, p, S);  // scores [T, S]
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

struct Grads {
  at::Tensor q, k, v;  // [B, H, T or S, Dk] (transposed views of [B, T or S, H, Dk] buffers)
  at::Tensor scores;   // [B, H, T, S] when the bias needs its gradient
};

Grads backward_sgemm(const at::Tensor& grad_in, const Heads& q, const Heads& k, const Heads& v, const at::Tensor& probs,
                     const Shape& s, uint64_t seed, double dropout, bool bf16, bool want_scores) {
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
      mm(Op::T, Op::N, S, Dk, T, used, S, gctx, I, pgv + b * S * I + h * Dk, I);  // [S, Dk]
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
      mm(Op::N, Op::N, T, Dk, S, ds, S, k.at(b, h), k.ld, pgq + b * T * I + h * Dk, I);  // dQ [T, Dk]
      mm(Op::T, Op::N, S, Dk, T, ds, S, q.at(b, h), q.ld, pgk + b * S * I + h * Dk, I);  // dK [S, Dk]
    }
  });
  out.q = gq.transpose(1, 2);
  out.k = gk.transpose(1, 2);
  out.v = gv.transpose(1, 2);
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
    const bool bf16 = bf16_products_active();  // backward multiplies as forward did
    auto out = forward_sgemm(hq, hk, hv, bias, s, seed, dropout, bf16, probs);
    ctx->save_for_backward({q, k, v, probs});
    ctx->saved_data["seed"] = seed_to_int(seed);
    ctx->saved_data["bf16"] = bf16;
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
                            ctx->saved_data["dropout"].toDouble(), ctx->saved_data["bf16"].toBool(), want_bias);
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
                       dropout, bf16_products_active(), probs);
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
