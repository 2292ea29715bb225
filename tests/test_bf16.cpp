// bf16 products (models/kernels/mixed_precision.h, blas::gemm_bf16) against float32.
// Tolerances: a product whose operands the kernel rounds to bf16 equals the float32 product of the
// rounded operands to 1e-5 relative (both accumulate in float32, in different orders). A whole
// layer also rounds its intermediate activations (the experts' hidden units, the gradients), and a
// hidden unit near zero may fall on the other side of the ReLU, so it is held to float32 by norm:
// ||bf16 - fp32|| < 3% of ||fp32|| (bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few roundings
// deep). An expert's weight gradient takes a whole row's change from each unit that flips (a 10-token
// expert with one flipped unit: ~5%), so gradients are held to 8% each and 1% at the median.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

#include "distill/training/optim.h"
#include "models/arch/seq2seq.h"
#include "models/arch/switch_moe.h"
#include "models/errors.h"
#include "models/io/checkpoint.h"
#include "models/kernels/attention_core.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/native_bf16.h"
#include "models/kernels/projection.h"
#include "models/kernels/sgemm.h"
#include "tests/test_util.h"

namespace distill {
namespace {

torch::Tensor rounded(const torch::Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kFloat32); }

// max |a - b| relative to max |b|
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

// ||a - b|| / ||b||: a whole layer's error, where a few relu units near zero may switch sides
double norm_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-30);
}

const uint16_t* bits(const torch::Tensor& bf16) { return reinterpret_cast<const uint16_t*>(bf16.data_ptr<at::BFloat16>()); }

// What the bf16 keys' `auto` follows: the CPU's own flags as the kernel lists them, and oneDNN's
// ISA cap (the bf16_without_avx512 test group sets ONEDNN_MAX_CPU_ISA=AVX2: not native there).
TEST(Bf16Native, FollowsTheCpuFlagsAndOneDnnsIsaCap) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(cpuinfo, line))
    if (line.rfind("flags", 0) == 0) {
      flags = line + " ";
      break;
    }
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
  const bool has = flags.find(" avx512_bf16 ") != std::string::npos || flags.find(" amx_bf16 ") != std::string::npos;
  const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA");
  const bool capped = cap != nullptr && std::string(cap) == "AVX2";
  EXPECT_EQ(native_bf16_products(), has && !capped) << flags;
}

TEST(Bf16Gemm, EqualsTheFloat32ProductOfRoundedOperandsForEveryTranspose) {
  torch::manual_seed(1);
  const int64_t m = 37, n = 53, k = 70;  // odd sizes: no kernel's block fits exactly
  for (auto op_a : {blas::Op::N, blas::Op::T}) {
    for (auto op_b : {blas::Op::N, blas::Op::T}) {
      auto a = op_a == blas::Op::N ? torch::randn({m, k}) : torch::randn({k, m});
      auto b = op_b == blas::Op::N ? torch::randn({k, n}) : torch::randn({n, k});
      auto c = torch::randn({m, n});
      auto want = c.clone();
      const auto ra = rounded(a), rb = rounded(b);
      blas::sgemm(op_a, op_b, m, n, k, 1.5f, ra.data_ptr<float>(), ra.size(1), rb.data_ptr<float>(), rb.size(1), 0.5f,
                  want.data_ptr<float>(), n);
      const auto a16 = to_bf16(a), b16 = to_bf16(b);
      blas::gemm_bf16(op_a, op_b, m, n, k, 1.5f, bits(a16), a16.size(1), bits(b16), b16.size(1), 0.5f, c.data_ptr<float>(), n);
      EXPECT_LT(relative_error(c, want), 1e-5) << static_cast<char>(op_a) << static_cast<char>(op_b);
    }
  }
}

TEST(Bf16Gemm, AnEmptyInnerDimensionScalesC) {
  // k = 0 takes the widening path (oneDNN rejects it): C = beta * C.
  auto c = torch::randn({3, 4});
  const auto want = c * 0.5;
  const uint16_t none = 0;
  blas::gemm_bf16(blas::Op::N, blas::Op::N, 3, 4, 0, 1.0f, &none, 1, &none, 4, 0.5f, c.data_ptr<float>(), 4);
  EXPECT_TRUE(torch::allclose(c, want));
}

