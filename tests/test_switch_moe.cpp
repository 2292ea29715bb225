// Switch layer invariants: capacity, dropped tokens, grouped dispatch against a per-token
// reference, top-k, padding, jitter, router dtype, router losses, gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>


#include "models/io/checkpoint.h"
#include "models/errors.h"
#include "models/kernels/grouped_ffn.h"
#include "models/kernels/mixed_precision.h"
#include "models/arch/seq2seq.h"
#include "models/arch/switch_moe.h"
#include "models/kernels/switch_top1.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using test::tensors_close;

// Probabilities skewed towards expert 0, so queues overflow.
torch::Tensor skewed_probs(int64_t B, int64_t S, int64_t E) {
  auto logits = torch::randn({B, S, E});
  logits.select(2, 0).add_(1.5);
  return torch::softmax(logits, -1);
}

TEST(SwitchRouting, CapacityIsNeverExceeded) {
  torch::manual_seed(0);
  for (auto mode : {CapacityMode::kFixed, CapacityMode::kFactor}) {
    for (int64_t k : {1, 2}) {
      const int64_t B = 3, S = 20, E = 4, cap = 4;
      auto r = route_tokens(skewed_probs(B, S, E), k, mode, cap);
      auto experts = r.experts.view({B, S, k}), kept = r.kept.view({B, S, k});
      for (int64_t e = 0; e < E; ++e) {
        auto at_e = (experts == e) & kept;  // [B, S, k]
        if (mode == CapacityMode::kFixed) {
          EXPECT_LE(at_e.sum({1, 2}).max().item<int64_t>(), cap) << "k=" << k << " e=" << e;
        } else {
          EXPECT_LE(at_e.sum().item<int64_t>(), cap) << "k=" << k << " e=" << e;
        }
        // An expert drops tokens only when it is full.
        auto demand = (experts == e).sum().item<int64_t>();
        if (mode == CapacityMode::kFactor) {
          EXPECT_EQ(at_e.sum().item<int64_t>(), std::min(demand, cap));
        }
      }
    }
  }
}

TEST(SwitchRouting, PaddingIsNeverKeptAndTakesNoCapacity) {
  // Five tokens that all want expert 0, capacity 2; the first two are padding.
  auto probs = torch::tensor({{{0.9f, 0.1f}, {0.9f, 0.1f}, {0.8f, 0.2f}, {0.7f, 0.3f}, {0.6f, 0.4f}}});  // [1, 5, 2]
  auto active = torch::tensor({{false, false, true, true, true}});
  for (auto mode : {CapacityMode::kFixed, CapacityMode::kFactor}) {
    auto r = route_tokens(probs, 1, mode, 2, active);
    auto kept = r.kept.view({5});
    EXPECT_FALSE(kept[0].item<bool>());
    EXPECT_FALSE(kept[1].item<bool>());
    EXPECT_TRUE(kept[2].item<bool>());  // the padding did not fill expert 0's queue
    EXPECT_TRUE(kept[3].item<bool>());
    EXPECT_FALSE(kept[4].item<bool>());
    EXPECT_EQ(r.counts[0], 2);
  }
  // Capacity in factor mode counts the routed tokens only.
  RoutingOptions o;
  o.num_experts = 4;
  o.capacity_mode = CapacityMode::kFactor;
  EXPECT_EQ(expert_capacity_for(o, 3, /*training=*/true), 1);   // ceil(3 / 4 * 1.25)
  EXPECT_EQ(expert_capacity_for(o, 16, /*training=*/true), 5);  // ceil(16 / 4 * 1.25)
}

