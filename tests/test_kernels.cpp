// The hand-written kernels against LibTorch's own: sgemm, row kernels, projections, batched
// matmul, attention and dropout.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "models/errors.h"
#include "models/kernels/attention_core.h"
#include "models/kernels/batched_matmul.h"
#include "models/kernels/embedding.h"
#include "models/kernels/fast_dropout.h"
#include "models/kernels/projection.h"
#include "models/kernels/rms_norm.h"
#include "models/kernels/row_kernels.h"
#include "models/kernels/sgemm.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using test::tensors_close;

// Row-major C = alpha op(A) op(B) + beta C for every transpose pair, with padded leading dimensions,
// against a double-precision product; an empty inner dimension leaves beta C.
TEST(Sgemm, EveryTransposeWithPaddedRowsAndBeta) {
  torch::manual_seed(0);
  const int64_t m = 5, n = 7, k = 3, pad = 2;
  for (auto op_a : {blas::Op::N, blas::Op::T}) {
    for (auto op_b : {blas::Op::N, blas::Op::T}) {
      const bool ta = op_a == blas::Op::T, tb = op_b == blas::Op::T;
      auto a_store = torch::randn({ta ? k : m, (ta ? m : k) + pad}), b_store = torch::randn({tb ? n : k, (tb ? k : n) + pad});
      auto a = a_store.narrow(1, 0, ta ? m : k), b = b_store.narrow(1, 0, tb ? k : n);
      auto c = torch::randn({m, n + pad});
      auto want = 0.5 * c.narrow(1, 0, n).to(torch::kDouble) +
                  2.0 * torch::mm((ta ? a.t() : a).to(torch::kDouble), (tb ? b.t() : b).to(torch::kDouble));
      blas::sgemm(op_a, op_b, m, n, k, 2.0f, a_store.data_ptr<float>(), a_store.size(1), b_store.data_ptr<float>(),
                  b_store.size(1), 0.5f, c.data_ptr<float>(), c.size(1));
      EXPECT_TRUE(tensors_close(c.narrow(1, 0, n), want.to(torch::kFloat), 1e-6)) << ta << tb;
    }
  }
  auto c = torch::ones({2, 3});
  blas::sgemm(blas::Op::N, blas::Op::N, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.5f, c.data_ptr<float>(), 3);
  EXPECT_TRUE(torch::equal(c, torch::full({2, 3}, 0.5f)));
  EXPECT_TRUE(blas::sgemm_library() == "oneDNN" || blas::sgemm_library() == "OpenBLAS");
}

// base + s * (c W) over blocks of 64 columns and a tail, with and without base and s.
TEST(RowKernels, CombineMatchesAProduct) {
  torch::manual_seed(1);
  const int64_t k = 5, n = 130;
  auto c = torch::randn({k}), w = torch::randn({k, n}), base = torch::randn({n}), s = torch::rand({n});
  for (bool with_base : {false, true}) {
    for (bool with_s : {false, true}) {
      auto want = torch::mv(w.t().to(torch::kDouble), c.to(torch::kDouble));
      if (with_s) want = want * s.to(torch::kDouble);
      if (with_base) want = want + base.to(torch::kDouble);
      auto got = torch::empty({n});
      rows::combine(got.data_ptr<float>(), with_base ? base.data_ptr<float>() : nullptr,
                    with_s ? s.data_ptr<float>() : nullptr, c.data_ptr<float>(), w.data_ptr<float>(), k, n);
      EXPECT_TRUE(tensors_close(got, want.to(torch::kFloat), 1e-6)) << with_base << with_s;
    }
  }
}

