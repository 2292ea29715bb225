// The distillation pipeline: the one-step golden, student initialisation, losses, optimizers,
// resume determinism, divergence, and configuration errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/tokenizer.h"
#include "distill/pipeline/stage_training.h"
#include "distill/training/losses.h"
#include "distill/training/optim.h"
#include "distill/config/run_config.h"
#include "distill/training/student_init.h"
#include "distill/training/teacher_cache.h"
#include "distill/training/teacher_target_file.h"
#include "distill/training/trainer.h"
#include "distill/training/unit_matching.h"
#include "models/kernels/native_bf16.h"
#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/io/hf_config.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
using test::tensors_close;
namespace fs = std::filesystem;

json read_json(const std::string& rel) { return json::parse(read_text_file(test::fixture(rel))); }

// ---- the one-step golden -------------------------------------------------------------------

TEST(GoldenDistillStep, LossGradientsAndAdamWUpdate) {
  auto teacher = load_model(test::fixture("switch-tiny-4"));
  auto student = load_model(test::fixture("t5-student-from-switch-tiny-4"));
  teacher->eval();
  student->eval();  // the golden has dropout off
  auto io = test::load_fixture_tensors("distill-step-tiny-4/step_io.safetensors");
  auto g = read_json("distill-step-tiny-4/golden.json");
  torch::Tensor teacher_logits;
  {
    torch::NoGradGuard ng;
    teacher_logits = teacher->forward({io["input_ids"], io["attention_mask"], io["decoder_input_ids"], {}, {}}).logits;
  }
  EXPECT_TRUE(tensors_close(teacher_logits, io["teacher_logits"]));
  auto out = student->forward({io["input_ids"], io["attention_mask"], io["decoder_input_ids"], {}, {}});
  EXPECT_TRUE(tensors_close(out.logits, io["student_logits"]));
  auto loss = distillation_loss(out.logits, teacher_logits, io["labels"], {0.75, 0.25, 1.0, SoftLoss::kCe});
  EXPECT_NEAR(loss.total.item<double>(), g["loss"].get<double>(), 1e-4 * g["loss"].get<double>());
  EXPECT_NEAR(loss.hard.item<double>(), g["ce"].get<double>(), 1e-4 * g["ce"].get<double>());
  EXPECT_NEAR(loss.soft.item<double>(), g["soft_ce"].get<double>(), 1e-4 * g["soft_ce"].get<double>());
  EXPECT_NEAR(loss.kl.item<double>(), g["kl"].get<double>(), 2e-3 * g["kl"].get<double>());  // a small difference of large terms
  loss.total.backward();

  auto grads = test::load_fixture_tensors("distill-step-tiny-4/grads.safetensors");
  NamedParams params;
  for (auto& p : student->named_parameters()) params.emplace_back(p.key(), p.value());
  ASSERT_EQ(params.size(), grads.size());
  double sq = 0;
  for (auto& [name, p] : params) {
    ASSERT_TRUE(grads.count(name)) << name;
    EXPECT_TRUE(tensors_close(p.grad(), grads[name])) << name;
    sq += p.grad().square().sum().item<double>();
  }
  EXPECT_NEAR(std::sqrt(sq), g["grad_global_l2"].get<double>(), 1e-4 * g["grad_global_l2"].get<double>());

  // AdamW's first step is lr * g / (|g| + eps): for a gradient near eps (1e-8) a float32 rounding
  // difference of 1e-8 moves the update by lr/2. So the update is checked on the golden gradients,
  // which the loop above has just matched to 1e-4.
  for (auto& [name, p] : params) p.mutable_grad().copy_(grads[name]);
  OptimizerConfig oc;  // the golden's AdamW: lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01
  AdamW adamw(params, oc);
  adamw.step(1e-3);
  auto after = test::load_fixture_tensors("distill-step-tiny-4/params_after_step.safetensors");
  for (auto& [name, p] : params) EXPECT_TRUE(tensors_close(p, after[name], 1e-4)) << name;
}

// ---- student initialisation ---------------------------------------------------------------

class StudentInitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    teacher_ = load_model(test::fixture("switch-tiny-4"));
    config_ = student_config(teacher_->config(), std::nullopt, 0.0);
  }
  Seq2SeqModel fresh_student() {
    torch::manual_seed(0);
    return Seq2SeqModel(config_);
  }
  Seq2SeqModel teacher_{nullptr};
  ModelConfig config_;
};

TEST_F(StudentInitTest, CopiesExactlyTheNonExpertTensors) {
  auto keymap = read_json("t5-student-from-switch-tiny-4/keymap.json");
  std::set<std::string> expected_copied, expected_from_experts;
  for (auto it = keymap["switch_to_t5"].begin(); it != keymap["switch_to_t5"].end(); ++it)
    if (!it.value().is_null()) expected_copied.insert(it.value().get<std::string>());
  for (auto it = keymap["t5_keys_initialised_from_experts"].begin(); it != keymap["t5_keys_initialised_from_experts"].end(); ++it)
    expected_from_experts.insert(it.key());

  auto student = fresh_student();
  auto r = init_student(student, teacher_, FfnInit::kMean, true);
  EXPECT_EQ(std::set<std::string>(r.copied.begin(), r.copied.end()), expected_copied);
  EXPECT_EQ(std::set<std::string>(r.from_experts.begin(), r.from_experts.end()), expected_from_experts);
  EXPECT_TRUE(r.fresh.empty());
  auto tp = teacher_->named_parameters();
  for (const auto& name : r.copied) {
    auto tname = name;
    auto pos = tname.find(".DenseReluDense.");
    if (pos != std::string::npos) tname.replace(pos, 16, ".mlp.");
    EXPECT_TRUE(torch::equal(student->named_parameters()[name], tp[tname])) << name;
  }
  // mean init is what the Hugging Face fixture student was built with.
  auto reference = load_model(test::fixture("t5-student-from-switch-tiny-4"));
  for (const auto& p : reference->named_parameters())
    EXPECT_TRUE(tensors_close(student->named_parameters()[p.key()], p.value(), 1e-6)) << p.key();
}

TEST_F(StudentInitTest, EachFfnModeDoesWhatItSays) {
  const std::string layer = "encoder.block.1.layer.1.";
  auto expert = [&](int e) { return teacher_->named_parameters()[layer + "mlp.experts.expert_" + std::to_string(e) + ".wi.weight"]; };
  std::map<std::string, at::Tensor> freq = {{layer, torch::tensor({0.1, 0.2, 0.6, 0.1}, torch::kDouble)},
                                            {"decoder.block.1.layer.2.", torch::tensor({0.7, 0.1, 0.1, 0.1}, torch::kDouble)}};
  const std::string wi = layer + "DenseReluDense.wi.weight";

  auto s = fresh_student();
  auto before = s->named_parameters()[wi].clone();
  auto r = init_student(s, teacher_, FfnInit::kFresh, true);
  EXPECT_EQ(r.fresh.size(), 4u);
  EXPECT_TRUE(torch::equal(s->named_parameters()[wi], before));

  s = fresh_student();
  init_student(s, teacher_, FfnInit::kRouterWeighted, true, freq);
  EXPECT_TRUE(tensors_close(s->named_parameters()[wi], 0.1 * expert(0) + 0.2 * expert(1) + 0.6 * expert(2) + 0.1 * expert(3), 1e-6));

  s = fresh_student();
  init_student(s, teacher_, FfnInit::kTopExpert, true, freq);
  EXPECT_TRUE(torch::equal(s->named_parameters()[wi], expert(2)));

  s = fresh_student();
  auto emb = s->shared->weight.clone();
  r = init_student(s, teacher_, FfnInit::kMean, /*copy_non_expert=*/false);
  EXPECT_TRUE(torch::equal(s->shared->weight, emb));
  EXPECT_EQ(r.copied.size(), 0u);
  EXPECT_EQ(r.from_experts.size(), 4u);

  EXPECT_THROW(init_student(s, teacher_, FfnInit::kTopExpert, true, {}), Error);  // needs frequencies
  EXPECT_THROW(parse_ffn_init("median"), ConfigError);
}