TEST(Bf16Gemm, RoundsToNearestEvenAndKeepsSpecialValues) {
  auto x = torch::tensor({1.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 1e-40f, INFINITY, -INFINITY, NAN});
  auto ours = to_bf16(x).to(torch::kFloat32), aten = x.to(torch::kBFloat16).to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(ours.slice(0, 0, 7), aten.slice(0, 0, 7))) << ours << aten;
  EXPECT_TRUE(std::isnan(ours[7].item<float>()));
}

TEST(Bf16Projection, ForwardAndGradientsAreProductsOfRoundedOperands) {
  torch::manual_seed(2);
  auto x = torch::randn({2, 5, 24}).requires_grad_(true);
  auto w1 = torch::randn({16, 24}).requires_grad_(true), w2 = torch::randn({8, 24}).requires_grad_(true);
  auto g = torch::randn({2, 5, 24});
  torch::Tensor y;
  {
    Bf16Products amp(true);
    y = project(x, std::vector<torch::Tensor>{w1, w2});  // [2, 5, 24]: two parts as one product
  }
  (y * g).sum().backward();
  ASSERT_EQ(y.scalar_type(), torch::kFloat32);
  const auto rx = rounded(x).reshape({10, 24}), rw = rounded(torch::cat({w1, w2}, 0)), rg = rounded(g).reshape({10, 24});
  EXPECT_LT(relative_error(y.detach().reshape({10, 24}), rx.mm(rw.t())), 1e-5);
  EXPECT_LT(relative_error(x.grad().reshape({10, 24}), rg.mm(rw)), 1e-5);
  const auto gw = rg.t().mm(rx);  // [24, 24]
  EXPECT_LT(relative_error(w1.grad(), gw.slice(0, 0, 16)), 1e-5);
  EXPECT_LT(relative_error(w2.grad(), gw.slice(0, 16, 24)), 1e-5);
  // Outside the scope the same call is float32 again.
  EXPECT_FALSE(bf16_products_active());
  EXPECT_LT(relative_error(project(x, w1).detach(), x.detach().matmul(w1.detach().t())), 1e-5);
}

// Attention's q and k under bf16: their columns multiplied from float32 operands, the rest (v) and
// every gradient from rounded ones; every part exact (q alone) too. A forward pass without autograd
// rounds every operand (nothing to differentiate).
TEST(Bf16Projection, ExactPartsAreFloat32ProductsAndTheirGradientsBf16) {
  torch::manual_seed(3);
  auto x = torch::randn({2, 5, 24}).requires_grad_(true);
  auto wq = torch::randn({8, 24}).requires_grad_(true), wk = torch::randn({8, 24}).requires_grad_(true),
       wv = torch::randn({8, 24}).requires_grad_(true);
  auto g = torch::randn({2, 5, 24});
  const std::vector<torch::Tensor> parts{wq, wk, wv};
  torch::Tensor y, q_alone, y_inference;
  {
    Bf16Products amp(true);
    y = project(x, parts, 2);  // [2, 5, 24]
    q_alone = project(x, wq, 1);
    torch::NoGradGuard no_grad;
    y_inference = project(x, parts, 2);
  }
  (y * g).sum().backward();
  const auto xf = x.detach().reshape({10, 24}), rx = rounded(x).reshape({10, 24}), rg = rounded(g).reshape({10, 24});
  const auto w = torch::cat({wq, wk, wv}, 0).detach(), rw = rounded(w);
  const auto y2 = y.detach().reshape({10, 24});
  EXPECT_LT(relative_error(y2.slice(1, 0, 16), xf.mm(w.slice(0, 0, 16).t())), 1e-6);  // q, k: float32
  EXPECT_GT(relative_error(y2.slice(1, 0, 16), rx.mm(rw.slice(0, 0, 16).t())), 1e-4);  // (not the rounded product)
  EXPECT_LT(relative_error(y2.slice(1, 16, 24), rx.mm(rw.slice(0, 16, 24).t())), 1e-5);  // v: bf16
  EXPECT_LT(relative_error(q_alone.detach().reshape({10, 8}), xf.mm(wq.detach().t())), 1e-6);
  EXPECT_LT(relative_error(y_inference.reshape({10, 24}), rx.mm(rw.t())), 1e-5);
  EXPECT_LT(relative_error(x.grad().reshape({10, 24}), rg.mm(rw)), 1e-5);
  const auto gw = rg.t().mm(rx);  // [24, 24]
  EXPECT_LT(relative_error(wq.grad(), gw.slice(0, 0, 8)), 1e-5);
  EXPECT_LT(relative_error(wv.grad(), gw.slice(0, 16, 24)), 1e-5);
  EXPECT_THROW(project(x, parts, 4), Error);
}