// The softmax's exp: within 2 ulp of expf where a softmax uses it, 0 far below, NaN kept; the sum
// returned is the row's.
TEST(RowKernels, ExpSumIsWithinTwoUlpOfExpf) {
  std::vector<float> x;
  for (int i = 0; i <= 20000; ++i) x.push_back(-87.0f + 88.0f * static_cast<float>(i) / 20000.0f);  // [-87, 1]
  for (float v : {60.0f, 87.9f, -87.3f}) x.push_back(v);
  std::vector<float> y = x;
  const float shift = 0.0f;
  const float sum = rows::exp_sum(y.data(), shift, static_cast<int64_t>(y.size()));
  double expected_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float e = std::exp(x[i]);
    expected_sum += e;
    EXPECT_LE(std::abs(y[i] - e), 2 * std::abs(std::nextafter(e, INFINITY) - e)) << "x = " << x[i];
  }
  EXPECT_NEAR(sum, expected_sum, 1e-5 * expected_sum);
  std::vector<float> special{-std::numeric_limits<float>::infinity(), std::numeric_limits<float>::lowest(), -100.0f,
                             std::numeric_limits<float>::quiet_NaN(), 5.0f};
  rows::exp_sum(special.data(), 5.0f, 5);  // shifted: exp(x - 5)
  EXPECT_EQ(special[0], 0.0f);
  EXPECT_EQ(special[1], 0.0f);
  EXPECT_EQ(special[2], 0.0f);
  EXPECT_TRUE(std::isnan(special[3]));
  EXPECT_EQ(special[4], 1.0f);
}

TEST(Projection, MatchesLinearWithGradients) {
  torch::manual_seed(0);
  auto x_in = torch::randn({2, 6, 3}), w_in = torch::randn({4, 6});
  auto run = [&](bool ours) {
    auto x = x_in.clone().requires_grad_(true), w = w_in.clone().requires_grad_(true);
    auto xt = x.transpose(1, 2);  // [2, 3, 6], not contiguous
    auto y = ours ? project(xt, w) : torch::nn::functional::linear(xt, w);  // [2, 3, 4]
    auto g = torch::arange(24, torch::kFloat).view({2, 3, 4}).sin();
    (y * g).sum().backward();
    return std::vector<torch::Tensor>{y.detach(), x.grad(), w.grad()};
  };
  const auto got = run(true), want = run(false);
  EXPECT_EQ(got[0].sizes(), want[0].sizes());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(tensors_close(got[i], want[i], 1e-6)) << i;
  {
    torch::NoGradGuard ng;
    EXPECT_TRUE(tensors_close(project(x_in[0].t(), w_in), torch::mm(x_in[0].t(), w_in.t()), 1e-6));  // [3, 4]
  }
  auto d = torch::randn({3, 6}, torch::kDouble), wd = torch::randn({2, 6}, torch::kDouble);
  EXPECT_TRUE(torch::equal(project(d, wd), torch::nn::functional::linear(d, wd)));  // double: ATen's own
}

// A weight given in parts (q, k and v): stored apart (concatenated per call) or back to back in one
// allocation (read in place, as T5Attention keeps them), the same output and a gradient per part.
TEST(Projection, PartsApartOrBackToBackGiveTheSameGradients) {
  torch::manual_seed(1);
  auto x_in = torch::randn({5, 6}), w_in = torch::randn({9, 6}), g = torch::randn({5, 9});
  for (bool back_to_back : {false, true}) {
    auto x = x_in.clone().requires_grad_(true);
    std::vector<torch::Tensor> parts;
    {
      torch::NoGradGuard ng;
      auto packed = w_in.clone();
      for (int64_t i = 0; i < 3; ++i) {
        auto p = torch::empty({3, 6});
        p.set_data(back_to_back ? packed.narrow(0, 3 * i, 3) : w_in.narrow(0, 3 * i, 3).clone());
        parts.push_back(p.requires_grad_(true));
      }
    }
    EXPECT_EQ(parts[1].data_ptr<float>() == parts[0].data_ptr<float>() + 18, back_to_back);
    auto y = project(x, parts);  // [5, 9]
    (y * g).sum().backward();
    EXPECT_TRUE(tensors_close(y.detach(), x_in.mm(w_in.t()), 1e-6)) << back_to_back;
    EXPECT_TRUE(tensors_close(x.grad(), g.mm(w_in), 1e-6)) << back_to_back;
    for (int64_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(tensors_close(parts[i].grad(), g.narrow(1, 3 * i, 3).t().mm(x_in), 1e-6)) << back_to_back << " part " << i;
    }
    torch::NoGradGuard ng;
    EXPECT_TRUE(tensors_close(project(x_in, parts), x_in.mm(w_in.t()), 1e-6)) << back_to_back;
  }
}

