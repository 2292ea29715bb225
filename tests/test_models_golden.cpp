// Parity with Hugging Face transformers 4.37.2 on the tiny fixtures (tests/fixtures).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/arch/generate.h"
#include "models/arch/t5_layers.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using test::fixture;
using test::tensors_close;
using nlohmann::json;

json read_json(const std::string& relative) { return json::parse(read_text_file(fixture(relative))); }

TEST(GoldenBuckets, MatchHuggingFaceRelativePositionBuckets) {
  json j = read_json("relative_position_buckets.json");
  auto rel = torch::tensor(j["relative_position"].get<std::vector<int64_t>>(), torch::kLong);
  struct Case { const char* key; int64_t nb, md; bool bidir; };
  for (auto c : {Case{"buckets_nb32_md128_bidirectional", 32, 128, true}, Case{"buckets_nb32_md128_causal", 32, 128, false},
                 Case{"buckets_nb8_md16_bidirectional", 8, 16, true}, Case{"buckets_nb8_md16_causal", 8, 16, false}}) {
    auto expected = torch::tensor(j[c.key].get<std::vector<int64_t>>(), torch::kLong);
    auto got = relative_position_bucket(rel, c.bidir, c.nb, c.md);
    EXPECT_TRUE(torch::equal(got, expected)) << c.key;
  }
  EXPECT_EQ(mask_min_value(torch::kFloat32), j["float32_mask_min"].get<double>());
}

class GoldenSwitch : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new Seq2SeqModel(load_model(fixture("switch-tiny-4")));
    golden_ = new std::map<std::string, torch::Tensor>(test::load_fixture_tensors("switch-tiny-4/golden.safetensors"));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete golden_;
  }
  static Seq2SeqInputs inputs() {
    auto& g = *golden_;
    return {g["input_ids"], g["attention_mask"], g["decoder_input_ids"], {}, g["labels"]};
  }
  static Seq2SeqModel* model_;
  static std::map<std::string, torch::Tensor>* golden_;
};
Seq2SeqModel* GoldenSwitch::model_ = nullptr;
std::map<std::string, torch::Tensor>* GoldenSwitch::golden_ = nullptr;

TEST_F(GoldenSwitch, HiddenStatesLogitsAndRouting) {
  torch::NoGradGuard ng;
  auto& g = *golden_;
  auto out = (*model_)->forward(inputs(), /*keep_hidden_states=*/true);
  EXPECT_TRUE(tensors_close(out.encoder_last_hidden_state, g["encoder_last_hidden_state"]));
  ASSERT_EQ(out.encoder_hidden_states.size(), 3u);
  ASSERT_EQ(out.decoder_hidden_states.size(), 3u);
  for (int k = 0; k < 3; ++k) {
    EXPECT_TRUE(tensors_close(out.encoder_hidden_states[k], g["encoder_hidden_states." + std::to_string(k)])) << k;
    EXPECT_TRUE(tensors_close(out.decoder_hidden_states[k], g["decoder_hidden_states." + std::to_string(k)])) << k;
  }
  EXPECT_TRUE(tensors_close(out.logits, g["logits"]));
  ASSERT_EQ(out.routing.size(), 2u);
  EXPECT_EQ(out.routing[0].first, "encoder.block.1.layer.1.");
  EXPECT_EQ(out.routing[1].first, "decoder.block.1.layer.2.");
  for (const auto& [prefix, r] : out.routing) {
    EXPECT_TRUE(tensors_close(r.logits, g[prefix + "router_logits"])) << prefix;
    EXPECT_TRUE(torch::equal(r.expert_choice, g[prefix + "expert_choice"])) << prefix;
    EXPECT_TRUE(torch::equal(r.kept.to(torch::kLong), g[prefix + "kept"])) << prefix;
  }
}