TEST(SwitchRouting, MaskedRouterLossesSeeOnlyRealTokens) {
  torch::manual_seed(11);
  auto logits = torch::randn({1, 7, 4});
  auto choice = logits.argmax(-1);
  auto active = torch::tensor({{true, true, true, true, false, false, false}});
  auto real_logits = logits.narrow(1, 0, 4), real_choice = choice.narrow(1, 0, 4);
  EXPECT_NEAR(load_balancing_loss(logits, choice, active).item<double>(),
              load_balancing_loss(real_logits, real_choice).item<double>(), 1e-6);
  EXPECT_NEAR(router_z_loss(logits, active).item<double>(), router_z_loss(real_logits).item<double>(), 1e-6);
  // A sequence without real tokens is left out of the mean rather than counted as zero.
  auto two = torch::cat({logits, logits}, 0);
  auto two_choice = torch::cat({choice, choice}, 0);
  auto two_active = torch::cat({active, torch::zeros_like(active)}, 0);
  EXPECT_NEAR(load_balancing_loss(two, two_choice, two_active).item<double>(),
              load_balancing_loss(real_logits, real_choice).item<double>(), 1e-6);
}

TEST(SwitchRouting, FirstChoicesQueueBeforeSecondChoices) {
  // Two tokens, both prefer expert 0 first and expert 1 second; capacity 1 per expert.
  auto probs = torch::tensor({{{0.6f, 0.4f}, {0.7f, 0.3f}}});  // [1, 2, 2]
  auto r = route_tokens(probs, 2, CapacityMode::kFixed, 1);
  // Token 0 gets expert 0 (first choice, first in queue); token 1's first choice is dropped;
  // token 0's second choice (expert 1) is served before token 1's second choice.
  EXPECT_TRUE(torch::equal(r.kept, torch::tensor({{true, true}, {false, false}})));
  EXPECT_TRUE(tensors_close(r.gates.sum(-1), torch::ones({2})));
}

TEST(SwitchRouting, TopKWithKOneAgreesWithTopOne) {
  torch::manual_seed(1);
  auto probs = skewed_probs(2, 16, 4);
  auto r1 = route_tokens(probs, 1, CapacityMode::kFixed, 5);
  auto r2 = route_tokens(probs, 2, CapacityMode::kFixed, 5);
  EXPECT_TRUE(torch::equal(r1.experts.select(1, 0), r2.experts.select(1, 0)));
  EXPECT_TRUE(torch::equal(r1.kept.select(1, 0), r2.kept.select(1, 0)));  // first choices queue first
  EXPECT_TRUE(torch::equal(r1.gates.select(1, 0), std::get<0>(probs.reshape({-1, 4}).max(-1))));
}

TEST(SwitchRouting, CapacityFromFactor) {
  RoutingOptions o;
  o.num_experts = 4;
  o.capacity_mode = CapacityMode::kFactor;
  EXPECT_EQ(expert_capacity_for(o, 20, /*training=*/true), 7);   // ceil(20 / 4 * 1.25)
  EXPECT_EQ(expert_capacity_for(o, 20, /*training=*/false), 10); // 20 / 4 * 2.0
  o.capacity_mode = CapacityMode::kFixed;
  EXPECT_EQ(expert_capacity_for(o, 20, true), 64);
}

class SparseLayer : public ::testing::TestWithParam<int64_t> {
 protected:
  SwitchSparseMlp make(int64_t k, int64_t capacity) {
    RoutingOptions r;
    r.num_experts = 4;
    r.top_k = k;
    r.expert_capacity = capacity;
    r.jitter_noise = 0.0;
    FfnOptions f;
    f.d_model = 16;
    f.d_ff = 32;
    f.dropout = 0.0;
    SwitchSparseMlp layer(16, r, f);
    layer->eval();
    return layer;
  }
};

// Per-token reference: for each token, each of its top-k experts while the expert has room.
torch::Tensor reference_forward(SwitchSparseMlp& layer, const torch::Tensor& x, int64_t k, int64_t capacity) {
  const int64_t B = x.size(0), S = x.size(1), E = 4;
  auto probs = torch::softmax(layer->router->forward(x), -1);
  auto out = torch::zeros_like(x);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> load(E, 0);
    auto [vals, idx] = probs[b].topk(k, -1);  // [S, k]
    for (int64_t rank = 0; rank < k; ++rank) {
      for (int64_t s = 0; s < S; ++s) {
        int64_t e = idx[s][rank].item<int64_t>();
        if (++load[e] > capacity) continue;
        auto gate = k == 1 ? vals[s][0] : vals[s][rank] / vals[s].sum();
        out[b][s] += gate * layer->experts->experts[e]->forward(x[b][s].unsqueeze(0)).squeeze(0);
      }
    }
  }
  return out;
}