TEST(RmsNorm, MatchesTheAtenOpsWithGradients) {
  torch::manual_seed(5);
  for (int64_t D : {8, 37, 72}) {  // row kernels: a tail, blocks and a tail
    auto x_in = torch::randn({3, 41, D}) * 3, w_in = torch::randn({D});
    auto g = torch::randn({3, 41, D});
    auto run = [&](bool ours) {
      auto x = x_in.clone().requires_grad_(true), w = w_in.clone().requires_grad_(true);
      auto y = ours ? rms_norm(x, w, 1e-6) : rms_norm_reference(x, w, 1e-6);
      (y * g).sum().backward();
      return std::vector<torch::Tensor>{y.detach(), x.grad(), w.grad()};
    };
    const auto got = run(true), want = run(false);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(tensors_close(got[i], want[i], 1e-5)) << "D " << D << " output " << i;
    torch::NoGradGuard ng;
    EXPECT_TRUE(tensors_close(rms_norm(x_in, w_in, 1e-6), want[0], 1e-5)) << D;
  }
  // Double and an input that needs no gradient with a weight that does: the ATen path and the fused one.
  auto d = torch::randn({4, 6}, torch::kDouble), wd = torch::randn({6}, torch::kDouble);
  EXPECT_TRUE(torch::equal(rms_norm(d, wd, 1e-6), rms_norm_reference(d, wd, 1e-6)));
  auto x = torch::randn({5, 16}), w = torch::randn({16}).requires_grad_(true);
  rms_norm(x, w, 1e-6).sum().backward();
  auto w2 = w.detach().clone().requires_grad_(true);
  rms_norm_reference(x, w2, 1e-6).sum().backward();
  EXPECT_TRUE(tensors_close(w.grad(), w2.grad(), 1e-5));
}

// The lookup and its gradient against ATen's embedding: repeated ids add up, unused rows get zero,
// at widths that take one task and several; the same on one thread (columns split, not ids).
TEST(Embedding, MatchesAtenWithRepeatedIdsAndGradients) {
  torch::manual_seed(3);
  for (int64_t D : {4, 200}) {
    auto table = torch::randn({11, D});
    auto ids = torch::randint(0, 7, {3, 300}, torch::kLong);  // ids 7..10 unused; most repeat
    auto g = torch::randn({3, 300, D});
    auto run = [&](bool ours) {
      auto w = table.clone().requires_grad_(true);
      auto y = ours ? embedding_lookup(w, ids) : torch::embedding(w, ids);
      (y * g).sum().backward();
      return std::vector<torch::Tensor>{y.detach(), w.grad()};
    };
    const auto want = run(false);
    for (int threads : {at::get_num_threads(), 1}) {
      const int before = at::get_num_threads();
      at::set_num_threads(threads);
      const auto got = run(true);
      at::set_num_threads(before);
      EXPECT_TRUE(torch::equal(got[0], want[0])) << D;
      EXPECT_TRUE(tensors_close(got[1], want[1], 1e-5)) << "D " << D << " threads " << threads;
      EXPECT_TRUE(torch::equal(got[1].narrow(0, 7, 4), torch::zeros({4, D}))) << D;
    }
  }
  auto table = torch::randn({5, 3});
  EXPECT_THROW(embedding_lookup(table, torch::tensor({1, 5}, torch::kLong)), c10::Error);  // out of range
  auto d = torch::randn({5, 3}, torch::kDouble);  // other dtypes: ATen's embedding
  EXPECT_TRUE(torch::equal(embedding_lookup(d, torch::tensor({4, 0}, torch::kLong)), torch::embedding(d, torch::tensor({4, 0}, torch::kLong))));
}