TEST_F(GoldenSwitch, DecoderAttentionMask) {
  torch::NoGradGuard ng;
  auto in = inputs();
  in.decoder_attention_mask = (*golden_)["decoder_label_mask"];
  auto out = (*model_)->forward(in);
  EXPECT_TRUE(tensors_close(out.logits, (*golden_)["logits_with_decoder_attention_mask"]));
}

TEST_F(GoldenSwitch, Losses) {
  torch::NoGradGuard ng;
  json j = read_json("switch-tiny-4/golden.json");
  auto out = (*model_)->forward(inputs());
  const auto& l = j["losses_hf"];
  EXPECT_NEAR(out.ce_loss.item<double>(), l["ce_loss"].get<double>(), 1e-4 * l["ce_loss"].get<double>());
  EXPECT_NEAR(out.encoder_z_loss.item<double>(), l["encoder_z_loss"].get<double>(), 1e-4 * l["encoder_z_loss"].get<double>());
  EXPECT_NEAR(out.decoder_z_loss.item<double>(), l["decoder_z_loss"].get<double>(), 1e-4 * l["decoder_z_loss"].get<double>());
  EXPECT_NEAR(out.encoder_aux_loss.item<double>(), l["encoder_aux_loss"].get<double>(), 1e-4 * l["encoder_aux_loss"].get<double>());
  EXPECT_NEAR(out.decoder_aux_loss.item<double>(), l["decoder_aux_loss"].get<double>(), 1e-4 * l["decoder_aux_loss"].get<double>());
  EXPECT_NEAR(out.loss.item<double>(), l["loss"].get<double>(), 1e-4 * l["loss"].get<double>());
}

TEST_F(GoldenSwitch, GreedyGeneration) {
  auto& g = *golden_;
  GenerateOptions opts;
  opts.max_new_tokens = 8;
  for (bool cache : {true, false}) {
    opts.use_cache = cache;
    auto ids = greedy_generate(*model_, g["input_ids"], g["attention_mask"], opts);
    EXPECT_TRUE(torch::equal(ids, g["greedy_generate_8"])) << "cache " << cache << "\n" << ids << "\nexpected\n"
                                                           << g["greedy_generate_8"];
  }
}

TEST(GoldenStudent, DenseT5MatchesHuggingFace) {
  torch::NoGradGuard ng;
  auto model = load_model(fixture("t5-student-from-switch-tiny-4"));
  EXPECT_EQ(model->config().model_type, "t5");
  auto g = test::load_fixture_tensors("t5-student-from-switch-tiny-4/golden.safetensors");
  auto out = model->forward({g["input_ids"], g["attention_mask"], g["decoder_input_ids"], {}, g["labels"]});
  EXPECT_TRUE(tensors_close(out.logits, g["logits"]));
  EXPECT_TRUE(tensors_close(out.encoder_last_hidden_state, g["encoder_last_hidden_state"]));
  json j = read_json("t5-student-from-switch-tiny-4/golden.json");
  EXPECT_NEAR(out.ce_loss.item<double>(), j["ce_loss"].get<double>(), 1e-4 * j["ce_loss"].get<double>());
  EXPECT_EQ(out.routing.size(), 0u);
  EXPECT_EQ(out.encoder_aux_loss.item<double>(), 0.0);
  // Loading copies into the parameters: every attention's q, k and v still sit back to back, so
  // its fused projections read them in place.
  int attentions = 0;
  for (const auto& item : model->named_modules()) {
    auto* a = item.value()->as<T5AttentionImpl>();
    if (!a) continue;
    ++attentions;
    const float *pq = a->q->weight.data_ptr<float>(), *pk = a->k->weight.data_ptr<float>(), *pv = a->v->weight.data_ptr<float>();
    EXPECT_TRUE(pk == pq + a->q->weight.numel() && pv == pk + a->k->weight.numel()) << item.key();
  }
  EXPECT_GT(attentions, 0);
}

}  // namespace
}  // namespace distill
