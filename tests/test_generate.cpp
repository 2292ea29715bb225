// Incremental decoding: decode_step with its key/value cache computes what decode computes on the
// whole prefix, and greedy generation with the cache equals generation without it, token for token.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/arch/generate.h"
#include "models/arch/routing.h"
#include "models/errors.h"
#include "models/io/checkpoint.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using test::tensors_close;

// A batch of 5 inputs of different lengths (right padding) for a model of `vocab` ids.
std::pair<torch::Tensor, torch::Tensor> padded_inputs(int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  const std::vector<int64_t> lengths = {9, 3, 14, 6, 11};
  auto ids = torch::zeros({5, 14}, torch::kLong);
  auto mask = torch::zeros({5, 14}, torch::kLong);
  for (size_t b = 0; b < lengths.size(); ++b) {
    ids[b].narrow(0, 0, lengths[b]).copy_(torch::randint(2, vocab, {lengths[b]}, torch::kLong));
    mask[b].narrow(0, 0, lengths[b]).fill_(1);
  }
  return {ids, mask};
}

// Greedy generation of 40 tokens with and without the cache: (with, without).
std::pair<torch::Tensor, torch::Tensor> both_ways(Seq2SeqModel& model, const torch::Tensor& ids, const torch::Tensor& mask) {
  GenerateOptions with, without;
  with.max_new_tokens = without.max_new_tokens = 40;
  without.use_cache = false;
  return {greedy_generate(model, ids, mask, with), greedy_generate(model, ids, mask, without)};
}

class Decoding : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { model_ = load_model(test::fixture(GetParam())); model_->eval(); }
  Seq2SeqModel model_{nullptr};
};

TEST_P(Decoding, StepsWithTheCacheEqualDecodingThePrefix) {
  torch::NoGradGuard ng;
  auto [ids, mask] = padded_inputs(model_->config().vocab_size, 3);
  auto memory = model_->encode(ids, mask).last_hidden_state;  // [B, S, D]
  torch::manual_seed(4);
  auto targets = torch::randint(2, model_->config().vocab_size, {5, 12}, torch::kLong);  // [B, T]
  auto full = model_->decode(targets, {}, memory, mask).last_hidden_state;              // [B, T, D]
  DecoderCache cache;
  cache.max_length = 12;
  // One position at a time, then the rest in one step of 4 (a multi-token step is causal inside).
  for (int64_t t = 0; t < 8; ++t) {
    auto h = model_->decode_step(targets.narrow(1, t, 1), memory, mask, cache);  // [B, 1, D]
    EXPECT_TRUE(tensors_close(h, full.narrow(1, t, 1), 1e-5)) << "position " << t;
  }
  auto h = model_->decode_step(targets.narrow(1, 8, 4), memory, mask, cache);  // [B, 4, D]
  EXPECT_TRUE(tensors_close(h, full.narrow(1, 8, 4), 1e-5));
  EXPECT_EQ(cache.length, 12);
  EXPECT_THROW(model_->decode_step(targets.narrow(1, 0, 1), memory, mask, cache), Error);  // full
}

TEST_P(Decoding, TheCacheGrowsByDoublingUpToItsLimit) {
  torch::NoGradGuard ng;
  auto [ids, mask] = padded_inputs(model_->config().vocab_size, 3);
  auto memory = model_->encode(ids, mask).last_hidden_state;  // [B, S, D]
  torch::manual_seed(6);
  auto targets = torch::randint(2, model_->config().vocab_size, {5, 37}, torch::kLong);  // [B, T]
  auto full = model_->decode(targets, {}, memory, mask).last_hidden_state;              // [B, T, D]
  DecoderCache cache;
  cache.max_length = 40;
  std::vector<int64_t> reserved;
  for (int64_t t = 0; t < 37; ++t) {
    auto h = model_->decode_step(targets.narrow(1, t, 1), memory, mask, cache);
    EXPECT_TRUE(tensors_close(h, full.narrow(1, t, 1), 1e-5)) << "position " << t;
    if (reserved.empty() || reserved.back() != cache.self[0].k.size(2)) reserved.push_back(cache.self[0].k.size(2));
  }
  EXPECT_EQ(reserved, (std::vector<int64_t>{16, 32, 40}));
}