// Each expert's FFN of one sparse layer applied to x [N, D].
std::vector<at::Tensor> expert_outputs(Seq2SeqModel& teacher, const std::string& stack, int64_t block, const at::Tensor& x) {
  auto b = stack == "encoder" ? teacher->encoder->blocks[static_cast<size_t>(block)] : teacher->decoder->blocks[static_cast<size_t>(block)];
  std::vector<at::Tensor> out;
  for (auto& e : b->ff->sparse()->experts->experts) out.push_back(e->forward(x));
  return out;
}

TEST_F(StudentInitTest, ConcatOfAllExpertsWithPlainWeightsIsTheirMeanExactly) {
  torch::NoGradGuard ng;
  const int64_t E = teacher_->config().num_experts, F = teacher_->config().d_ff;
  std::map<std::string, at::Tensor> freq = {{"encoder.block.1.layer.1.", torch::tensor({0.1, 0.2, 0.6, 0.1}, torch::kDouble)},
                                            {"decoder.block.1.layer.2.", torch::tensor({0.7, 0.1, 0.1, 0.1}, torch::kDouble)}};
  FfnInitOptions o{FfnInit::kConcatTopK, E, /*plain_weights=*/true};
  ASSERT_EQ(student_d_ff(teacher_->config(), std::nullopt, o), E * F);
  config_ = student_config(teacher_->config(), student_d_ff(teacher_->config(), std::nullopt, o), 0.0);
  auto s = fresh_student();
  auto r = init_student(s, teacher_, o, true, freq);
  EXPECT_EQ(r.from_experts.size(), 4u);
  EXPECT_TRUE(r.fresh.empty());
  EXPECT_EQ(r.widened.size(), 4u);  // the dense FFNs of blocks 0, tiled
  teacher_->eval();
  s->eval();
  auto x = torch::randn({5, teacher_->config().d_model});
  auto experts = expert_outputs(teacher_, "encoder", 1, x);
  auto mean = torch::stack(experts).mean(0);
  auto student_ffn = s->encoder->blocks[1]->ff->dense()->forward(x);
  EXPECT_TRUE(tensors_close(student_ffn, mean, 1e-5));
  // A tiled dense FFN computes what the teacher's did.
  EXPECT_TRUE(tensors_close(s->encoder->blocks[0]->ff->dense()->forward(x), teacher_->encoder->blocks[0]->ff->dense()->forward(x), 1e-5));

  // Frequency weights over the top 2 (experts 2 and 1 of the encoder layer: shares 0.6 / 0.8, 0.2 / 0.8).
  o = {FfnInit::kConcatTopK, 2, false};
  config_ = student_config(teacher_->config(), student_d_ff(teacher_->config(), std::nullopt, o), 0.0);
  s = fresh_student();
  init_student(s, teacher_, o, true, freq);
  s->eval();
  EXPECT_TRUE(tensors_close(s->encoder->blocks[1]->ff->dense()->forward(x), 0.75 * experts[2] + 0.25 * experts[1], 1e-5));
  // A width that is not top_k x d_ff is refused, naming the tensor.
  config_ = student_config(teacher_->config(), 3 * F, 0.0);
  s = fresh_student();
  EXPECT_THROW(init_student(s, teacher_, o, true, freq), ConfigError);
}

TEST_F(StudentInitTest, AlignedMergeUndoesAPermutationOfHiddenUnits) {
  torch::NoGradGuard ng;
  // A teacher whose experts of one layer are the same FFN with its hidden units shuffled: a plain
  // mean blurs them, the aligned merge gives that FFN back.
  const std::string layer = "encoder.block.1.layer.1.";
  auto params = teacher_->named_parameters();
  const int64_t E = teacher_->config().num_experts, F = teacher_->config().d_ff;
  auto wi0 = params[layer + "mlp.experts.expert_0.wi.weight"].clone(), wo0 = params[layer + "mlp.experts.expert_0.wo.weight"].clone();
  for (int64_t e = 1; e < E; ++e) {
    auto perm = torch::randperm(F);
    params[layer + "mlp.experts.expert_" + std::to_string(e) + ".wi.weight"].copy_(wi0.index_select(0, perm));
    params[layer + "mlp.experts.expert_" + std::to_string(e) + ".wo.weight"].copy_(wo0.index_select(1, perm));
  }
  std::map<std::string, at::Tensor> freq = {{layer, torch::tensor({0.4, 0.2, 0.3, 0.1}, torch::kDouble)},
                                            {"decoder.block.1.layer.2.", torch::tensor({0.7, 0.1, 0.1, 0.1}, torch::kDouble)}};
  auto s = fresh_student();
  init_student(s, teacher_, FfnInitOptions{FfnInit::kMergeAligned}, true, freq);
  EXPECT_TRUE(tensors_close(s->named_parameters()[layer + "DenseReluDense.wi.weight"], wi0, 1e-5));
  EXPECT_TRUE(tensors_close(s->named_parameters()[layer + "DenseReluDense.wo.weight"], wo0, 1e-5));
  s = fresh_student();
  init_student(s, teacher_, FfnInit::kMean, true);
  EXPECT_FALSE(tensors_close(s->named_parameters()[layer + "DenseReluDense.wi.weight"], wi0, 1e-2));
}

TEST(UnitMatching, TheHungarianMethodFindsTheCheapestAssignment) {
  auto cost = torch::tensor({{4.0, 1.0, 3.0}, {2.0, 0.0, 5.0}, {3.0, 2.0, 2.0}});
  EXPECT_EQ(min_cost_assignment(cost), (std::vector<int64_t>{1, 0, 2}));  // 1 + 2 + 2 = 5, the optimum
  // Against every permutation of a random 6 x 6.
  torch::manual_seed(6);
  auto c = torch::rand({6, 6}, torch::kDouble);
  auto got = min_cost_assignment(c);
  auto sum = [&](const std::vector<int64_t>& p) {
    double t = 0;
    for (size_t i = 0; i < p.size(); ++i) t += c[static_cast<int64_t>(i)][p[i]].item<double>();
    return t;
  };
  std::vector<int64_t> p = {0, 1, 2, 3, 4, 5};
  double best = 1e9;
  do best = std::min(best, sum(p));
  while (std::next_permutation(p.begin(), p.end()));
  EXPECT_NEAR(sum(got), best, 1e-12);
}

TEST_F(StudentInitTest, RoutingFrequencySumsToOne) {
  auto g = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  Batch b{g["input_ids"], g["attention_mask"], g["decoder_input_ids"], g["labels"], 0, 0, {}};
  auto f = routing_frequency(teacher_, {b});
  ASSERT_EQ(f.size(), 2u);
  for (const auto& [k, v] : f) EXPECT_NEAR(v.sum().item<double>(), 1.0, 1e-9) << k;
  // encoder.block.1.layer.1 golden choices over the 28 real tokens: count of expert 3.
  auto choice = g["encoder.block.1.layer.1.expert_choice"].masked_select(g["attention_mask"].to(torch::kBool));
  EXPECT_NEAR(f["encoder.block.1.layer.1."][3].item<double>(), (choice == 3).sum().item<double>() / choice.numel(), 1e-9);
}

// ---- losses, optimizers, schedules ---------------------------------------------------------