TEST(BatchedMatmul, MatchesTorchOnStridedViewsWithGradients) {
  torch::manual_seed(0);
  // Heads split from a fused projection, as attention does: strided, transposed views.
  auto qkv = torch::randn({2, 5, 3 * 12}, torch::requires_grad());
  auto parts = qkv.split(12, -1);
  auto q = parts[0].view({2, 5, 3, 4}).transpose(1, 2);  // [2, 3, 5, 4]
  auto k = parts[1].view({2, 5, 3, 4}).transpose(1, 2);
  auto got = batched_matmul(q, k.transpose(2, 3));      // [2, 3, 5, 5]
  auto want = torch::matmul(q, k.transpose(2, 3));
  EXPECT_TRUE(tensors_close(got, want, 1e-6));
  auto w = torch::randn_like(want);
  auto g1 = torch::autograd::grad({(got * w).sum()}, {qkv})[0];
  auto g2 = torch::autograd::grad({(want * w).sum()}, {qkv})[0];
  EXPECT_TRUE(tensors_close(g1, g2, 1e-6));

  auto a = torch::randn({4, 7, 3}), b = torch::randn({4, 3, 6});
  EXPECT_TRUE(tensors_close(batched_matmul(a, b), torch::matmul(a, b), 1e-6));  // no autograd path
  auto d = torch::randn({2, 3, 4}, torch::kDouble);
  EXPECT_TRUE(torch::equal(batched_matmul(d, d.transpose(1, 2)), torch::matmul(d, d.transpose(1, 2))));  // fallback
}

// The fused attention core against the same in ATen ops: heads strided out of a fused projection,
// a learned bias (needs its gradient) with a padding mask or broadcast over the batch, dropout
// (the same seed gives both the same mask). Rows whose keys are all masked stay finite.
TEST(AttentionCore, MatchesTheAtenOpsWithGradients) {
  const int64_t B = 3, T = 5, S = 7, H = 2, Dk = 4, I = H * Dk;
  for (double p : {0.0, 0.3}) {
    for (bool cross : {false, true}) {
      torch::manual_seed(1);
      const int64_t L = cross ? S : T;  // key length
      auto q_in = torch::randn({B, T, I}), kv_in = torch::randn({B, L, 2 * I});
      auto pos = torch::randn({1, H, T, L});
      auto pad = torch::zeros({B, 1, 1, L});
      pad.index_put_({0, 0, 0, torch::indexing::Slice(2, torch::indexing::None)}, -3e38);  // batch 0 sees 2 keys
      auto g = torch::randn({B, T, I});
      struct Result {
        torch::Tensor out, gq, gkv, gpos;
      };
      auto run = [&](bool fused) {
        auto q = q_in.clone().requires_grad_(true), kv = kv_in.clone().requires_grad_(true), b = pos.clone().requires_grad_(true);
        auto heads = [&](const torch::Tensor& t, int64_t len) { return t.view({B, len, H, Dk}).transpose(1, 2); };
        auto parts = kv.split(I, -1);
        torch::manual_seed(7);
        auto core = fused ? attention_core : attention_core_reference;
        // Self: bias plus mask, [B, H, T, L]. Cross: the bias alone, reduced over the batch inside.
        auto out = core(heads(q, T), heads(parts[0], L), heads(parts[1], L), cross ? b : b + pad, p);
        (out * g).sum().backward();
        return Result{out.detach(), q.grad(), kv.grad(), b.grad()};
      };
      const auto got = run(true), want = run(false);
      const std::string at = "p=" + std::to_string(p) + (cross ? " cross" : " self");
      EXPECT_TRUE(tensors_close(got.out, want.out, 1e-5)) << at;
      EXPECT_TRUE(tensors_close(got.gq, want.gq, 1e-5)) << at;
      EXPECT_TRUE(tensors_close(got.gkv, want.gkv, 1e-5)) << at;
      EXPECT_TRUE(tensors_close(got.gpos, want.gpos, 1e-5)) << at;
      EXPECT_TRUE(torch::isfinite(got.out).all().item<bool>()) << at;
    }
  }
  // Without autograd and in double (the ATen path) it agrees too.
  auto q = torch::randn({2, 2, 3, 4}), k = torch::randn({2, 2, 6, 4}), v = torch::randn({2, 2, 6, 4});
  {
    torch::NoGradGuard ng;
    EXPECT_TRUE(tensors_close(attention_core(q, k, v, {}, 0.0), attention_core_reference(q, k, v, {}, 0.0), 1e-5));
  }
  auto d = attention_core(q.to(torch::kDouble), k.to(torch::kDouble), v.to(torch::kDouble), {}, 0.0);
  EXPECT_TRUE(tensors_close(d.to(torch::kFloat), attention_core_reference(q, k, v, {}, 0.0), 1e-5));
}