TEST_P(Decoding, GenerationWithTheCacheEqualsGenerationWithout) {
  auto [ids, mask] = padded_inputs(model_->config().vocab_size, 5);
  auto [a, b] = both_ways(model_, ids, mask);
  EXPECT_TRUE(torch::equal(a, b)) << a << "\nwithout the cache\n" << b;
  // Each row alone (no other row leaving the batch) decodes the same tokens.
  for (int64_t r = 0; r < ids.size(0); ++r) {
    auto alone = both_ways(model_, ids.narrow(0, r, 1), mask.narrow(0, r, 1)).first;
    EXPECT_TRUE(torch::equal(alone, a.narrow(0, r, 1).narrow(1, 0, alone.size(1)))) << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Decoding,
                         ::testing::Values("switch-tiny-4", "t5-student-from-switch-tiny-4"),
                         [](const auto& info) { return info.param == "switch-tiny-4" ? "Switch" : "DenseT5"; });

// Rows that end at different steps leave the batch (the cache is compacted) without changing the
// tokens of the rows still decoding: the EOS id's embedding is pushed so rows end early.
TEST(Decoding, RowsLeavingTheBatchChangeNoOtherRow) {
  auto model = load_model(test::fixture("t5-student-from-switch-tiny-4"));
  {
    torch::NoGradGuard ng;
    model->shared->weight[model->config().eos_token_id].mul_(6.0);
  }
  auto [ids, mask] = padded_inputs(model->config().vocab_size, 7);
  auto [a, b] = both_ways(model, ids, mask);
  EXPECT_TRUE(torch::equal(a, b)) << a << "\nwithout the cache\n" << b;
  // Rows ended at different lengths, and at least one before the last step.
  auto ended = (a == model->config().eos_token_id).to(torch::kLong).argmax(1);
  EXPECT_GT(ended.max().item<int64_t>(), ended.min().item<int64_t>()) << a;
  EXPECT_TRUE((a == model->config().eos_token_id).any(1).any().item<bool>()) << a;
}

// A decoding step routes one token per row, all at the same position, so a per-batch capacity would
// drop tokens by batch composition: generation keeps every token. The Switch fixture rebuilt with
// a capacity that binds (factor 0.25: teacher forcing drops tokens) decodes exactly what it decodes
// with capacity to spare, and each row alone decodes what it decodes in the batch.
TEST(Decoding, SparseLayersKeepEveryTokenWhileDecoding) {
  auto roomy = load_model(test::fixture("switch-tiny-4"));
  auto config = roomy->config();
  config.capacity_mode = CapacityMode::kFactor;
  config.capacity_factor_eval = 0.25;
  Seq2SeqModel tight(config);
  load_state(tight, test::load_fixture_tensors("switch-tiny-4/model.safetensors"), "switch-tiny-4");
  tight->eval();
  auto [ids, mask] = padded_inputs(config.vocab_size, 5);
  {
    torch::NoGradGuard ng;
    Seq2SeqInputs in;
    in.input_ids = ids;
    in.attention_mask = mask;
    in.decoder_input_ids = torch::zeros({5, 6}, torch::kLong);
    auto out = tight->forward(in);
    bool dropped = false;
    for (const auto& [layer, r] : out.routing) dropped = dropped || !r.top_kept.all().item<bool>();
    EXPECT_TRUE(dropped) << "capacity factor 0.25 should drop tokens in a forward pass";
  }
  auto [a, b] = both_ways(tight, ids, mask);
  EXPECT_TRUE(torch::equal(a, b)) << a << "\nwithout the cache\n" << b;
  EXPECT_TRUE(torch::equal(a, both_ways(roomy, ids, mask).first));
  for (int64_t r = 0; r < ids.size(0); ++r) {
    auto alone = both_ways(tight, ids.narrow(0, r, 1), mask.narrow(0, r, 1)).first;
    EXPECT_TRUE(torch::equal(alone, a.narrow(0, r, 1).narrow(1, 0, alone.size(1)))) << "row " << r;
  }
}

TEST(Decoding, DroplessRoutingLiftsTheEvaluationCapacityOnly) {
  RoutingOptions o;
  o.num_experts = 4;
  o.top_k = 1;
  o.capacity_mode = CapacityMode::kFactor;
  o.capacity_factor_train = 1.0;
  o.capacity_factor_eval = 1.0;
  EXPECT_EQ(expert_capacity_for(o, 40, /*training=*/false), 10);
  {
    DroplessRouting scope;
    EXPECT_EQ(expert_capacity_for(o, 40, /*training=*/false), 40);
    EXPECT_EQ(expert_capacity_for(o, 40, /*training=*/true), 10);
  }
  EXPECT_EQ(expert_capacity_for(o, 40, /*training=*/false), 10);
}

}  // namespace
}  // namespace distill