TEST(DistillLoss, TemperatureScalingAndKl) {
  torch::manual_seed(1);
  auto s = torch::randn({2, 3, 7}), t = torch::randn({2, 3, 7});
  auto labels = torch::tensor({{1, 2, -100}, {3, -100, -100}});
  auto d1 = distillation_loss(s, t, labels, {0.0, 1.0, 2.0, SoftLoss::kCe});
  // Manual soft CE at T = 2, over the three real tokens, times T^2.
  auto mask = labels != -100;
  auto ce = -(torch::softmax(t / 2, -1) * torch::log_softmax(s / 2, -1)).sum(-1);
  EXPECT_NEAR(d1.soft.item<double>(), ce.masked_select(mask).mean().item<double>() * 4, 1e-5);
  // KL is zero when the student equals the teacher, CE is then the teacher's entropy.
  auto same = distillation_loss(t, t, labels, {0.0, 1.0, 1.0, SoftLoss::kKl});
  EXPECT_NEAR(same.soft.item<double>(), 0.0, 1e-6);
  auto ref = distillation_loss(s, t, labels, {0.75, 0.25, 1.0, SoftLoss::kCe});
  EXPECT_NEAR(ref.total.item<double>(), 0.75 * ref.hard.item<double>() + 0.25 * ref.soft.item<double>(), 1e-6);
}

TEST(DistillLoss, TopKTargetsWithTheWholeVocabularyGiveTheFullLoss) {
  torch::manual_seed(2);
  auto t = torch::randn({2, 3, 7}) * 2;
  auto labels = torch::tensor({{1, 2, -100}, {3, -100, -100}});
  for (auto kind : {SoftLoss::kCe, SoftLoss::kKl, SoftLoss::kReverseKl, SoftLoss::kJsd}) {
    for (double T : {1.0, 2.0}) {
      const DistillLossOptions o{0.75, 0.25, T, kind, 0.3};
      auto s1 = torch::randn({2, 3, 7}, torch::requires_grad());
      auto s2 = s1.detach().clone().requires_grad_(true);
      auto full = distillation_loss(s1, t, labels, o);
      auto top = distillation_loss(s2, top_k_soft_targets(t, 7, T), labels, o);
      EXPECT_NEAR(top.total.item<double>(), full.total.item<double>(), 1e-5);
      EXPECT_NEAR(top.kl.item<double>(), full.kl.item<double>(), 1e-5);
      full.total.backward();
      top.total.backward();
      EXPECT_TRUE(tensors_close(s2.grad(), s1.grad(), 1e-4)) << static_cast<int>(kind);
    }
  }
}

TEST(DistillLoss, ReverseKlAndJsdAreWhatTheySayAndJsdEndsAtTheTwoKls) {
  torch::manual_seed(4);
  // Mild logits: the JSD nears its ends once beta is small against the ratios of the two distributions.
  auto s = torch::randn({2, 3, 9}, torch::kDouble) * 0.7, t = torch::randn({2, 3, 9}, torch::kDouble) * 0.7;
  auto labels = torch::tensor({{1, 2, -100}, {3, -100, 4}});
  auto mask = labels != -100;
  auto p = torch::softmax(t, -1), q = torch::softmax(s, -1);
  auto mean = [&](const torch::Tensor& per_token) { return per_token.masked_select(mask).mean().item<double>(); };
  const double forward = mean((p * (p.log() - q.log())).sum(-1)), reverse = mean((q * (q.log() - p.log())).sum(-1));
  auto soft = [&](SoftLoss kind, double beta) { return distillation_loss(s, t, labels, {0.0, 1.0, 1.0, kind, beta}).soft.item<double>(); };
  EXPECT_NEAR(soft(SoftLoss::kKl, 0.5), forward, 1e-6);
  EXPECT_NEAR(soft(SoftLoss::kReverseKl, 0.5), reverse, 1e-6);
  EXPECT_GT(std::abs(forward - reverse), 0.02);  // the two differ here, so the checks below tell them apart
  // The generalised JSD with mixture m = b p + (1 - b) q, divided by b (1 - b).
  const double b = 0.3;
  auto m = b * p + (1 - b) * q;
  const double jsd = mean(b * (p * (p.log() - m.log())).sum(-1) + (1 - b) * (q * (q.log() - m.log())).sum(-1)) / (b * (1 - b));
  EXPECT_NEAR(soft(SoftLoss::kJsd, b), jsd, 1e-5);
  // Its ends: 0 and 1 are the two KLs, and it tends to them continuously.
  EXPECT_NEAR(soft(SoftLoss::kJsd, 0.0), forward, 1e-6);
  EXPECT_NEAR(soft(SoftLoss::kJsd, 1.0), reverse, 1e-6);
  for (double eps : {1e-2, 1e-3}) {  // (float32 arithmetic: closer than 1e-3 the cancellation shows)
    EXPECT_NEAR(soft(SoftLoss::kJsd, eps), forward, 10 * eps * forward) << eps;
    EXPECT_NEAR(soft(SoftLoss::kJsd, 1 - eps), reverse, 10 * eps * reverse) << eps;
  }
  EXPECT_LT(std::abs(soft(SoftLoss::kJsd, 1e-3) - forward), std::abs(soft(SoftLoss::kJsd, 1e-2) - forward));
  // All vanish when the student is the teacher.
  for (auto kind : {SoftLoss::kKl, SoftLoss::kReverseKl, SoftLoss::kJsd})
    EXPECT_NEAR(distillation_loss(t, t, labels, {0.0, 1.0, 1.0, kind, b}).soft.item<double>(), 0.0, 1e-6);
  EXPECT_THROW(parse_soft_loss("kld"), ConfigError);
}

TEST(DistillLoss, HiddenStateTermsAndTheirLayerMap) {
  auto pairs = parse_hidden_layer_map({}, 2, 3, "k");
  ASSERT_EQ(pairs.size(), 5u);
  EXPECT_FALSE(pairs[0].decoder);
  EXPECT_EQ(pairs[1].student, 2);
  EXPECT_TRUE(pairs[4].decoder);
  pairs = parse_hidden_layer_map({"decoder.1:decoder.3", "encoder.0"}, 2, 3, "k");
  EXPECT_TRUE(pairs[0].decoder);
  EXPECT_EQ(pairs[0].student, 1);
  EXPECT_EQ(pairs[0].teacher, 3);
  EXPECT_EQ(pairs[1].teacher, 0);
  for (const char* bad : {"encoder.3", "decoder.1:encoder.1", "block.1", "encoder.", "encoder.-1", "encoder.1:"})
    EXPECT_THROW(parse_hidden_layer_map({bad}, 2, 3, "distillation.hidden_layers"), ConfigError) << bad;

  torch::manual_seed(5);
  auto s = torch::randn({2, 4, 6}), t = torch::randn({2, 4, 6});
  auto mask = torch::tensor({{1, 1, 1, 0}, {1, 1, 0, 0}});
  const std::vector<HiddenLayerPair> one = {{false, 0, 0}};
  auto m = mask.to(torch::kBool);
  auto mse = hidden_state_loss({s}, {}, {t}, {}, one, mask, {}, HiddenLoss::kMse);
  EXPECT_NEAR(mse.item<double>(), (s - t).pow(2).mean(-1).masked_select(m).mean().item<double>(), 1e-6);
  auto cos = hidden_state_loss({s}, {}, {t}, {}, one, mask, {}, HiddenLoss::kCosine);
  EXPECT_NEAR(cos.item<double>(), (1 - torch::cosine_similarity(s, t, -1)).masked_select(m).mean().item<double>(), 1e-6);
  EXPECT_NEAR(hidden_state_loss({s}, {}, {s * 3}, {}, one, mask, {}, HiddenLoss::kCosine).item<double>(), 0.0, 1e-6);
}