TEST(Bf16Attention, TrainingScoresReadFloat32OperandsOtherProductsRoundedOnesSoftmaxFloat32) {
  torch::manual_seed(4);
  const int64_t B = 1, H = 2, T = 64, S = 1024, Dk = 64;  // T * S * Dk = 2^22: a head where bf16 pays
  // q and k, v as the model makes them: the cross-attention core reads the heads in place from the
  // projections' outputs, q [B, T, H*Dk] and kv [B, S, 2*H*Dk].
  auto qf = torch::randn({B, T, H * Dk}).requires_grad_(true), kvf = torch::randn({B, S, 2 * H * Dk}).requires_grad_(true);
  auto bias = torch::randn({1, H, T, S}).requires_grad_(true);
  const auto heads = [&](const torch::Tensor& t) { return t.view({B, -1, H, Dk}).transpose(1, 2); };  // [B, H, L, Dk]
  auto g = torch::randn({B, T, H * Dk});
  torch::Tensor y;
  {
    Bf16Products amp(true);
    y = cross_attention_core(qf, kvf, H, bias, 0.0);  // [B, T, H*Dk]
  }
  (y * g).sum().backward();  // outside the scope, as the trainer does: backward multiplies as forward did
  const auto kf = kvf.narrow(2, 0, H * Dk), vf = kvf.narrow(2, H * Dk, H * Dk);
  // The same arithmetic by hand: the scores from float32 q and k, every other product of rounded
  // operands, the rest float32.
  const auto q = heads(qf).detach(), k = heads(kf).detach(), v = heads(vf).detach();
  const auto p = torch::softmax(q.matmul(k.transpose(2, 3)) + bias.detach(), -1);  // [B, H, T, S]
  const auto ctx = rounded(p).matmul(rounded(v));                                                  // [B, H, T, Dk]
  EXPECT_LT(relative_error(y.detach(), ctx.transpose(1, 2).reshape({B, T, H * Dk})), 1e-5);
  const auto gctx = heads(g);
  const auto gv = rounded(p).transpose(2, 3).matmul(rounded(gctx));
  const auto dp = rounded(gctx).matmul(rounded(v).transpose(2, 3));
  const auto ds = p * (dp - (dp * p).sum(-1, true));
  const auto gq = rounded(ds).matmul(rounded(k)), gk = rounded(ds).transpose(2, 3).matmul(rounded(q));
  const auto merged = [&](const torch::Tensor& t) { return t.transpose(1, 2).reshape({B, -1, H * Dk}); };
  EXPECT_LT(relative_error(qf.grad(), merged(gq)), 1e-5);
  EXPECT_LT(relative_error(kvf.grad().narrow(2, 0, H * Dk), merged(gk)), 1e-5);
  EXPECT_LT(relative_error(kvf.grad().narrow(2, H * Dk, H * Dk), merged(gv)), 1e-5);
  EXPECT_LT(relative_error(bias.grad(), ds.sum(0, true)), 1e-5);
  // And within bf16 rounding of the float32 core.
  const auto f32 = attention_core(q, k, v, bias.detach(), 0.0);
  EXPECT_LT(norm_error(y.detach(), f32), 0.01);
  // A forward pass alone (nothing to differentiate) rounds the scores' operands too.
  torch::NoGradGuard no_grad;
  Bf16Products amp(true);
  const auto p_rounded = torch::softmax(rounded(q).matmul(rounded(k).transpose(2, 3)) + bias.detach(), -1);
  const auto y_inference = cross_attention_core(qf.detach(), kvf.detach(), H, bias.detach(), 0.0);
  EXPECT_LT(relative_error(y_inference, merged(rounded(p_rounded).matmul(rounded(v)))), 1e-5);
}