// The packed entry points (heads read in place from the projections' outputs, gradients handed back
// in that layout) against the reference on the same heads as views: self and cross, with and
// without dropout, without autograd, and in double (through the views).
TEST(AttentionCore, PackedSourcesMatchTheReferenceWithGradients) {
  const int64_t B = 2, T = 6, S = 9, H = 3, Dk = 4, I = H * Dk;
  for (double p : {0.0, 0.25}) {
    for (bool cross : {false, true}) {
      torch::manual_seed(2);
      const int64_t L = cross ? S : T;
      auto a_in = torch::randn({B, T, cross ? I : 3 * I}), kv_in = torch::randn({B, L, 2 * I});
      auto bias_in = torch::randn({1, H, T, L}), g = torch::randn({B, T, I});
      auto run = [&](bool packed) {
        auto a = a_in.clone().requires_grad_(true), kv = kv_in.clone().requires_grad_(true),
             bias = bias_in.clone().requires_grad_(true);
        auto heads = [&](const torch::Tensor& t) { return t.view({B, -1, H, Dk}).transpose(1, 2); };  // [B, H, L, Dk]
        torch::manual_seed(9);
        torch::Tensor out;
        if (packed) {
          out = cross ? cross_attention_core(a, kv, H, bias, p) : self_attention_core(a, H, bias, p);
        } else {
          auto q = cross ? a : a.narrow(2, 0, I);
          auto k = cross ? kv.narrow(2, 0, I) : a.narrow(2, I, I), v = cross ? kv.narrow(2, I, I) : a.narrow(2, 2 * I, I);
          out = attention_core_reference(heads(q), heads(k), heads(v), bias, p);
        }
        (out * g).sum().backward();
        return std::vector<torch::Tensor>{out.detach(), a.grad(), cross ? kv.grad() : torch::zeros({1}), bias.grad()};
      };
      const auto got = run(true), want = run(false);
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_TRUE(tensors_close(got[i], want[i], 1e-5)) << "p=" << p << (cross ? " cross" : " self") << " output " << i;
      }
      if (p == 0) {
        torch::NoGradGuard ng;
        auto fwd = cross ? cross_attention_core(a_in, kv_in, H, bias_in, 0) : self_attention_core(a_in, H, bias_in, 0);
        EXPECT_TRUE(tensors_close(fwd, want[0], 1e-5)) << (cross ? "cross" : "self");
        auto d = cross ? cross_attention_core(a_in.to(torch::kDouble), kv_in.to(torch::kDouble), H, bias_in.to(torch::kDouble), 0)
                       : self_attention_core(a_in.to(torch::kDouble), H, bias_in.to(torch::kDouble), 0);
        EXPECT_TRUE(tensors_close(d.to(torch::kFloat), want[0], 1e-5)) << (cross ? "cross" : "self");
      }
    }
  }
  // No bias, and a bias broadcast over the keys ([1, H, T, 1]), under autograd.
  for (bool keyless : {false, true}) {
    torch::manual_seed(4);
    auto a = torch::randn({B, T, 3 * I}).requires_grad_(true), bias = torch::randn({1, H, T, 1});
    auto out = self_attention_core(a, H, keyless ? bias : torch::Tensor(), 0);
    auto heads = [&](int64_t part) { return a.narrow(2, part * I, I).view({B, T, H, Dk}).transpose(1, 2); };
    auto want = attention_core_reference(heads(0), heads(1), heads(2), keyless ? bias : torch::Tensor(), 0);
    EXPECT_TRUE(tensors_close(out, want, 1e-5)) << keyless;
    auto g1 = torch::autograd::grad({out.sum()}, {a})[0], g2 = torch::autograd::grad({want.sum()}, {a})[0];
    EXPECT_TRUE(tensors_close(g1, g2, 1e-5)) << keyless;
  }
  // A source that is not contiguous (here [T, B, 3I] transposed) takes the views' path: same values
  // and gradients.
  {
    torch::manual_seed(6);
    auto base = torch::randn({T, B, 3 * I}).requires_grad_(true), bias = torch::randn({1, H, T, T});
    auto nc = base.transpose(0, 1);  // [B, T, 3I], not contiguous
    auto flat = base.detach().transpose(0, 1).contiguous().requires_grad_(true);
    auto y1 = self_attention_core(nc, H, bias, 0), y2 = self_attention_core(flat, H, bias, 0);
    EXPECT_TRUE(tensors_close(y1, y2, 1e-6));
    auto g1 = torch::autograd::grad({y1.sum()}, {base})[0], g2 = torch::autograd::grad({y2.sum()}, {flat})[0];
    EXPECT_TRUE(tensors_close(g1.transpose(0, 1), g2, 1e-6));
  }
  EXPECT_THROW(self_attention_core(torch::randn({2, 5, 10}), 3, {}, 0), Error);  // 10 is not 3 x 3 x Dk
  EXPECT_THROW(cross_attention_core(torch::randn({2, 5, 6}), torch::randn({2, 7, 6}), 3, {}, 0), Error);  // kv not 2 x 6
}