TEST(DistillLoss, NoTermChangesWithThePaddingLength) {
  torch::NoGradGuard ng;
  auto teacher = load_model(test::fixture("switch-tiny-4"));
  auto student = Seq2SeqModel(student_config(teacher->config(), std::nullopt, 0.0));
  init_student(student, teacher, FfnInit::kMean, true);
  teacher->eval();
  student->eval();
  auto g = test::load_fixture_tensors("switch-tiny-4/golden.safetensors");
  const auto pairs = parse_hidden_layer_map({}, teacher->config().num_layers, teacher->config().num_decoder_layers, "k");
  auto losses = [&](int64_t extra) {
    const auto pad = [&](const at::Tensor& x, int64_t value) {
      return torch::constant_pad_nd(x, {0, extra}, static_cast<double>(value));
    };
    Seq2SeqInputs in{pad(g["input_ids"], 0), pad(g["attention_mask"], 0), pad(g["decoder_input_ids"], 0), {}, {}};
    auto labels = pad(g["labels"], -100);
    auto t = teacher->forward(in, true);
    auto s = student->forward(in, true);
    std::vector<double> out;
    for (auto kind : {SoftLoss::kCe, SoftLoss::kReverseKl, SoftLoss::kJsd}) {
      auto d = distillation_loss(s.logits, t.logits, labels, {0.75, 0.25, 2.0, kind, 0.5});
      out.push_back(d.total.item<double>());
      out.push_back(distillation_loss(s.logits, top_k_soft_targets(t.logits, 5, 2.0), labels, {0.75, 0.25, 2.0, kind, 0.5})
                        .total.item<double>());
    }
    for (auto kind : {HiddenLoss::kMse, HiddenLoss::kCosine}) {
      out.push_back(hidden_state_loss(s.encoder_hidden_states, s.decoder_hidden_states, t.encoder_hidden_states,
                                      t.decoder_hidden_states, pairs, in.attention_mask, labels != -100, kind)
                        .item<double>());
    }
    return out;
  };
  const auto base = losses(0), padded = losses(7);
  ASSERT_EQ(base.size(), padded.size());
  for (size_t i = 0; i < base.size(); ++i) EXPECT_NEAR(padded[i], base[i], 1e-5 * std::abs(base[i])) << i;
}

TEST(DistillLoss, TopKKeepsTheRestOfTheMassAsOneClass) {
  torch::manual_seed(3);
  auto s = torch::randn({1, 2, 6}), t = torch::randn({1, 2, 6});
  auto labels = torch::tensor({{1, 2}});
  auto targets = top_k_soft_targets(t, 2, 1.0);
  auto p = torch::softmax(t, -1), q = torch::softmax(s, -1);
  auto sorted = p.sort(-1, /*descending=*/true);
  EXPECT_TRUE(tensors_close(targets.probs, std::get<0>(sorted).narrow(-1, 0, 2)));
  EXPECT_TRUE(torch::equal(targets.ids, std::get<1>(sorted).narrow(-1, 0, 2)));
  EXPECT_TRUE(tensors_close(targets.rest, 1 - targets.probs.sum(-1)));
  // Cross-entropy of the 3-class teacher (top 2 + rest) against the student's 3 classes.
  auto q_top = q.gather(-1, targets.ids);
  auto ce = -(targets.probs * q_top.log()).sum(-1) - targets.rest * (1 - q_top.sum(-1)).log();
  auto d = distillation_loss(s, targets, labels, {0.0, 1.0, 1.0, SoftLoss::kCe});
  EXPECT_NEAR(d.soft.item<double>(), ce.mean().item<double>(), 1e-5);
  // KL of identical coarse distributions is zero.
  EXPECT_NEAR(distillation_loss(t, targets, labels, {0.0, 1.0, 1.0, SoftLoss::kKl}).soft.item<double>(), 0.0, 1e-6);
}

TEST(Optim, SchedulesHaveTheirShapes) {
  ScheduleConfig s;
  s.warmup_steps = 10;
  s.name = "constant";
  EXPECT_DOUBLE_EQ(schedule_lr(s, 1.0, 1, 100), 1.0);
  s.name = "linear_warmup";
  EXPECT_DOUBLE_EQ(schedule_lr(s, 1.0, 5, 100), 0.5);
  EXPECT_DOUBLE_EQ(schedule_lr(s, 1.0, 50, 100), 1.0);
  s.name = "inverse_sqrt";
  EXPECT_DOUBLE_EQ(schedule_lr(s, 1.0, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(schedule_lr(s, 1.0, 40, 100), 0.5);
  s.name = "cosine";
  s.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(schedule_lr(s, 1.0, 10, 110), 1.0);
  EXPECT_NEAR(schedule_lr(s, 1.0, 60, 110), 0.55, 1e-12);
  EXPECT_NEAR(schedule_lr(s, 1.0, 110, 110), 0.1, 1e-12);
}

// AdamW's fused update (one parallel region over every parameter, chunks that start and end inside
// parameters) against the textbook tensor ops: three steps, parameters of many sizes, one without a
// gradient (left alone), a non-contiguous one (the tensor-op path).
TEST(Optim, AdamWFusedUpdateMatchesTheTensorOpsAcrossChunkBoundaries) {
  torch::manual_seed(3);
  std::vector<std::vector<int64_t>> shapes{{7}, {300, 129}, {1}, {40000}, {33, 17}, {5, 6}};
  NamedParams params;
  std::vector<torch::Tensor> ref, m, v;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto p = torch::randn(shapes[i]);
    if (i == 5) p = torch::randn({6, 5}).t();  // not contiguous
    params.emplace_back("p" + std::to_string(i), p.requires_grad_(true));
    ref.push_back(p.detach().clone());
    m.push_back(torch::zeros_like(ref.back()));
    v.push_back(torch::zeros_like(ref.back()));
  }
  OptimizerConfig c;
  AdamW opt(params, c);
  const double lr = 0.01;
  for (int step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      auto& p = params[i].second;
      p.mutable_grad() = i == 2 ? torch::Tensor() : torch::randn_like(p);
    }
    opt.step(lr);
    const double bc1 = 1 - std::pow(c.beta1, step), bc2 = 1 - std::pow(c.beta2, step);
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& g = params[i].second.grad();
      if (!g.defined()) continue;
      ref[i].mul_(1 - lr * c.weight_decay);
      m[i].mul_(c.beta1).add_(g, 1 - c.beta1);
      v[i].mul_(c.beta2).addcmul_(g, g, 1 - c.beta2);
      ref[i].addcdiv_(m[i], (v[i].sqrt() / std::sqrt(bc2)).add_(c.eps), -lr / bc1);
    }
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(tensors_close(params[i].second.detach(), ref[i], 1e-6)) << "step " << step << " parameter " << i;
    }
  }
}

TEST(Optim, AdafactorMinimisesAQuadraticAndRoundTripsItsState) {
  torch::manual_seed(2);
  auto w = torch::randn({6, 4}).requires_grad_(true);
  auto b = torch::randn({4}).requires_grad_(true);
  OptimizerConfig c;
  c.name = "adafactor";
  c.weight_decay = 0;
  auto opt = make_optimizer({{"w", w}, {"b", b}}, c);
  auto loss_of = [&] { return w.square().sum() + b.square().sum(); };
  const double start = loss_of().item<double>();
  for (int i = 0; i < 200; ++i) {
    opt->zero_grad();
    loss_of().backward();
    opt->step(0.05);
  }
  EXPECT_LT(loss_of().item<double>(), 0.05 * start);
  auto state = opt->state();
  std::map<std::string, at::Tensor> m(state.begin(), state.end());
  auto other = make_optimizer({{"w", w}, {"b", b}}, c);
  other->load_state(m, "test");
  EXPECT_EQ(other->steps(), 200);
  m.erase("row/w");
  EXPECT_THROW(other->load_state(m, "test"), CheckpointError);
}

// ---- training: resume determinism and divergence --------------------------------------------

