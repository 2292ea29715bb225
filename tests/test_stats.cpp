// Parameter and FLOP counts: the formulas agree with the modules and with a hand count.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/io/hf_config.h"
#include "models/arch/model_stats.h"
#include "models/arch/seq2seq.h"
#include "tests/test_util.h"

namespace distill {
namespace {

int64_t module_params(const Seq2SeqModel& m, bool (*pred)(const std::string&) = nullptr) {
  int64_t n = 0;
  for (const auto& p : m->named_parameters())
    if (!pred || pred(p.key())) n += p.value().numel();
  return n;
}

TEST(Stats, TinySwitchByHand) {
  auto c = read_hf_config(test::fixture("switch-tiny-4/config.json"));
  auto p = count_parameters(c);
  // D 64, F 128, 4 heads x 16, vocab 512, 4 experts, blocks 1 of both stacks sparse.
  const int64_t attn = 4 * 64 * 64, ffn = 2 * 64 * 128, bias = 32 * 4, ln = 64;
  const int64_t enc0 = attn + bias + ln + ln + ffn;
  const int64_t enc1 = attn + ln + ln + 4 * 64 + 4 * ffn;
  const int64_t dec0 = attn + bias + ln + attn + ln + ln + ffn;
  const int64_t dec1 = attn + ln + attn + ln + ln + 4 * 64 + 4 * ffn;
  const int64_t total = 512 * 64 + enc0 + enc1 + ln + dec0 + dec1 + ln;
  EXPECT_EQ(total, 296448);
  EXPECT_EQ(p.total, total);
  EXPECT_EQ(p.embedding, 512 * 64);
  EXPECT_EQ(p.expert, 2 * 4 * ffn);
  EXPECT_EQ(p.router, 2 * 4 * 64);
  EXPECT_EQ(p.non_expert, total - 2 * 4 * ffn);
  EXPECT_EQ(p.active_per_token, total - 2 * 4 * ffn + 2 * ffn);
  // The dense student: every expert set replaced by one FFN, routers gone.
  EXPECT_EQ(count_parameters(c.dense_counterpart()).total, total - 2 * 4 * ffn - 2 * 4 * 64 + 2 * ffn);
  EXPECT_EQ(count_parameters(c.dense_counterpart()).total, 197632);  // numel of the HF student file
}

TEST(Stats, FormulasMatchTheModules) {
  auto base = read_hf_config(test::fixture("switch-tiny-4/config.json"));
  std::vector<ModelConfig> configs = {base, base.dense_counterpart()};
  auto gated = base.dense_counterpart();
  gated.is_gated_act = true;
  gated.dense_act_fn = "gelu_new";
  gated.tie_word_embeddings = false;
  configs.push_back(gated);
  auto all_sparse = base;
  all_sparse.encoder_sparse_step = all_sparse.decoder_sparse_step = 1;
  all_sparse.router_bias = true;
  all_sparse.num_layers = 3;
  configs.push_back(all_sparse);
  for (const auto& c : configs) {
    Seq2SeqModel m(c);
    auto p = count_parameters(c);
    EXPECT_EQ(p.total, module_params(m));
    EXPECT_EQ(p.expert, module_params(m, &is_expert_parameter));
    EXPECT_EQ(p.router, module_params(m, &is_router_parameter));
  }
}

TEST(Stats, FlopsByHandForADenseModel) {
  ModelConfig c;
  c.vocab_size = 10;
  c.d_model = 4;
  c.d_kv = 2;
  c.num_heads = 2;
  c.d_ff = 8;
  c.num_layers = 1;
  c.num_decoder_layers = 1;
  const int64_t S = 3, T = 2;
  const double enc = S * (2 * 4 * 4 * 4 + 2 * 2 * S * 4) + S * (2 * 2 * 4 * 8);
  const double dec = T * (2 * 4 * 4 * 4 + 2 * 2 * T * 4) + T * (2 * 2 * 4 * 4 + 2 * 2 * S * 4) + S * 2 * 2 * 4 * 4 +
                     T * (2 * 2 * 4 * 8) + T * 2 * 4 * 10;
  EXPECT_DOUBLE_EQ(forward_flops(c, S, T), enc + dec);
}

}  // namespace
}  // namespace distill
