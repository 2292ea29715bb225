// config.json for switch_transformers and t5, both directions, and its errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "models/io/atomic_file.h"
#include "models/errors.h"
#include "models/io/hf_config.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;

std::string config_error(const std::string& text) {
  test::TempDir dir;
  write_text_atomic(dir.file("config.json"), text);
  try {
    read_hf_config(dir.file("config.json"));
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

TEST(HfConfig, ReadsTheSwitchFixture) {
  auto c = read_hf_config(test::fixture("switch-tiny-4/config.json"));
  EXPECT_EQ(c.model_type, "switch_transformers");
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.expert_capacity, 64);
  EXPECT_TRUE(c.tie_word_embeddings);  // absent in the file: Hugging Face's default
  EXPECT_FALSE(c.encoder_block_is_sparse(0));
  EXPECT_TRUE(c.encoder_block_is_sparse(1));
  EXPECT_TRUE(c.decoder_block_is_sparse(1));
  EXPECT_EQ(c.capacity_mode, CapacityMode::kFixed);
}

TEST(HfConfig, ReadsTheT5Fixture) {
  auto c = read_hf_config(test::fixture("t5-student-from-switch-tiny-4/config.json"));
  EXPECT_EQ(c.model_type, "t5");
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_FALSE(c.is_gated_act);
  EXPECT_EQ(c.dense_act_fn, "relu");
}

TEST(HfConfig, GatedGeluIsT5v11) {
  auto t = json::parse(read_text_file(test::fixture("t5-student-from-switch-tiny-4/config.json")));
  t["feed_forward_proj"] = "gated-gelu";
  test::TempDir dir;
  write_text_atomic(dir.file("config.json"), t.dump());
  auto c = read_hf_config(dir.file("config.json"));
  EXPECT_TRUE(c.is_gated_act);
  EXPECT_EQ(c.dense_act_fn, "gelu_new");
  auto back = json::parse(hf_config_json(c));
  EXPECT_EQ(back["feed_forward_proj"], "gated-gelu");
}

TEST(HfConfig, RoundTripsBothModelTypes) {
  for (const char* fx : {"switch-tiny-4/config.json", "t5-student-from-switch-tiny-4/config.json"}) {
    auto c = read_hf_config(test::fixture(fx));
    c.tie_word_embeddings = false;
    test::TempDir dir;
    write_hf_config(c, dir.file("config.json"));
    auto d = read_hf_config(dir.file("config.json"));
    EXPECT_EQ(hf_config_json(c), hf_config_json(d)) << fx;
    EXPECT_FALSE(d.tie_word_embeddings);
  }
}

TEST(HfConfig, DenseCounterpartIsAT5Config) {
  auto c = read_hf_config(test::fixture("switch-tiny-4/config.json")).dense_counterpart();
  auto j = json::parse(hf_config_json(c));
  EXPECT_EQ(j["model_type"], "t5");
  EXPECT_EQ(j["architectures"][0], "T5ForConditionalGeneration");
  EXPECT_EQ(j["feed_forward_proj"], "relu");
  EXPECT_FALSE(j.contains("num_experts"));
}

TEST(HfConfig, WrongTypesAreAllReportedWithFileAndKey) {
  auto j = json::parse(read_text_file(test::fixture("switch-tiny-4/config.json")));
  j["d_model"] = "64";
  j["num_experts"] = 2.5;
  j["tie_word_embeddings"] = 1;
  auto err = config_error(j.dump());
  EXPECT_NE(err.find("config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("key \"d_model\" must be an integer, got string \"64\""), std::string::npos) << err;
  EXPECT_NE(err.find("key \"num_experts\" must be an integer"), std::string::npos) << err;
  EXPECT_NE(err.find("key \"tie_word_embeddings\" must be a boolean"), std::string::npos) << err;
}

TEST(HfConfig, MissingRequiredKeyAndBadValues) {
  auto j = json::parse(read_text_file(test::fixture("switch-tiny-4/config.json")));
  j.erase("vocab_size");
  EXPECT_NE(config_error(j.dump()).find("missing required key \"vocab_size\""), std::string::npos);
  j = json::parse(read_text_file(test::fixture("switch-tiny-4/config.json")));
  j["dropout_rate"] = 1.5;
  j["router_dtype"] = "bfloat16";
  auto err = config_error(j.dump());
  EXPECT_NE(err.find("router_dtype"), std::string::npos) << err;
  j.erase("router_dtype");
  EXPECT_NE(config_error(j.dump()).find("dropout_rate must be in [0, 1)"), std::string::npos);
  // distill's own choices, both named at once.
  j = json::parse(read_text_file(test::fixture("switch-tiny-4/config.json")));
  j["capacity_mode"] = "per_batch";
  j["router_loss"] = "mean";
  err = config_error(j.dump());
  EXPECT_NE(err.find("key \"capacity_mode\" must be \"fixed\" or \"factor\", got \"per_batch\""), std::string::npos) << err;
  EXPECT_NE(err.find("key \"router_loss\" must be \"paper\" or \"hf\", got \"mean\""), std::string::npos) << err;
  j["capacity_mode"] = "factor";
  j["router_loss"] = "hf";
  EXPECT_EQ(config_error(j.dump()), "");
}

TEST(HfConfig, AbsurdSizesAreRefusedBeforeAnythingIsAllocated) {
  // Issue 13, class 5: sizes that would ask for gigabytes to terabytes, or overflow a count.
  auto j = json::parse(read_text_file(test::fixture("switch-tiny-4/config.json")));
  j["d_model"] = 1000000000;
  j["num_experts"] = 1000000;
  j["relative_attention_num_buckets"] = 1000000000;
  auto err = config_error(j.dump());
  EXPECT_NE(err.find("d_model must be in [1, 65536], got 1000000000"), std::string::npos) << err;
  EXPECT_NE(err.find("num_experts must be in [0, 16384], got 1000000"), std::string::npos) << err;
  EXPECT_NE(err.find("relative_attention_num_buckets must be in [2, 4096]"), std::string::npos) << err;
  // Each size in range, together past this machine's memory.
  j = json::parse(read_text_file(test::fixture("switch-tiny-4/config.json")));
  j["d_model"] = 65536;
  j["d_ff"] = 262144;
  j["num_experts"] = 16384;
  err = config_error(j.dump());
  EXPECT_NE(err.find("float32 weights alone take"), std::string::npos) << err;
}

TEST(HfConfig, ANumberPastADoubleIsAClearError) {
  // Found by tools/fuzz.sh (hf_config): nlohmann throws out_of_range, not parse_error, for 1e4000;
  // it escaped as std::terminate. The input is kept in tests/fuzz/seeds/hf_config.
  auto j = read_text_file(test::fixture("switch-tiny-4/config.json"));
  const auto at = j.find("\"layer_norm_epsilon\": 1e-06");
  ASSERT_NE(at, std::string::npos);
  j.replace(at, std::string("\"layer_norm_epsilon\": 1e-06").size(), "\"layer_norm_epsilon\": 1e4000");
  EXPECT_NE(config_error(j).find("not valid JSON"), std::string::npos) << config_error(j);
}

TEST(HfConfig, NotJsonOrMissing) {
  EXPECT_NE(config_error("{\"d_model\": ").find("not valid JSON"), std::string::npos);
  EXPECT_THROW(read_hf_config("/nonexistent/config.json"), CheckpointError);
}

}  // namespace
}  // namespace distill