ModelConfig tiny_switch() {
  ModelConfig c;
  c.model_type = "switch_transformers";
  c.vocab_size = 300;
  c.d_model = 16;
  c.d_ff = 32;
  c.d_kv = 4;
  c.num_heads = 4;
  c.num_layers = 2;
  c.num_decoder_layers = 2;
  c.num_experts = 4;
  c.encoder_sparse_step = c.decoder_sparse_step = 2;
  c.capacity_mode = CapacityMode::kFactor;
  c.dropout_rate = 0.1;
  return c;
}

// Span corruption into 32 input and 12 target tokens over a 300-id vocabulary.
std::shared_ptr<const Objective> tiny_span_corruption() {
  ObjectiveOptions o;
  o.input_length = 32;
  o.target_length = 12;
  o.vocab_size = 300;
  o.num_sentinels = 50;
  return std::make_shared<SpanCorruption>(o);
}

std::shared_ptr<Dataset> tiny_dataset() {
  std::vector<TokenizedDoc> docs;
  std::mt19937 rng(5);
  for (int d = 0; d < 30; ++d) {
    TokenizedDoc doc;
    for (int i = 0; i < 120; ++i) doc.text.push_back(3 + static_cast<int32_t>(rng() % 200));
    docs.push_back(doc);
  }
  BatchingOptions b;
  b.batch_size = 4;
  b.seed = 9;
  return std::make_shared<Dataset>(docs, tiny_span_corruption(), b);
}

std::vector<double> losses_in(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

TrainerOptions tiny_options(const std::string& dir, int64_t steps, bool resume) {
  TrainerOptions o;
  o.stage = "test";
  o.dir = dir;
  o.training.steps = steps;
  o.training.log_interval = 1;
  o.training.eval_interval = 0;
  o.training.checkpoint_interval = 5;
  o.training.schedule.name = "linear_warmup";
  o.training.schedule.warmup_steps = 4;
  o.seed = 11;
  o.resume = resume;
  return o;
}

TEST(Trainer, ResumeGivesTheSameLossTrajectory) {
  test::TempDir dir;
  auto data = tiny_dataset();
  auto fresh_model = [] {
    torch::manual_seed(3);
    return Seq2SeqModel(tiny_switch());
  };
  Trainer(fresh_model(), data, nullptr, tiny_options(dir.file("straight"), 16, false)).run();
  Trainer(fresh_model(), data, nullptr, tiny_options(dir.file("resumed"), 7, false)).run();
  // A new process would start from a fresh model: the checkpoint must carry everything.
  Trainer(fresh_model(), data, nullptr, tiny_options(dir.file("resumed"), 16, true)).run();
  auto straight = losses_in(dir.file("straight/metrics.jsonl"));
  auto resumed = losses_in(dir.file("resumed/metrics.jsonl"));
  ASSERT_EQ(straight.size(), 16u);
  ASSERT_EQ(resumed.size(), 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_DOUBLE_EQ(resumed[i], straight[i]) << "step " << i + 1;
  auto a = load_model(dir.file("straight/model")), b = load_model(dir.file("resumed/model"));
  for (const auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), b->named_parameters()[p.key()])) << p.key();
  // keep_checkpoints (2) is honoured.
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir.file("straight/checkpoints"))) n += e.is_directory();
  EXPECT_EQ(n, 2u);
}

TEST(StudentInit, SeededInitPairsATeacherWithItsDenseBaseline) {
  const ModelConfig sparse = tiny_switch(), dense = sparse.dense_counterpart();
  Seq2SeqModel a(sparse), b(dense), c(sparse);
  init_from_scratch(a, 0.1, 5);
  init_from_scratch(b, 0.1, 5);
  init_from_scratch(c, 0.1, 6);
  auto dense_params = b->named_parameters();
  int shared = 0;
  for (const auto& p : a->named_parameters()) {
    const auto* q = dense_params.find(p.key());
    if (q == nullptr) continue;  // experts, routers, and the Switch's dense FFNs ("mlp")
    ++shared;
    EXPECT_TRUE(torch::equal(p.value(), *q)) << p.key();  // the same draw in both models
    if (p.key().find("layer_norm") == std::string::npos) {
      EXPECT_FALSE(torch::equal(p.value(), c->named_parameters()[p.key()])) << p.key();  // another seed, another draw
    }
  }
  EXPECT_GT(shared, 20);
  // Tensors of one model are drawn independently of each other.
  auto q = a->named_parameters()["encoder.block.0.layer.0.SelfAttention.q.weight"];
  auto k = a->named_parameters()["encoder.block.0.layer.0.SelfAttention.k.weight"];
  EXPECT_FALSE(torch::equal(q, k));
  EXPECT_LE(q.abs().max().item<double>(), 2 * std::sqrt(0.1 / 16) + 1e-7);  // truncated at two sd
}