TEST(Bf16Attention, SmallHeadsStayFloat32) {
  torch::manual_seed(5);
  auto q = torch::randn({2, 3, 32, 64}), k = torch::randn({2, 3, 128, 64}), v = torch::randn({2, 3, 128, 64});
  auto bias = torch::randn({1, 3, 32, 128});
  const auto f32 = attention_core(q, k, v, bias, 0.0);
  Bf16Products amp(true);
  EXPECT_TRUE(torch::equal(attention_core(q, k, v, bias, 0.0), f32));  // 32 x 128 x 64: bf16 would cost more than it saves
}

TEST(Bf16Copies, AreMadeOncePerVersionOfTheWeight) {
  clear_bf16_copies();
  auto w = torch::randn({8, 4}).requires_grad_(true);
  const auto first = bf16_copy(w);
  EXPECT_EQ(bf16_copy(w).data_ptr(), first.data_ptr()) << "a second call recast the weight";
  EXPECT_EQ(bf16_cache_stats().copies, 1);
  EXPECT_EQ(bf16_cache_stats().bytes, 8 * 4 * 2);
  {
    torch::NoGradGuard ng;
    w.mul_(2.0);  // an in-place change: a new version
  }
  auto after_mul = bf16_copy(w);
  EXPECT_NE(after_mul.data_ptr(), first.data_ptr());
  EXPECT_TRUE(torch::equal(after_mul.to(torch::kFloat32), rounded(w)));
  // The fused AdamW writes through a raw pointer; it bumps the version itself.
  AdamW adamw({{"w", w}}, OptimizerConfig{});
  w.mutable_grad() = torch::ones_like(w);
  adamw.step(0.1);
  EXPECT_TRUE(torch::equal(bf16_copy(w).to(torch::kFloat32), rounded(w))) << "stale copy after an optimizer step";
  // A freed weight's copy is never handed to a new tensor, even one at the same address.
  for (int i = 0; i < 3; ++i) {
    auto t = torch::full({8, 4}, static_cast<float>(i));
    EXPECT_TRUE(torch::equal(bf16_copy(t).to(torch::kFloat32), t)) << i;
  }
  // Copies of freed weights go when asked (a new stage starts), live weights keep theirs.
  clear_bf16_copies();
  {
    auto gone = torch::randn({16, 4});
    bf16_copy(gone);
    bf16_copy(w);
    EXPECT_EQ(bf16_cache_stats().copies, 2);
  }
  drop_freed_bf16_copies();
  EXPECT_EQ(bf16_cache_stats().copies, 1);
  EXPECT_EQ(bf16_cache_stats().bytes, 8 * 4 * 2);
  clear_bf16_copies();
  EXPECT_EQ(bf16_cache_stats().copies, 0);
}

TEST(Bf16Copies, ACopyMadeInInferenceModeCanBeSavedForBackward) {
  clear_bf16_copies();
  auto w = torch::randn({8, 4}).requires_grad_(true), x = torch::randn({3, 4}).requires_grad_(true);
  {
    c10::InferenceMode frozen;  // an evaluation pass makes the copy
    Bf16Products amp(true);
    project(x.detach(), w);
  }
  Bf16Products amp(true);
  project(x, w).sum().backward();  // the cached copy is saved for this backward
  EXPECT_TRUE(w.grad().defined());
  clear_bf16_copies();
}

// The Switch layer under bf16 products: the fused top-1 node and the general top-2 path, forward
// and every gradient, against float32; the float32 router makes the same choices.
class Bf16Switch : public ::testing::TestWithParam<int64_t> {};

