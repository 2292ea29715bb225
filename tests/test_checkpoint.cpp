// Model directories: what we write is what Hugging Face expects, re-loads bit-identically, and
// every mismatch between config and weights is reported at once, by name.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/errors.h"
#include "models/io/hf_config.h"
#include "models/io/safetensors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json keymap() { return json::parse(read_text_file(test::fixture("t5-student-from-switch-tiny-4/keymap.json"))); }

std::set<std::string> hf_saved_t5_keys() {
  auto k = keymap();
  std::set<std::string> keys;
  for (const auto& n : k["t5_state_dict_keys"]) keys.insert(n.get<std::string>());
  for (const auto& n : k["t5_keys_not_in_saved_file_because_tied"]) keys.erase(n.get<std::string>());
  return keys;
}

std::string load_error(const std::string& dir) {
  try {
    load_model(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A writable copy of a fixture model directory.
void copy_fixture(const std::string& name, const std::string& to) {
  fs::copy(test::fixture(name), to, fs::copy_options::recursive);
  for (auto& f : fs::directory_iterator(to)) fs::permissions(f.path(), fs::perms::owner_write, fs::perm_options::add);
}

TEST(Checkpoint, DenseCounterpartHasExactlyHuggingFaceT5Keys) {
  auto config = read_hf_config(test::fixture("switch-tiny-4/config.json")).dense_counterpart();
  Seq2SeqModel student(config);
  std::set<std::string> ours;
  for (const auto& [name, t] : model_state(student)) ours.insert(name);
  EXPECT_EQ(ours, hf_saved_t5_keys());
}

TEST(Checkpoint, StudentReloadsBitIdenticallyWithHuggingFaceLayout) {
  test::TempDir dir;
  auto model = load_model(test::fixture("t5-student-from-switch-tiny-4"));
  save_model(model, dir.file("student"), {test::fixture("t5-student-from-switch-tiny-4/spiece.model")});
  auto back = load_model(dir.file("student"));
  auto a = model->named_parameters(), b = back->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();

  SafetensorsFile f(dir.file("student/model.safetensors"));
  std::set<std::string> keys;
  for (const auto& [name, e] : f.entries()) {
    keys.insert(name);
    EXPECT_EQ(e.dtype, "F32") << name;
  }
  EXPECT_EQ(keys, hf_saved_t5_keys());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_TRUE(fs::exists(dir.file("student/spiece.model")));
  EXPECT_TRUE(fs::exists(dir.file("student/generation_config.json")));
  EXPECT_FALSE(fs::exists(dir.file("student.tmp")));

  // Every key Hugging Face wrote for this T5 is written with the same value.
  auto ours = json::parse(read_text_file(dir.file("student/config.json")));
  auto theirs = json::parse(read_text_file(test::fixture("t5-student-from-switch-tiny-4/config.json")));
  for (auto it = theirs.begin(); it != theirs.end(); ++it) {
    if (it.key() == "transformers_version" || it.key() == "classifier_dropout") continue;
    ASSERT_TRUE(ours.contains(it.key())) << it.key();
    EXPECT_EQ(ours[it.key()], it.value()) << it.key();
  }
}

TEST(Checkpoint, SwitchModelRoundTripKeepsHuggingFaceKeys) {
  test::TempDir dir;
  auto model = load_model(test::fixture("switch-tiny-4"));
  save_model(model, dir.file("teacher"));
  std::set<std::string> ours, theirs;
  SafetensorsFile written(dir.file("teacher/model.safetensors"));
  SafetensorsFile original(test::fixture("switch-tiny-4/model.safetensors"));
  for (const auto& [n, e] : written.entries()) ours.insert(n);
  for (const auto& [n, e] : original.entries()) theirs.insert(n);
  EXPECT_EQ(ours, theirs);
  auto back = load_model(dir.file("teacher"));
  for (const auto& p : model->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), back->named_parameters()[p.key()]));
}

TEST(Checkpoint, UntiedModelStoresItsHead) {
  auto config = read_hf_config(test::fixture("switch-tiny-4/config.json")).dense_counterpart();
  config.tie_word_embeddings = false;
  Seq2SeqModel model(config);
  std::set<std::string> keys;
  for (const auto& [name, t] : model_state(model)) keys.insert(name);
  EXPECT_TRUE(keys.count("lm_head.weight"));
  test::TempDir dir;
  save_model(model, dir.file("m"));
  auto back = load_model(dir.file("m"));
  EXPECT_TRUE(torch::equal(back->lm_head->weight, model->lm_head->weight));
}

// The message load_state gives for the tiny Switch fixture's config and `tensors`, "" if none.
std::string load_state_error(const std::map<std::string, at::Tensor>& tensors) {
  Seq2SeqModel model(read_hf_config(test::fixture("switch-tiny-4/config.json")));
  try {
    load_state(model, tensors, "some/model.safetensors");
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, EveryMismatchIsReportedAtOnceByName) {
  auto tensors = load_model_tensors(test::fixture("switch-tiny-4"));
  tensors.erase("encoder.block.0.layer.0.SelfAttention.q.weight");
  tensors.erase("decoder.final_layer_norm.weight");
  tensors["encoder.block.9.layer.0.SelfAttention.q.weight"] = torch::zeros({64, 64});
  tensors["shared.weight"] = torch::zeros({500, 64});
  const std::string m = load_state_error(tensors);
  EXPECT_NE(m.find("some/model.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("4 problems"), std::string::npos) << m;
  EXPECT_NE(m.find("missing tensor encoder.block.0.layer.0.SelfAttention.q.weight [64, 64]"), std::string::npos) << m;
  EXPECT_NE(m.find("missing tensor decoder.final_layer_norm.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("unexpected tensor encoder.block.9.layer.0.SelfAttention.q.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("tensor shared.weight has shape [500, 64], expected [512, 64]"), std::string::npos) << m;
}

TEST(Checkpoint, NonFiniteWeightsAreNamed) {
  // Issue 13, class 8: NaN or Inf weights are refused at load, by tensor.
  auto tensors = load_model_tensors(test::fixture("switch-tiny-4"));
  tensors["decoder.final_layer_norm.weight"] = tensors["decoder.final_layer_norm.weight"].clone();
  tensors["decoder.final_layer_norm.weight"][3] = std::numeric_limits<float>::quiet_NaN();
  tensors["shared.weight"] = tensors["shared.weight"].clone();
  tensors["shared.weight"][0][0] = std::numeric_limits<float>::infinity();
  const std::string m = load_state_error(tensors);
  EXPECT_NE(m.find("tensor decoder.final_layer_norm.weight holds NaN or infinite values"), std::string::npos) << m;
  EXPECT_NE(m.find("tensor shared.weight holds NaN or infinite values"), std::string::npos) << m;
}

TEST(Checkpoint, ConfigThatDoesNotMatchTheWeights) {
  test::TempDir dir;
  copy_fixture("switch-tiny-4", dir.file("m"));
  auto j = json::parse(read_text_file(dir.file("m/config.json")));
  j["d_ff"] = 256;
  write_text_atomic(dir.file("m/config.json"), j.dump());
  auto err = load_error(dir.file("m"));
  EXPECT_NE(err.find("encoder.block.0.layer.1.mlp.wi.weight has shape [128, 64], expected [256, 64]"), std::string::npos) << err;
}

TEST(Checkpoint, ConfigWithAWrongType) {
  test::TempDir dir;
  copy_fixture("switch-tiny-4", dir.file("m"));
  auto j = json::parse(read_text_file(dir.file("m/config.json")));
  j["num_heads"] = "four";
  write_text_atomic(dir.file("m/config.json"), j.dump());
  auto err = load_error(dir.file("m"));
  EXPECT_NE(err.find("m/config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("num_heads"), std::string::npos) << err;
}

TEST(Checkpoint, MissingFilesAreNamed) {
  test::TempDir dir;
  EXPECT_NE(load_error(dir.file("nope")).find("not a model directory"), std::string::npos);
  fs::create_directories(dir.file("m"));
  EXPECT_NE(load_error(dir.file("m")).find("config.json: missing"), std::string::npos);
  fs::copy_file(test::fixture("switch-tiny-4/config.json"), dir.file("m/config.json"));
  EXPECT_NE(load_error(dir.file("m")).find("no model.safetensors"), std::string::npos);
}

TEST(Checkpoint, HalfPrecisionWeightsLoadIntoAFloatModel) {
  test::TempDir dir;
  copy_fixture("switch-tiny-4", dir.file("m"));
  std::vector<std::pair<std::string, torch::Tensor>> bf16;
  for (const auto& [n, t] : load_model_tensors(dir.file("m"))) bf16.emplace_back(n, t.to(torch::kBFloat16));
  save_safetensors(dir.file("m/model.safetensors"), bf16);
  auto model = load_model(dir.file("m"));
  EXPECT_EQ(model->shared->weight.scalar_type(), torch::kFloat32);
  for (const auto& [n, t] : bf16) {
    if (n == "shared.weight") {
      EXPECT_TRUE(torch::equal(model->shared->weight, t.to(torch::kFloat32)));
    }
  }
}

}  // namespace
}  // namespace distill