TEST(Trainer, ExpertGradientScalingTouchesOnlyExperts) {
  torch::manual_seed(4);
  Seq2SeqModel model(tiny_switch());
  auto batch = tiny_dataset()->collate_batch(tiny_dataset()->make_epoch(0), 0);
  model->forward({batch.input_ids, batch.attention_mask, batch.decoder_input_ids, {}, batch.labels}).loss.backward();
  NamedParams params;
  std::map<std::string, torch::Tensor> before;
  for (auto& p : model->named_parameters()) {
    params.emplace_back(p.key(), p.value());
    if (p.value().grad().defined()) before[p.key()] = p.value().grad().clone();
  }
  scale_expert_gradients(params, 0.5);  // 1/sqrt(4 experts)
  int experts = 0;
  for (auto& [name, p] : params) {
    if (!before.count(name)) continue;
    if (is_expert_parameter(name)) {
      ++experts;
      EXPECT_TRUE(torch::allclose(p.grad(), before[name] * 0.5)) << name;
    } else {
      EXPECT_TRUE(torch::equal(p.grad(), before[name])) << name;
    }
  }
  EXPECT_GT(experts, 0);
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  test::TempDir dir;
  torch::manual_seed(3);
  Seq2SeqModel model(tiny_switch());
  auto o = tiny_options(dir.file("run"), 12, false);
  Trainer(model, tiny_dataset(), nullptr, o).run();  // leaves checkpoints up to step 12
  const auto last = latest_checkpoint(dir.file("run"));
  {
    torch::NoGradGuard ng;
    model->shared->weight.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  auto o2 = tiny_options(dir.file("run2"), 12, false);
  try {
    Trainer(model, tiny_dataset(), nullptr, o2).run();
    FAIL() << "expected a TrainingError";
  } catch (const TrainingError& e) {
    EXPECT_NE(std::string(e.what()).find("loss is nan at step 1"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.file("run2/model")));
  EXPECT_EQ(latest_checkpoint(dir.file("run")), last);
}

// ---- the teacher cache ---------------------------------------------------------------------

// Documents from a sparse Markov chain (3 successors per token), so masked spans are partly
// predictable and distillation has something to carry.
std::vector<TokenizedDoc> markov_docs(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<TokenizedDoc> docs;
  for (int d = 0; d < n; ++d) {
    TokenizedDoc doc;
    int32_t x = 3 + static_cast<int32_t>(rng() % 200);
    for (int i = 0; i < 120; ++i) {
      doc.text.push_back(x);
      x = 3 + (x * 7 + 11 * static_cast<int32_t>(rng() % 3)) % 200;
    }
    docs.push_back(doc);
  }
  return docs;
}

std::shared_ptr<Dataset> markov_dataset(uint32_t seed, bool static_examples, bool shuffle = true) {
  BatchingOptions b;
  b.batch_size = 4;
  b.seed = seed;
  b.shuffle = shuffle;
  b.static_examples = static_examples;
  return std::make_shared<Dataset>(markov_docs(30, seed), tiny_span_corruption(), b);
}

ModelConfig cache_teacher_config() {
  auto c = tiny_switch();
  c.capacity_factor_eval = 100.0;  // nothing dropped: a token's targets do not depend on its batch
  return c;
}

TEST(TeacherCache, FillsOnceThenServesEveryEpochWithoutTheTeacher) {
  torch::manual_seed(5);
  Seq2SeqModel teacher(cache_teacher_config());
  teacher->eval();
  auto data = markov_dataset(3, true);
  TeacherCache cache(8, 2.0);
  int teacher_calls = 0;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    auto e = data->make_epoch(epoch);
    for (size_t i = 0; i < e.batches.size(); ++i) {
      auto b = data->collate_batch(e, i);
      auto logits = [&] {
        torch::NoGradGuard ng;
        return teacher->forward({b.input_ids, b.attention_mask, b.decoder_input_ids, {}, {}}).logits;
      };
      auto calls = [&] {
        ++teacher_calls;
        return logits();
      };
      auto got = cache.targets(b, calls);
      auto fresh = top_k_soft_targets(logits(), 8, 2.0);
      auto real = (b.labels != -100).unsqueeze(-1);  // padding positions are empty in the cache
      EXPECT_TRUE(torch::equal(got.ids, fresh.ids * real)) << "epoch " << epoch << " batch " << i;
      EXPECT_TRUE(tensors_close(got.probs, fresh.probs * real, 1e-5));
      EXPECT_TRUE(tensors_close(got.rest, fresh.rest * real.squeeze(-1), 1e-5));
    }
    if (epoch == 0) {
      EXPECT_EQ(teacher_calls, static_cast<int>(e.batches.size()));
    }
  }
  EXPECT_EQ(teacher_calls, cache.misses());
  EXPECT_EQ(cache.hits() + cache.misses(), 3 * static_cast<int64_t>(data->make_epoch(0).batches.size()));
  EXPECT_GT(cache.megabytes(), 0.0);
}

TEST(TeacherTargetFile, ServesWhatTheTeacherGivesAndRefusesAStaleOrDamagedFile) {
  torch::manual_seed(6);
  Seq2SeqModel teacher(cache_teacher_config());
  teacher->eval();
  auto data = markov_dataset(4, true);
  test::TempDir dir;
  const std::string path = dir.file("targets.bin");
  const json header = {{"teacher", "abc"}, {"data", "d1"}, {"k", 8}, {"temperature", 2.0}, {"vocab_size", teacher->config().vocab_size}};
  const int64_t n = static_cast<int64_t>(data->make_epoch(0).batches.size());
  const DataPosition start{0, 2};  // the student's batches: from batch 2 on, into the next epoch
  const double per_token = TeacherTargetFile::build(path, header, teacher, data, start, n, teacher->config().vocab_size);
  EXPECT_NEAR(per_token, 8 * (2 + 4) + 4, 8.0);  // u16 ids, f32 probabilities, f32 rest; + the table and header
  auto file = TeacherTargetFile::open(path, header);
  std::set<uint32_t> met;  // the examples of the n batches from `start` (into the next epoch), each once
  {
    BatchStream s(data, start);
    for (int64_t i = 0; i < n; ++i)
      for (auto id : s.next().batch.example_ids) met.insert(id);
  }
  EXPECT_EQ(file->examples(), static_cast<int64_t>(met.size()));
  int teacher_calls = 0;
  BatchStream stream(data, start);
  for (int64_t i = 0; i < n + 3; ++i) {  // 3 batches past the ones stored: still right, from the teacher
    auto b = stream.next().batch;
    auto logits = [&] {
      ++teacher_calls;
      torch::NoGradGuard ng;
      return teacher->forward({b.input_ids, b.attention_mask, b.decoder_input_ids, {}, {}}).logits;
    };
    auto got = file->targets(b, logits);
    auto fresh = top_k_soft_targets(logits(), 8, 2.0);
    --teacher_calls;
    auto real = (b.labels != -100).unsqueeze(-1);
    EXPECT_TRUE(torch::equal(got.ids * real, fresh.ids * real)) << i;
    EXPECT_TRUE(tensors_close(got.probs * real, fresh.probs * real, 1e-5)) << i;
    EXPECT_TRUE(tensors_close(got.rest * real.squeeze(-1), fresh.rest * real.squeeze(-1), 1e-5)) << i;
  }
  // Static examples: the batches after the stored ones hold the same examples, so they hit too.
  EXPECT_EQ(teacher_calls, file->misses());
  EXPECT_EQ(file->hits() + file->misses(), n + 3);

  // Another teacher (or data, k, ...) than the file was made for: refused, naming what differs.
  json other = header;
  other["teacher"] = "def";
  try {
    TeacherTargetFile::open(path, other);
    ADD_FAILURE() << "a stale file was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("stale soft targets, made for other settings (teacher: \"abc\" in the file, \"def\" now)"),
              std::string::npos) << e.what();
  }
  // open_or_build replaces a stale file, and leaves a current one alone.
  int builds = 0;
  auto rebuilt = TeacherTargetFile::open_or_build(path, other, [&] {
    ++builds;
    TeacherTargetFile::build(path, other, teacher, data, start, 2, teacher->config().vocab_size);
  });
  EXPECT_EQ(builds, 1);
  EXPECT_EQ(rebuilt->header()["teacher"], "def");
  TeacherTargetFile::open_or_build(path, other, [&] { ++builds; });
  EXPECT_EQ(builds, 1);

  // Damaged files: one clear error each, never a read outside the file.
  const std::string bytes = read_text_file(path);
  for (size_t cut : {size_t{0}, size_t{10}, size_t{40}, bytes.size() / 2, bytes.size() - 3}) {
    write_text_atomic(dir.file("cut.bin"), bytes.substr(0, cut));
    EXPECT_THROW(TeacherTargetFile::open(dir.file("cut.bin"), other), InputError) << cut;
  }
  std::string garbled = bytes;
  garbled[0] = 'X';
  write_text_atomic(dir.file("garbled.bin"), garbled);
  EXPECT_THROW(TeacherTargetFile::open(dir.file("garbled.bin"), other), InputError);
  EXPECT_THROW(TeacherTargetFile::open(dir.file("missing.bin"), other), InputError);
  // A header without the temperature (the teacher's misses could not be scaled like the stored
  // targets): refused at open, even when it is what the caller expects.
  {
    std::string renamed = bytes;
    const auto at = renamed.find("\"temperature\":");
    ASSERT_NE(at, std::string::npos);
    renamed[at + 11] = 'X';  // "temperaturX": the same length, so every offset holds
    json expect = other;
    expect.erase("temperature");
    expect["temperaturX"] = other["temperature"];
    write_text_atomic(dir.file("no_temperature.bin"), renamed);
    try {
      TeacherTargetFile::open(dir.file("no_temperature.bin"), expect);
      ADD_FAILURE() << "a header without the temperature was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("no_temperature.bin: header lacks k, vocab_size or a positive temperature"),
                std::string::npos) << e.what();
    }
  }

  // A record whose layout is sound but whose values are not (a token id past the vocabulary, a
  // probability that is NaN): the batch that reads it gets one error naming the file and example.
  uint64_t header_len = 0, entries = 0;
  std::memcpy(&header_len, bytes.data() + 8, 8);
  const uint64_t table_at = 16 + teacher_target_format::padded8(header_len);
  std::memcpy(&entries, bytes.data() + table_at, 8);
  uint32_t example = 0, positions = 0;  // the first stored example
  uint64_t offset = 0;
  for (uint32_t i = 0; i < entries && offset == 0; ++i) {
    teacher_target_format::Entry e;
    std::memcpy(&e, bytes.data() + table_at + 8 + sizeof(e) * i, sizeof(e));
    if (!e.present) continue;
    offset = e.offset;
    positions = e.positions;
    example = i;
  }
  ASSERT_GT(offset, 0u);
  Batch with_example;
  for (BatchStream s(data, start);;) {
    with_example = s.next().batch;
    if (std::count(with_example.example_ids.begin(), with_example.example_ids.end(), example)) break;
  }
  const auto no_teacher = [&]() -> at::Tensor { throw std::logic_error("the teacher ran"); };
  for (bool bad_id : {true, false}) {
    std::string damaged = bytes;
    if (bad_id) {
      const uint16_t id = 65535;  // the vocabulary is far smaller
      std::memcpy(&damaged[offset], &id, 2);
    } else {
      const uint64_t probs_at = (offset + 2 * 8 * uint64_t{positions} + 3) & ~uint64_t{3};  // after [L, k = 8] u16 ids
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(&damaged[probs_at], &nan, 4);  // the first position's most probable token
    }
    write_text_atomic(dir.file("values.bin"), damaged);
    auto f = TeacherTargetFile::open(dir.file("values.bin"), other);
    try {
      f->targets(with_example, no_teacher);
      ADD_FAILURE() << "damaged values were served (" << (bad_id ? "id" : "NaN") << ")";
    } catch (const InputError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("values.bin: example " + std::to_string(example) + "'s soft targets"), std::string::npos) << what;
      EXPECT_NE(what.find(bad_id ? "token id 65535, outside the vocabulary" : "nan"), std::string::npos) << what;
    }
  }
}