TEST_P(Bf16Switch, LayerMatchesFloat32WithinBf16Rounding) {
  torch::manual_seed(3);
  RoutingOptions r;
  r.num_experts = 4;
  r.top_k = GetParam();
  r.capacity_mode = CapacityMode::kFactor;
  r.capacity_factor_train = 1.0;  // drops some tokens
  FfnOptions f;
  f.d_model = 72;
  f.d_ff = 48;
  f.dropout = 0.0;
  SwitchSparseMlp layer(72, r, f);
  layer->train();
  const auto x0 = torch::randn({3, 10, 72}), g = torch::randn({3, 10, 72});
  auto run = [&](bool bf16) {
    layer->zero_grad();
    auto x = x0.clone().requires_grad_(true);
    SparseMlpOutput out;
    {
      Bf16Products amp(bf16);
      out = layer->forward(x);
    }
    ((out.hidden * g).sum() + out.router.logits.pow(2).sum()).backward();
    std::vector<torch::Tensor> grads{x.grad()};
    for (const auto& p : layer->parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    return std::make_pair(out, grads);
  };
  auto [ref, ref_grads] = run(false);
  auto [amp, amp_grads] = run(true);
  EXPECT_EQ(amp.hidden.scalar_type(), torch::kFloat32);
  EXPECT_EQ(amp.router.logits.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(amp.router.logits, ref.router.logits)) << "the router left float32";
  EXPECT_TRUE(torch::equal(amp.router.expert_choice, ref.router.expert_choice));
  EXPECT_LT(norm_error(amp.hidden.detach(), ref.hidden.detach()), 0.03);
  ASSERT_EQ(amp_grads.size(), ref_grads.size());
  std::vector<double> errors;
  for (size_t i = 0; i < ref_grads.size(); ++i) {
    if (!ref_grads[i].defined()) continue;
    ASSERT_TRUE(amp_grads[i].defined()) << i;
    EXPECT_EQ(amp_grads[i].scalar_type(), torch::kFloat32);
    const double e = norm_error(amp_grads[i], ref_grads[i]);
    EXPECT_LT(e, 0.08) << "gradient " << i;
    errors.push_back(e);
  }
  std::sort(errors.begin(), errors.end());
  EXPECT_LT(errors[errors.size() / 2], 0.01) << "median gradient error";
}

INSTANTIATE_TEST_SUITE_P(TopK, Bf16Switch, ::testing::Values(1, 2));

TEST(Bf16Model, ATeacherWithBf16ProductsKeepsFloat32WeightsAndOutputs) {
  torch::NoGradGuard ng;
  auto model = load_model(test::fixture("switch-tiny-4"));
  auto gold = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  const Seq2SeqInputs in{gold["input_ids"], gold["attention_mask"], gold["decoder_input_ids"], {}, gold["labels"]};
  auto ref = model->forward(in);
  model->set_bf16_products(true);
  auto out = model->forward(in);
  for (const auto& p : model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
  EXPECT_EQ(out.logits.scalar_type(), torch::kFloat32);
  for (const auto& [name, r] : out.routing) EXPECT_EQ(r.logits.scalar_type(), torch::kFloat32) << name;
  EXPECT_LT(norm_error(out.logits, ref.logits), 0.03);
  EXPECT_NEAR(out.ce_loss.item<double>(), ref.ce_loss.item<double>(), 0.01 * ref.ce_loss.item<double>());
  EXPECT_FALSE(bf16_products_active()) << "the model's scope leaked";
}

// T5 does not scale its attention scores, and a trained model's can be large: rounding q and k to
// bf16 then moves a sharp softmax enough to turn the gradient around (a demo student's was 50-80%
// off on 3 of 12 batches). Here q and k are sharpened 3x (scores 9x): with bf16 q and k the whole
// gradient was 14% off float32's, with float32 q and k (the scores' operands) it is 2.8%.
TEST(Bf16Model, SharpAttentionKeepsTheGradientWithinAFewPercentOfFloat32) {
  torch::manual_seed(7);
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 64;
  c.d_ff = 128;
  c.d_kv = 16;
  c.num_heads = 4;
  c.num_layers = c.num_decoder_layers = 2;
  c.dropout_rate = 0.0;
  Seq2SeqModel model(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : model->named_parameters()) {
      const auto& name = p.key();
      if (name.find(".q.weight") != std::string::npos || name.find(".k.weight") != std::string::npos) p.value().mul_(3.0);
    }
  }
  const int64_t B = 4, S = 24, T = 8;
  const auto ids = torch::randint(2, c.vocab_size, {B, S}), labels = torch::randint(2, c.vocab_size, {B, T});
  const Seq2SeqInputs in{ids, torch::ones({B, S}, torch::kLong), shift_right(labels, 0, 0), {}, labels};
  auto gradient = [&](bool bf16) {
    model->zero_grad();
    torch::Tensor loss;
    {
      Bf16Products amp(bf16);
      loss = model->forward(in).loss;
    }
    loss.backward();
    std::vector<torch::Tensor> g;
    for (const auto& p : model->parameters()) g.push_back(p.grad().flatten());
    return torch::cat(g);
  };
  const auto f32 = gradient(false), b16 = gradient(true);
  EXPECT_LT(norm_error(b16, f32), 0.06);
}

}  // namespace
}  // namespace distill