TEST(FastDropout, KeepsOneMinusPScaledAndIsReproducible) {
  auto x = torch::ones({64, 1000});
  FastDropout drop(0.1);
  drop->train();
  torch::manual_seed(3);
  auto y = drop->forward(x);
  const double kept = (y != 0).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(kept, 0.9, 0.005);
  EXPECT_NEAR(y.masked_select(y != 0).mean().item<double>(), 1.0 / 0.9, 1e-5);
  torch::manual_seed(3);
  EXPECT_TRUE(torch::equal(drop->forward(x), y));   // the torch generator determines the mask
  EXPECT_FALSE(torch::equal(drop->forward(x), y));  // and advances
  // Neighbouring elements are not correlated: runs of drops have the lengths chance gives.
  auto m = (y.view(-1) == 0).to(torch::kFloat64);
  auto both = (m.narrow(0, 0, m.numel() - 1) * m.narrow(0, 1, m.numel() - 1)).mean().item<double>();
  EXPECT_NEAR(both, 0.01, 0.002);
  drop->eval();
  EXPECT_TRUE(torch::equal(drop->forward(x), x));
}

// The fused residual + dropout and ReLU + dropout draw dropout_mask's mask from the same seed and
// give the unfused ops' output and gradients (to float32 rounding: the fused add may use an FMA).
TEST(FastDropout, FusedOpsMatchTheMaskTimesInputWithGradients) {
  torch::manual_seed(5);
  auto base = torch::randn({3, 37, 41}).requires_grad_(true);
  auto x = torch::randn({3, 37, 41}).requires_grad_(true);
  auto g = torch::randn({3, 37, 41});
  const double p = 0.3;

  torch::manual_seed(11);
  auto fused = add_dropout(base, x, p);
  (fused * g).sum().backward();
  auto fused_gx = x.grad().clone(), fused_gbase = base.grad().clone();
  x.mutable_grad() = at::Tensor();
  base.mutable_grad() = at::Tensor();
  torch::manual_seed(11);
  auto mask = dropout_mask(x, p);
  auto reference = base + x * mask;
  (reference * g).sum().backward();
  EXPECT_TRUE(tensors_close(fused, reference, 1e-6));
  EXPECT_TRUE(torch::equal(fused_gx, x.grad()));  // g * mask, exactly
  EXPECT_TRUE(torch::equal(fused_gbase, g));
  // Dropout alone, with and without autograd, is x * mask.
  torch::manual_seed(11);
  EXPECT_TRUE(torch::equal(add_dropout({}, x, p), x * mask));
  {
    torch::NoGradGuard ng;
    torch::manual_seed(11);
    EXPECT_TRUE(tensors_close(add_dropout(base, x, p), reference, 1e-6));
  }

  // ReLU + dropout: relu(x) * mask, the gradient through both (zero where dropped or negative).
  x.mutable_grad() = at::Tensor();
  torch::manual_seed(13);
  auto fused_relu = relu_dropout(x, p);
  (fused_relu * g).sum().backward();
  fused_gx = x.grad().clone();
  x.mutable_grad() = at::Tensor();
  torch::manual_seed(13);
  auto h = torch::relu(x);
  auto reference_relu = h * dropout_mask(h, p);
  (reference_relu * g).sum().backward();
  EXPECT_TRUE(torch::equal(fused_relu, reference_relu));
  EXPECT_TRUE(torch::equal(fused_gx, x.grad()));
  EXPECT_TRUE(torch::equal(relu_dropout(x, 0.0), torch::relu(x)));  // p == 0: ReLU alone
  // Other dtypes take the unfused ops.
  torch::manual_seed(13);
  auto xd = x.detach().to(torch::kDouble);
  auto hd = torch::relu(xd);
  auto expected = hd * dropout_mask(hd, p);
  torch::manual_seed(13);
  EXPECT_TRUE(torch::equal(relu_dropout(xd, p), expected));
}