TEST(TeacherCache, StudentWithTop32IsWithinNoiseOfTheUncachedStudent) {
  test::TempDir dir;
  auto data = markov_dataset(3, true);
  std::vector<Batch> eval;
  {
    auto held_out = markov_dataset(77, true, false);
    auto e = held_out->make_epoch(0);
    for (size_t i = 0; i < e.batches.size(); ++i) eval.push_back(held_out->collate_batch(e, i));
  }
  torch::manual_seed(5);
  Seq2SeqModel teacher(cache_teacher_config());
  init_from_scratch(teacher, 1.0);
  auto to = tiny_options(dir.file("teacher"), 150, false);
  to.training.optimizer.lr = 1e-2;
  to.training.log_interval = 50;
  const double teacher_nll = Trainer(teacher, data, &eval, to).run().eval->nll;

  auto distill = [&](const std::string& name, int64_t cache_k) {
    auto sc = student_config(teacher->config(), std::nullopt, 0.1);
    torch::manual_seed(6);
    Seq2SeqModel student(sc);
    init_student(student, teacher, FfnInit::kFresh, true);
    auto o = tiny_options(dir.file(name), 120, false);  // about 5 epochs
    o.training.optimizer.lr = 1e-2;
    o.training.log_interval = 40;
    TeacherSignal signal;
    signal.teacher = teacher;
    signal.cache_top_k = cache_k;
    return *Trainer(student, data, &eval, o, signal).run().eval;
  };
  const auto plain = distill("plain", 0);
  const auto cached = distill("cached", 32);
  // Epochs after the first were served from the cache.
  int epochs = 0;
  std::ifstream in(dir.file("cached/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (!j.contains("teacher_cache")) continue;
    ++epochs;
    if (j["epoch"].get<int>() >= 1) {
      EXPECT_GT(j["teacher_cache"]["hits"].get<int64_t>(), 0);
    }
  }
  EXPECT_GE(epochs, 3);
  const double noise = std::max(plain.nll_stderr, cached.nll_stderr);
  EXPECT_LT(std::abs(cached.nll - plain.nll), 2 * noise)
      << "cached " << cached.nll << " plain " << plain.nll << " teacher " << teacher_nll << " stderr " << noise;
  EXPECT_LT(plain.nll, std::log(300.0) - 1.0);  // the students did learn
}

// ---- configuration -------------------------------------------------------------------------

std::string config_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  test::TempDir dir;
  write_text_atomic(dir.file("c.yaml"), yaml);
  try {
    load_run_config(dir.file("c.yaml"), overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

const std::string kTrainFile = test::fixture("PROVENANCE.txt");  // any existing file

TEST(RunConfig, DefaultsResolveAndRoundTrip) {
  test::TempDir dir;
  write_text_atomic(dir.file("c.yaml"), "data:\n  train:\n    files: [" + kTrainFile + "]\n");
  auto c = load_run_config(dir.file("c.yaml"), {"training.steps=77", "distillation.temperature=2"});
  EXPECT_EQ(c.training.steps, 77);
  EXPECT_EQ(c.distillation.hard_weight, 0.75);
  EXPECT_EQ(c.distillation.soft_weight, 0.25);
  EXPECT_EQ(c.distillation.temperature, 2.0);
  write_text_atomic(dir.file("resolved.yaml"), run_config_yaml(c));
  auto again = load_run_config(dir.file("resolved.yaml"));
  EXPECT_EQ(run_config_yaml(again), run_config_yaml(c));
}

TEST(RunConfig, Bf16KeysFollowTheCpuUnlessSet) {
  test::TempDir dir;
  write_text_atomic(dir.file("c.yaml"), "data:\n  train:\n    files: [" + kTrainFile + "]\n");
  const bool native = native_bf16_products();
  auto c = load_run_config(dir.file("c.yaml"));  // absent: auto
  EXPECT_EQ(c.training.bf16, native);
  EXPECT_EQ(c.teacher.bf16, native);
  EXPECT_EQ(c.teacher.train_bf16, native);
  EXPECT_EQ(c.bf16_auto, (std::vector<std::string>{"teacher.bf16", "teacher.train_bf16", "training.bf16"}));
  c = load_run_config(dir.file("c.yaml"), {"training.bf16=auto", "teacher.bf16=false"});
  EXPECT_EQ(c.training.bf16, native);
  EXPECT_FALSE(c.teacher.bf16);
  EXPECT_EQ(c.teacher.train_bf16, native);
  EXPECT_EQ(c.bf16_auto, (std::vector<std::string>{"teacher.train_bf16", "training.bf16"}));
  c = load_run_config(dir.file("c.yaml"), {"training.bf16=false", "teacher.bf16=false", "teacher.train_bf16=false"});
  EXPECT_FALSE(c.training.bf16 || c.teacher.bf16 || c.teacher.train_bf16);
  EXPECT_TRUE(c.bf16_auto.empty());
  c = load_run_config(dir.file("c.yaml"), {"training.bf16=true", "teacher.bf16=true", "teacher.train_bf16=true"});
  EXPECT_TRUE(c.training.bf16 && c.teacher.bf16 && c.teacher.train_bf16);  // asked for: emulated where the CPU lacks bf16
  EXPECT_TRUE(c.bf16_auto.empty());
  // The resolved config states what ran, not "auto".
  EXPECT_NE(run_config_yaml(load_run_config(dir.file("c.yaml"), {"teacher.bf16=auto"})).find(native ? "  bf16: true" : "  bf16: false"),
            std::string::npos);
  auto err = config_error("data:\n  train:\n    files: [" + kTrainFile + "]\ntraining:\n  bf16: sometimes\n");
  EXPECT_NE(err.find("c.yaml:5: training.bf16 must be true, false or auto, got \"sometimes\""), std::string::npos) << err;
  err = config_error("data:\n  train:\n    files: [" + kTrainFile + "]\nteacher:\n  bf16: [true]\n");
  EXPECT_NE(err.find("c.yaml:5: teacher.bf16 must be true, false or auto"), std::string::npos) << err;
  err = config_error("data:\n  train:\n    files: [" + kTrainFile + "]\nteacher:\n  train_bf16: yes please\n");
  EXPECT_NE(err.find("c.yaml:5: teacher.train_bf16 must be true, false or auto, got \"yes please\""), std::string::npos) << err;
}

TEST(RunConfig, UnknownKeyGetsASuggestionWithFileAndLine) {
  auto err = config_error("data:\n  train:\n    files: [" + kTrainFile + "]\ntrainig:\n  steps: 5\ndistillation:\n  temprature: 2\n");
  EXPECT_NE(err.find("c.yaml:4: unknown key \"trainig\" (did you mean \"training\"?)"), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:7: unknown key \"distillation.temprature\" (did you mean \"distillation.temperature\"?)"),
            std::string::npos) << err;
}

TEST(RunConfig, WrongTypesAndRangesAllAtOnce) {
  auto err = config_error("data:\n  train:\n    files: [" + kTrainFile + "]\n  batch_size: many\ndistillation:\n"
                          "  hard_weight: -1\n  soft_loss: mse\ntraining:\n  steps: 0\n");
  EXPECT_NE(err.find("4 problems"), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:4: data.batch_size must be an integer, got \"many\""), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:6: distillation.hard_weight must be in [0, 1000]"), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:7: distillation.soft_loss must be one of ce, kl, reverse_kl, jsd, got \"mse\""), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:9: training.steps must be >= 1"), std::string::npos) << err;
}

TEST(RunConfig, TeacherCacheNeedsStaticExamples) {
  const std::string base = "data:\n  train:\n    files: [" + kTrainFile + "]\ndistillation:\n  teacher_cache: true\n";
  auto err = config_error(base);
  EXPECT_NE(err.find("c.yaml:5: distillation.teacher_cache needs data.static_examples: true"), std::string::npos) << err;
  EXPECT_EQ(config_error(base, {"data.static_examples=true"}), "");
  EXPECT_NE(config_error(base, {"data.static_examples=true", "distillation.teacher_cache_top_k=0"})
                .find("distillation.teacher_cache_top_k must be >= 1"),
            std::string::npos);
}

TEST(RunConfig, PretrainAndTaskSettingsAreChecked) {
  const std::string base = "data:\n  train:\n    files: [" + kTrainFile + "]\n";
  // Pre-training without its corpus, with a given teacher; a task file that is not pairs; an
  // init_from naming no model: every problem at once, each named.
  auto err = config_error(base + "pretrain:\n  steps: 10\ntask:\n  test:\n    files: [" + kTrainFile +
                          "]\n    format: text\nteacher:\n  path: " + test::fixture("switch-tiny-4") +
                          "\nbaseline:\n  init_from: /nonexistent/model\n");
  EXPECT_NE(err.find("pretrain.data.train.files must list at least one file"), std::string::npos) << err;
  EXPECT_NE(err.find("pretrain.steps pre-trains the teacher here: unset teacher.path"), std::string::npos) << err;
  EXPECT_NE(err.find("task.test.format must be one of tsv, jsonl_pairs"), std::string::npos) << err;
  EXPECT_NE(err.find("baseline.init_from names /nonexistent/model, which is not a model directory"), std::string::npos) << err;
  // With pre-training the stages get a directory of their own under the output, unless one is set.
  test::TempDir dir;
  write_text_atomic(dir.file("c.yaml"), base + "output_dir: out\npretrain:\n  steps: 10\n  data:\n    train:\n      files: [" +
                                            kTrainFile + "]\n");
  EXPECT_EQ(load_run_config(dir.file("c.yaml")).stages_dir, "out/stages");
  EXPECT_EQ(load_run_config(dir.file("c.yaml"), {"stages_dir=shared"}).stages_dir, "shared");
  EXPECT_EQ(load_run_config(dir.file("c.yaml"), {"pretrain.steps=0"}).stages_dir, "");
  // teacher.trained_tokens states the budget of a checkpoint: with init_from it is allowed.
  EXPECT_EQ(config_error(base, {"teacher.init_from=" + test::fixture("switch-tiny-4"), "teacher.trained_tokens=1000"}), "");
  EXPECT_NE(config_error(base, {"teacher.trained_tokens=1000"}).find("teacher.trained_tokens states the budget"),
            std::string::npos);
}

TEST(RunConfig, MissingTeacherAndDataAndBadOverrides) {
  auto err = config_error("teacher:\n  path: /nonexistent/teacher\n", {"training.steps=abc", "nonsense"});
  EXPECT_NE(err.find("c.yaml:2: teacher.path names /nonexistent/teacher, which is not a model directory"), std::string::npos) << err;
  EXPECT_NE(err.find("data.train.files must list at least one file"), std::string::npos) << err;
  EXPECT_NE(err.find("--set training.steps: training.steps must be an integer"), std::string::npos) << err;
  EXPECT_NE(err.find("--set nonsense: expected KEY=VALUE"), std::string::npos) << err;
  EXPECT_NE(config_error("a: [unclosed\n").find("not valid YAML"), std::string::npos);
}

TEST(RunConfig, DuplicateKeysNonFiniteAndAbsurdValuesAreRejected) {
  // Issue 13, class 9: YAML keeps one of two equal keys silently; .inf and 1e300 are numbers to YAML.
  auto err = config_error("data:\n  train:\n    files: [" + kTrainFile + "]\ntraining:\n  steps: 5\n  steps: 7\n"
                          "  optimizer: {lr: .inf}\ndistillation:\n  temperature: 1e-300\n  hard_weight: 1e300\n"
                          "  soft_weight: .nan\ntraining:\n  steps: 9\n");
  EXPECT_NE(err.find("c.yaml:6: duplicate key \"training.steps\" (first at "), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:12: duplicate key \"training\" (first at "), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:7: training.optimizer.lr must be a finite number, got \".inf\""), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:9: distillation.temperature must be in [0.01, 100]"), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:10: distillation.hard_weight must be in [0, 1000]"), std::string::npos) << err;
  EXPECT_NE(err.find("c.yaml:11: distillation.soft_weight must be a finite number, got \".nan\""), std::string::npos) << err;
}