TEST_P(SparseLayer, GroupedDispatchMatchesPerTokenReference) {
  torch::manual_seed(2);
  torch::NoGradGuard ng;
  const int64_t k = GetParam(), cap = 3;
  auto layer = make(k, cap);
  auto x = torch::randn({2, 12, 16});
  auto got = layer->forward(x);
  EXPECT_TRUE(tensors_close(got.hidden, reference_forward(layer, x, k, cap), 1e-5));
}

TEST_P(SparseLayer, DroppedTokensGetExactlyZeroOutput) {
  torch::manual_seed(3);
  torch::NoGradGuard ng;
  const int64_t k = GetParam();
  auto layer = make(k, /*capacity=*/2);
  auto x = torch::randn({2, 12, 16});
  auto got = layer->forward(x);
  auto dropped = ~got.router.top_kept.any(-1);  // [B, S]: no expert processed the token
  ASSERT_GT(dropped.sum().item<int64_t>(), 0) << "capacity 2 of 4 experts must drop tokens";
  EXPECT_EQ(got.hidden.index({dropped}).abs().max().item<float>(), 0.0f);
  auto processed = got.router.top_kept.any(-1);
  EXPECT_GT(got.hidden.index({processed}).abs().sum(-1).min().item<float>(), 0.0f);
}

INSTANTIATE_TEST_SUITE_P(TopK, SparseLayer, ::testing::Values(1, 2));

TEST(SwitchRouter, JitterOnlyInTraining) {
  torch::manual_seed(4);
  RoutingOptions r;
  r.num_experts = 4;
  r.jitter_noise = 0.1;
  SwitchRouter router(8, r);
  auto x = torch::randn({2, 5, 8});
  router->train();
  EXPECT_FALSE(torch::equal(router->forward(x), router->forward(x)));
  router->eval();
  EXPECT_TRUE(torch::equal(router->forward(x), router->forward(x)));
}

TEST(SwitchRouter, StaysFloat32InABfloat16Model) {
  torch::NoGradGuard ng;
  auto model = load_model(test::fixture("switch-tiny-4"));
  set_model_dtype(model, torch::kBFloat16);
  EXPECT_EQ(model->shared->weight.scalar_type(), torch::kBFloat16);
  auto g = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  auto out = model->forward({g["input_ids"], g["attention_mask"], g["decoder_input_ids"], {}, g["labels"]});
  EXPECT_EQ(out.logits.scalar_type(), torch::kBFloat16);
  for (const auto& [name, r] : out.routing) EXPECT_EQ(r.logits.scalar_type(), torch::kFloat32) << name;
  for (const auto& p : model->named_parameters()) {
    if (is_router_parameter(p.key())) {
      EXPECT_EQ(p.value().scalar_type(), torch::kFloat32) << p.key();
    }
  }
  // bf16 keeps the logits close to float32 ones (loose: bf16 has 8 bits of mantissa).
  EXPECT_TRUE(tensors_close(out.logits, g["logits"], 0.05));
}