// The product clock counts a product on all threads as wall time and one inside a parallel region
// as thread time, each with its 2mnk, and nothing while off.
TEST(Sgemm, ProductClockCountsTopLevelAndNestedProducts) {
  const int64_t m = 64, n = 48, k = 32;
  std::vector<float> a(m * k, 1.0f), b(k * n, 1.0f), c(m * n);
  auto product = [&] { blas::sgemm(blas::Op::N, blas::Op::N, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n); };
  blas::count_products(true);
  product();
  at::parallel_for(0, 4, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> local(m * n);
    for (int64_t i = begin; i < end; ++i) {
      blas::sgemm(blas::Op::N, blas::Op::N, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, local.data(), n);
    }
  });
  blas::count_products(false);
  product();  // not counted
  const auto t = blas::counted_products();
  EXPECT_EQ(t.top_calls, 1);
  EXPECT_DOUBLE_EQ(t.top_flops, 2.0 * m * n * k);
  EXPECT_GT(t.top_ms, 0.0);
  EXPECT_EQ(t.top_calls + t.nested_calls, 5);  // with one thread the parallel region runs serially, not nested
  EXPECT_DOUBLE_EQ(t.top_flops + t.nested_flops, 5 * 2.0 * m * n * k);
  if (at::get_num_threads() > 1) {
    EXPECT_EQ(t.nested_calls, 4);
  }
  EXPECT_FLOAT_EQ(c[0], static_cast<float>(k));
  blas::count_products(true);  // starts from zero
  EXPECT_EQ(blas::counted_products().top_calls, 0);
  blas::count_products(false);
}

}  // namespace
}  // namespace distill