TEST(RunConfig, AConfigPathThatIsNoFileIsNamed) {
  test::TempDir dir;
  for (const auto& [path, what] : std::vector<std::pair<std::string, std::string>>{
           {dir.path(), "is a directory, not a config file"}, {dir.file("missing.yaml"), "no such config file"}}) {
    try {
      load_run_config(path);
      FAIL() << path;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(path + ": " + what), std::string::npos) << e.what();
    }
  }
}

TEST(RunConfig, APathTheFileSystemRefusesIsAnErrorNotACrash) {
  // Found by fuzz_run_config: a file name longer than NAME_MAX made std::filesystem::exists throw.
  const std::string long_name = "/tmp/" + std::string(300, 'x');
  auto err = config_error("data:\n  train:\n    files: [" + long_name + "]\n  tokenizer:\n    path: " + long_name +
                          "/spiece.model\nteacher:\n  path: " + long_name + "\n");
  EXPECT_NE(err.find("c.yaml:3: data.train.files names " + long_name + ", which cannot be read (File name too long)"),
            std::string::npos) << err;
  EXPECT_NE(err.find("data.tokenizer.path names " + long_name + "/spiece.model, which cannot be read"), std::string::npos)
      << err;
  EXPECT_NE(err.find("teacher.path names " + long_name + ", which is not a model directory (no config.json: File name too long)"),
            std::string::npos) << err;
}

TEST(RunConfig, VocabularyMismatchIsCaughtAtStart) {
  auto tokenizer = Tokenizer::load(test::fixture("switch-tiny-4"));
  auto c = read_hf_config(test::fixture("switch-tiny-4/config.json"));
  EXPECT_NO_THROW(check_vocabulary(c, tokenizer, "teacher"));
  c.vocab_size = 300;
  try {
    check_vocabulary(c, tokenizer, "teacher x");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("teacher x: vocabulary does not match the tokenizer"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace distill