TEST(RouterLosses, UniformRoutingGivesOneAndLogEsquared) {
  auto logits = torch::zeros({2, 8, 4});
  auto choice = torch::arange(4).repeat({2, 2});  // every expert equally often
  EXPECT_NEAR(load_balancing_loss(logits, choice).item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(router_z_loss(logits).item<double>(), std::pow(std::log(4.0), 2), 1e-5);
  auto collapsed = torch::zeros({2, 8}, torch::kLong);  // all on expert 0
  EXPECT_NEAR(load_balancing_loss(logits, collapsed).item<double>(), 4.0 * 0.25, 1e-6);
}

TEST(RouterLosses, HuggingFaceRuleConcatenatesTheStacksLayers) {
  // Issue 14.4: two sparse layers in one stack. The paper's rule averages each layer's losses;
  // Hugging Face's computes one loss over the layers' tokens, a dropped token counted as expert 0.
  torch::manual_seed(3);
  auto layer = [](int64_t overflow_at) {
    RouterOutput r;
    r.logits = torch::randn({2, 6, 4});
    r.expert_choice = r.logits.argmax(-1);
    r.kept = torch::ones({2, 6}, torch::kBool);
    if (overflow_at >= 0) r.kept.index_put_({0, overflow_at}, false);
    return r;
  };
  const std::vector<RouterOutput> layers = {layer(-1), layer(4)};
  const auto paper = router_losses(layers, torch::kCPU, RouterLoss::kPaper);
  const auto hf = router_losses(layers, torch::kCPU, RouterLoss::kHf);
  const double paper_aux = (load_balancing_loss(layers[0].logits, layers[0].expert_choice).item<double>() +
                            load_balancing_loss(layers[1].logits, layers[1].expert_choice).item<double>()) / 2;
  EXPECT_NEAR(paper.aux_loss.item<double>(), paper_aux, 1e-6);
  auto index1 = layers[1].expert_choice.clone();
  index1.index_put_({0, 4}, 0);
  const auto all = torch::cat({layers[0].logits, layers[1].logits}, 1);
  EXPECT_NEAR(hf.aux_loss.item<double>(), load_balancing_loss(all, torch::cat({layers[0].expert_choice, index1}, 1)).item<double>(), 1e-6);
  EXPECT_GT(std::abs(hf.aux_loss.item<double>() - paper.aux_loss.item<double>()), 1e-4);  // they do differ
  EXPECT_NEAR(hf.z_loss.item<double>(), paper.z_loss.item<double>(), 1e-5);  // equal token counts: same z
  // One layer per stack: the two rules agree.
  const std::vector<RouterOutput> one = {layers[0]};
  EXPECT_NEAR(router_losses(one, torch::kCPU, RouterLoss::kHf).aux_loss.item<double>(),
              router_losses(one, torch::kCPU, RouterLoss::kPaper).aux_loss.item<double>(), 1e-6);
}

// Autograd against central differences on the first `count` entries of each tensor in `params`
// (double precision); `loss_of` must be a fixed function of them.
void expect_gradients_match_finite_differences(const std::vector<torch::Tensor>& params,
                                               const std::function<torch::Tensor()>& loss_of, int64_t count,
                                               const std::string& label) {
  for (const auto& p : params) {
    ASSERT_TRUE(p.grad().defined());
    auto grad = p.grad().clone();
    torch::NoGradGuard ng;
    for (int64_t i = 0; i < std::min<int64_t>(p.numel(), count); ++i) {
      auto flat = p.view({-1});
      const double h = 1e-6, orig = flat[i].item<double>();
      flat[i] = orig + h;
      double up = loss_of().item<double>();
      flat[i] = orig - h;
      double down = loss_of().item<double>();
      flat[i] = orig;
      EXPECT_NEAR(grad.view({-1})[i].item<double>(), (up - down) / (2 * h), 1e-6) << label << i;
    }
  }
}

TEST(SwitchGradients, MatchFiniteDifferences) {
  // Double precision, routing fixed by the tiny step: autograd against central differences.
  torch::manual_seed(5);
  RoutingOptions r;
  r.num_experts = 3;
  r.expert_capacity = 100;
  r.jitter_noise = 0.0;
  FfnOptions f;
  f.d_model = 6;
  f.d_ff = 8;
  f.dropout = 0.0;
  SwitchSparseMlp layer(6, r, f);
  layer->to(torch::kDouble);
  layer->eval();
  auto x = torch::randn({1, 5, 6}, torch::kDouble);
  auto w = torch::randn({1, 5, 6}, torch::kDouble);
  auto loss_of = [&] { return (layer->forward(x).hidden * w).sum(); };
  loss_of().backward();
  std::vector<torch::Tensor> params = {layer->router->classifier->weight, layer->experts->experts[0]->wi->weight,
                                       layer->experts->experts[1]->wo->weight};
  expect_gradients_match_finite_differences(params, loss_of, 6, "");
}

// With dropout in the experts, for the fused ReLU experts and the generic (gated) path. The same
// seed before every forward makes the dropout mask part of a fixed function.
void check_gradients_with_dropout(bool gated) {
  torch::manual_seed(6);
  RoutingOptions r;
  r.num_experts = 3;
  r.expert_capacity = 100;
  r.jitter_noise = 0.0;
  FfnOptions f;
  f.d_model = 6;
  f.d_ff = 8;
  f.dropout = 0.4;
  f.gated = gated;
  f.act = gated ? "gelu_new" : "relu";
  SwitchSparseMlp layer(6, r, f);
  layer->to(torch::kDouble);
  layer->train();
  auto x = torch::randn({1, 7, 6}, torch::kDouble).requires_grad_(true);
  auto w = torch::randn({1, 7, 6}, torch::kDouble);
  auto loss_of = [&] {
    torch::manual_seed(99);
    return (layer->forward(x).hidden * w).sum();
  };
  {
    torch::NoGradGuard ng;
    auto train_out = loss_of();
    layer->eval();
    EXPECT_GT(std::abs(train_out.item<double>() - loss_of().item<double>()), 1e-6) << "dropout must be active";
    layer->train();
  }
  loss_of().backward();
  auto& expert = layer->experts->experts[0];
  std::vector<torch::Tensor> params = {x, layer->router->classifier->weight, gated ? expert->wi_0->weight : expert->wi->weight,
                                       layer->experts->experts[2]->wo->weight};
  expect_gradients_match_finite_differences(params, loss_of, 8, gated ? "gated " : "relu ");
}

TEST(SwitchGradients, WithExpertDropoutMatchFiniteDifferences) {
  check_gradients_with_dropout(false);
  check_gradients_with_dropout(true);
}

// The float32 kernels (sgemm per expert, experts in parallel, dropout inside the loop) against
// the ATen path in double on the same numbers: uneven groups, an empty expert, dropout on.
TEST(GroupedFfn, Float32KernelsMatchTheDoublePath) {
  torch::manual_seed(8);
  const int64_t N = 40, D = 12, F = 20;
  const std::vector<int64_t> counts{17, 0, 3, 20};
  auto token = torch::randperm(N, torch::kLong);  // [M], M = N: every token once
  auto x = torch::randn({N, D});
  auto gate = torch::rand({N}) + 0.5;
  auto g = torch::randn({N, D});
  std::vector<torch::Tensor> wi, wo;
  for (size_t e = 0; e < counts.size(); ++e) {
    wi.push_back(torch::randn({F, D}) * 0.3);
    wo.push_back(torch::randn({D, F}) * 0.3);
  }
  struct Result {
    torch::Tensor out, gx, ggate;
    std::vector<torch::Tensor> gwi, gwo;
  };
  auto run = [&](c10::ScalarType dtype) {
    auto leaf = [&](const torch::Tensor& t) { return t.to(dtype).detach().requires_grad_(true); };
    auto xl = leaf(x), gl = leaf(gate);
    std::vector<torch::Tensor> wil, wol;
    for (size_t e = 0; e < counts.size(); ++e) {
      wil.push_back(leaf(wi[e]));
      wol.push_back(leaf(wo[e]));
    }
    torch::manual_seed(42);  // the same dropout seed for both
    auto out = grouped_relu_ffn(xl, gl, {token, counts}, wil, wol, 0.3);
    (out * g.to(dtype)).sum().backward();
    Result r{out.detach(), xl.grad(), gl.grad(), {}, {}};
    for (size_t e = 0; e < counts.size(); ++e) {
      r.gwi.push_back(wil[e].grad());
      r.gwo.push_back(wol[e].grad());
    }
    return r;
  };
  const auto f = run(torch::kFloat32), d = run(torch::kDouble);
  auto close = [](const torch::Tensor& a, const torch::Tensor& b) { return torch::allclose(a.to(torch::kDouble), b, 1e-4, 1e-5); };
  EXPECT_TRUE(close(f.out, d.out));
  EXPECT_TRUE(close(f.gx, d.gx));
  EXPECT_TRUE(close(f.ggate, d.ggate));
  for (size_t e = 0; e < counts.size(); ++e) {
    ASSERT_EQ(f.gwi[e].defined(), counts[e] > 0) << e;
    ASSERT_EQ(d.gwi[e].defined(), counts[e] > 0) << e;
    if (counts[e] == 0) continue;
    EXPECT_TRUE(close(f.gwi[e], d.gwi[e])) << e;
    EXPECT_TRUE(close(f.gwo[e], d.gwo[e])) << e;
  }
}

// The fused float32 top-1 node against the general path (router projection, gate node, grouped
// experts) on the same numbers: jitter, expert dropout and dropped tokens on, and the router
// losses in the loss so the logits' own gradient flows back through the node too.
TEST(SwitchGradients, FusedTop1NodeMatchesTheGeneralPath) {
  torch::manual_seed(9);
  RoutingOptions r;
  r.num_experts = 4;
  r.capacity_mode = CapacityMode::kFactor;
  r.capacity_factor_train = 0.75;  // drops tokens
  r.jitter_noise = 0.1;
  FfnOptions f;
  f.d_model = 72;  // row kernels: a block of 64 columns and a tail
  f.d_ff = 24;
  f.dropout = 0.3;
  SwitchSparseMlp layer(72, r, f);
  layer->train();
  const auto x0 = torch::randn({3, 10, 72});
  const auto w = torch::randn({3, 10, 72});
  struct Result {
    SparseMlpOutput out;
    std::vector<torch::Tensor> grads;  // x, then every parameter
  };
  auto run = [&](bool fused, bool direct) {
    layer->set_fused_top1(fused);
    layer->zero_grad();
    auto x = x0.clone().requires_grad_(true);
    torch::manual_seed(42);  // the same jitter and dropout draws on every run
    SparseMlpOutput out;
    if (direct) {
      std::vector<torch::Tensor> wi, wo;
      for (const auto& ex : layer->experts->experts) {
        wi.push_back(ex->wi->weight);
        wo.push_back(ex->wo->weight);
      }
      auto flat = x.reshape({30, 72});
      const auto& rw = layer->router->classifier->weight;
      EXPECT_TRUE(top1_switch_applies(flat, rw, wi, wo));
      auto noise = torch::empty_like(flat).uniform_(0.9, 1.1);
      const int64_t cap = expert_capacity_for(r, 30, true);
      auto t = top1_switch(flat, noise, rw, wi, wo, {3, 10, CapacityMode::kFactor, cap, {}}, 0.3);
      out.hidden = t.out.view({3, 10, 72});
      out.router.logits = t.logits.view({3, 10, 4});
      out.router.expert_choice = t.expert.view({3, 10});
      out.router.kept = t.kept.view({3, 10});
    } else {
      out = layer->forward(x);
    }
    auto loss = (out.hidden * w).sum() + router_z_loss(out.router.logits) +
                load_balancing_loss(out.router.logits, out.router.expert_choice);
    loss.backward();
    Result res{out, {x.grad()}};
    for (const auto& p : layer->parameters()) res.grads.push_back(p.grad());
    return res;
  };
  const auto general = run(false, false), fused = run(true, false), direct = run(true, true);
  const auto& g = general.out.router;
  ASSERT_GT((~g.kept).sum().item<int64_t>(), 0) << "capacity factor 0.75 must drop tokens";
  for (const auto* other : {&fused, &direct}) {
    EXPECT_TRUE(torch::equal(other->out.router.expert_choice, g.expert_choice));
    EXPECT_TRUE(torch::equal(other->out.router.kept, g.kept));
    EXPECT_TRUE(tensors_close(other->out.router.logits, g.logits, 1e-5));
    EXPECT_TRUE(tensors_close(other->out.hidden, general.out.hidden, 1e-5));
    ASSERT_EQ(other->grads.size(), general.grads.size());
    for (size_t i = 0; i < general.grads.size(); ++i) {
      ASSERT_EQ(other->grads[i].defined(), general.grads[i].defined()) << i;
      if (!general.grads[i].defined()) continue;
      EXPECT_TRUE(tensors_close(other->grads[i], general.grads[i], 1e-4)) << i;
    }
  }
  // Exactly zero output for the dropped tokens on the fused path as well.
  EXPECT_EQ(fused.out.hidden.index({~g.kept}).abs().max().item<float>(), 0.0f);
}

TEST(SwitchGradients, FusedTop1NodeRejectsMismatchedShapes) {
  auto x = torch::randn({6, 8}), w = torch::randn({2, 8});
  std::vector<torch::Tensor> wi{torch::randn({4, 8}), torch::randn({4, 8})};
  std::vector<torch::Tensor> wo{torch::randn({8, 4}), torch::randn({8, 4})};
  const Top1Routing routing{2, 3, CapacityMode::kFixed, 3, {}};
  EXPECT_NO_THROW(top1_switch(x, {}, w, wi, wo, routing, 0.0));
  auto throws = [&](const torch::Tensor& rw, const std::vector<torch::Tensor>& i, const Top1Routing& r,
                    const char* what) {
    try {
      top1_switch(x, {}, rw, i, wo, r, 0.0);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  throws(torch::randn({2, 7}), wi, routing, "router weight [2, 7]");
  throws(w, {wi[0], torch::randn({4, 7})}, routing, "expert 1 weights [4, 7]");
  throws(w, wi, {2, 4, CapacityMode::kFixed, 3, {}}, "x [6, 8] for a batch of 2 x 4");
}

TEST(MixedPrecision, Bf16ProductsKeepRouterLogitsAndGradientsFloat32) {
  ModelConfig c;
  c.model_type = "switch_transformers";
  c.vocab_size = 64;
  c.d_model = 32;
  c.d_ff = 64;
  c.d_kv = 8;
  c.num_heads = 4;
  c.num_layers = c.num_decoder_layers = 2;
  c.num_experts = 4;
  c.encoder_sparse_step = c.decoder_sparse_step = 1;
  c.capacity_mode = CapacityMode::kFactor;
  c.dropout_rate = 0.0;
  torch::manual_seed(7);
  Seq2SeqModel model(c);
  model->eval();
  auto ids = torch::randint(2, 64, {2, 10}), labels = torch::randint(2, 64, {2, 6});
  Seq2SeqInputs in{ids, torch::ones({2, 10}, torch::kLong), shift_right(labels, 0, 0), {}, labels};
  auto run = [&](bool bf16) {
    model->zero_grad();
    Seq2SeqOutput out;
    {
      Bf16Products amp(bf16);
      out = model->forward(in);
    }
    out.loss.backward();
    std::vector<torch::Tensor> grads;
    for (auto& p : model->parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    return std::make_pair(out, grads);
  };
  auto [ref, ref_grads] = run(false);
  auto [amp, amp_grads] = run(true);
  EXPECT_FALSE(bf16_products_active());
  EXPECT_EQ(amp.logits.scalar_type(), torch::kFloat32);
  ASSERT_EQ(amp.routing.size(), 4u);
  for (const auto& [name, r] : amp.routing) EXPECT_EQ(r.logits.scalar_type(), torch::kFloat32) << name;
  EXPECT_NEAR(amp.ce_loss.item<double>(), ref.ce_loss.item<double>(), 0.02 * ref.ce_loss.item<double>());
  for (size_t i = 0; i < ref_grads.size(); ++i) {
    if (!ref_grads[i].defined()) continue;
    ASSERT_TRUE(amp_grads[i].defined());
    EXPECT_EQ(amp_grads[i].scalar_type(), torch::kFloat32);
    auto cos = torch::cosine_similarity(amp_grads[i].flatten(), ref_grads[i].flatten(), 0).item<double>();
    EXPECT_GT(cos, 0.97) << "parameter " << i;
  }
  // A weight changed in place has a new version: its bf16 copy is remade.
  {
    torch::NoGradGuard ng;
    model->parameters()[0].mul_(2.0);
  }
  auto again = run(true).first;
  EXPECT_GT((again.logits - amp.logits).abs().max().item<double>(), 1e-3);
}

// With padding ignored, padding takes no expert and no capacity: the real tokens' outputs do not
// depend on how much padding there is or what it holds, on the fused and the general path alike,
// with gradients.
TEST(SwitchGradients, IgnoredPaddingChangesNothingForRealTokens) {
  torch::manual_seed(12);
  RoutingOptions r;
  r.num_experts = 4;
  r.capacity_mode = CapacityMode::kFactor;
  r.capacity_factor_train = 1.0;  // tight: padding taking capacity would drop real tokens
  r.ignore_padding = true;
  FfnOptions f;
  f.d_model = 16;
  f.d_ff = 8;
  f.dropout = 0.0;
  SwitchSparseMlp layer(16, r, f);
  layer->train();
  const int64_t B = 2, S = 8, n = 5;  // row 1 has n real tokens, then padding
  auto x = torch::randn({B, S, 16});
  auto mask = torch::ones({B, S}, torch::kLong);
  mask[1].narrow(0, n, S - n).zero_();
  auto other = x.clone();
  other[1].narrow(0, n, S - n).normal_(0, 10);  // different padding content
  for (bool fused : {true, false}) {
    layer->set_fused_top1(fused);
    auto run = [&](const torch::Tensor& in) {
      layer->zero_grad();
      auto xi = in.clone().requires_grad_(true);
      auto out = layer->forward(xi, mask);
      auto real = mask.to(torch::kBool);
      auto loss = (out.hidden * out.hidden).sum() + router_z_loss(out.router.logits, out.router.active) +
                  load_balancing_loss(out.router.logits, out.router.expert_choice, out.router.active);
      loss.backward();
      return std::make_tuple(out, xi.grad(), layer->router->classifier->weight.grad().clone());
    };
    auto [a, ga, wa] = run(x);
    auto [b, gb, wb] = run(other);
    auto pad = mask == 0;
    EXPECT_FALSE(a.router.kept.masked_select(pad).any().item<bool>()) << fused;
    EXPECT_EQ(a.hidden.index({pad}).abs().max().item<float>(), 0.0f) << fused;
    EXPECT_EQ(a.router.capacity, expert_capacity_for(r, B * S - (S - n), true));
    auto real = mask != 0;
    EXPECT_TRUE(torch::equal(a.router.kept, b.router.kept));
    EXPECT_TRUE(tensors_close(a.hidden.index({real}), b.hidden.index({real}), 1e-6)) << fused;
    EXPECT_TRUE(tensors_close(ga.index({real}), gb.index({real}), 1e-5)) << fused;
    EXPECT_TRUE(tensors_close(wa, wb, 1e-5)) << fused;  // the router learns nothing from padding
  }
}

TEST(SwitchModel, PaddingDoesNotChangeRealTokens) {
  torch::NoGradGuard ng;
  auto model = load_model(test::fixture("switch-tiny-4"));
  auto g = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  // Row 0 has 11 real tokens and 6 pads; run it alone without the padding.
  auto padded = model->forward({g["input_ids"].narrow(0, 0, 1), g["attention_mask"].narrow(0, 0, 1),
                                g["decoder_input_ids"].narrow(0, 0, 1), {}, {}});
  auto bare = model->forward({g["input_ids"].narrow(0, 0, 1).narrow(1, 0, 11), {},
                              g["decoder_input_ids"].narrow(0, 0, 1), {}, {}});
  EXPECT_TRUE(tensors_close(padded.encoder_last_hidden_state.narrow(1, 0, 11), bare.encoder_last_hidden_state, 1e-5));
  EXPECT_TRUE(tensors_close(padded.logits, bare.logits, 1e-5));
}

}  // namespace
}  // namespace distill
