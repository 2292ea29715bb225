// Task distillation end to end through the binary: pre-training, fine-tuning from a checkpoint,
// distillation on input/target pairs, and the task's metrics in the report. The pairs are
// synthetic (a word's letters -> the word reversed in capitals), written by the test.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/io/safetensors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
using test::have_sotu;
using test::run_distill;
namespace fs = std::filesystem;

// n pairs "c a t<TAB>T A C" of random 3-6 letter words.
void write_pairs(const std::string& path, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> letter(0, 7), length(3, 6);
  std::ofstream out(path);
  for (int i = 0; i < n; ++i) {
    std::string in, target;
    const int len = length(rng);
    std::string word;
    for (int k = 0; k < len; ++k) word += static_cast<char>('a' + letter(rng));
    for (int k = 0; k < len; ++k) in += std::string(k ? " " : "") + word[k];
    for (int k = len - 1; k >= 0; --k) target += std::string(k < len - 1 ? " " : "") + static_cast<char>(word[k] - 'a' + 'A');
    out << in << "\t" << target << "\n";
  }
}

// The task settings on top of configs/tiny.yaml: pre-training on its speeches, the task on pairs.
std::string task_settings(const test::TempDir& dir) {
  return " --set data.train.files=[" + dir.file("train.tsv") + "] --set data.train.format=tsv" +
         " --set data.validation.files=[" + dir.file("validation.tsv") + "] --set data.validation.format=tsv" +
         " --set data.objective=seq2seq --set data.pack=false --set data.input_length=16 --set data.target_length=16" +
         " --set data.eval_batches=0 --set data.tokenizer.path=" + dir.file("tokenizer") +
         " --set task.test.files=[" + dir.file("test.tsv") + "] --set task.test.format=tsv --set task.max_new_tokens=16" +
         " --set task.bootstrap_resamples=200";
}

class E2eTask : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(have_sotu()) << "run tools/fetch_data.sh (tools/setup.sh does)";
    write_pairs(dir_.file("train.tsv"), 400, 1);
    write_pairs(dir_.file("validation.tsv"), 40, 2);
    write_pairs(dir_.file("test.tsv"), 60, 3);
    std::string out, err;
    // One tokenizer for every run of the test (trained on the speeches, like the pre-training's).
    ASSERT_EQ(run_distill("tokenizer train --input datasets/sotu/validation.txt --vocab-size 1000 --sentinels 50 --output " +
                              dir_.file("tokenizer"), &out, &err), 0) << err;
  }
  test::TempDir dir_;
};

TEST_F(E2eTask, PretrainFineTuneAndDistillReportTheTaskMetrics) {
  std::string out, err;
  const std::string cmd = "run configs/tiny.yaml --output " + dir_.file("run") + task_settings(dir_) +
                          " --set seeds=2 --set pretrain.steps=30 --set pretrain.data.train.files=[datasets/sotu/validation.txt]"
                          " --set pretrain.data.validation_fraction=0.2 --set pretrain.data.eval_batches=2"
                          " --set pretrain.data.input_length=64 --set pretrain.data.target_length=16 --set pretrain.data.batch_size=8"
                          " --set teacher.steps=20 --set training.steps=10 --set parallel_stages=1";
  ASSERT_EQ(run_distill(cmd, &out, &err), 0) << err;
  EXPECT_NE(err.find("fine-tuning"), std::string::npos) << err;
  // The pre-training stages' lines say what they train.
  for (const char* label : {"[teacher pre-training seed 1] step", "[baseline pre-training seed 2] step"}) {
    EXPECT_NE(err.find(label), std::string::npos) << label << "\n" << err;
  }
  const auto r = json::parse(read_text_file(dir_.file("run/report.json")));
  ASSERT_TRUE(r.contains("task")) << r.dump(2);
  const auto& t = r["task"];
  EXPECT_EQ(t["examples"], 60);
  for (const char* metric : {"exact_match", "token_error_rate", "char_error_rate"}) {
    for (const char* who : {"teacher", "baseline", "student"}) {
      const auto& m = t["metrics"][metric][who];
      ASSERT_EQ(m["per_seed"].size(), 2u) << metric << " " << who;
      EXPECT_GE(m["mean"].get<double>(), 0.0) << metric << " " << who;
      const auto& s = m["per_seed"][0];
      EXPECT_LE(s["bootstrap_ci95"][0].get<double>(), s["value"].get<double>());
      EXPECT_GE(s["bootstrap_ci95"][1].get<double>(), s["value"].get<double>());
    }
    const auto& g = t["gain"][metric];
    EXPECT_TRUE(g["gain_preserved_percent"].is_number() || g.contains("gain_preserved_undefined")) << g.dump();
    EXPECT_EQ(g["gain_preserved_per_seed"].size(), 2u);
  }
  // Budgets: the teacher's includes its pre-training (30 steps) and fine-tuning (20); the baseline
  // pre-trained as long and fine-tuned for the teacher's 20 plus the student's 10.
  EXPECT_EQ(r["teacher"]["budget"]["steps"], 50);
  EXPECT_EQ(r["baseline"]["budget"]["steps"], 60);
  EXPECT_EQ(r["student"]["path_budget"]["steps"], 60);
  EXPECT_TRUE(r["budget_check"]["fair"].get<bool>()) << r["budget_check"].dump();
  // Every distinct model's predictions are kept for inspection: 2 seeds x 3 models.
  int predictions = 0;
  for (const auto& e : fs::directory_iterator(dir_.file("run/predictions"))) predictions += e.path().extension() == ".tsv";
  EXPECT_EQ(predictions, 6);
  const auto md = read_text_file(dir_.file("run/report.md"));
  EXPECT_NE(md.find("## The task: 60 held-out examples"), std::string::npos) << md;
  // Run again: every stage, the pre-training ones included, is reused.
  ASSERT_EQ(run_distill(cmd, &out, &err), 0) << err;
  EXPECT_EQ(err.find("training a"), std::string::npos) << err;
  EXPECT_EQ(err.find("fine-tuning"), std::string::npos) << err;
}

// A teacher fine-tuned from a checkpoint (teacher.init_from), stopped after its step-10 checkpoint
// and resumed, ends with exactly the weights of an uninterrupted fine-tuning.
TEST_F(E2eTask, FineTuningFromACheckpointResumesExactly) {
  std::string out, err;
  ASSERT_EQ(run_distill("train configs/tiny.yaml --output " + dir_.file("pre") + " --set training.steps=20 --set data.tokenizer.path=" +
                            dir_.file("tokenizer"), &out, &err), 0) << err;
  const std::string cmd = "train configs/tiny.yaml" + task_settings(dir_) + " --set teacher.init_from=" +
                          dir_.file("pre/teacher/model") + " --set teacher.trained_tokens=12345 --set teacher.steps=20" +
                          " --set training.checkpoint_interval=10 --set training.dropout=0.1";
  ASSERT_EQ(run_distill(cmd + " --output " + dir_.file("whole"), &out, &err), 0) << err;
  EXPECT_NE(err.find("fine-tuning " + dir_.file("pre/teacher/model")), std::string::npos) << err;
  ASSERT_EQ(run_distill(cmd + " --output " + dir_.file("cut"), &out, &err), 0) << err;
  // As if killed after step 10's checkpoint.
  fs::remove(dir_.file("cut/teacher/DONE.json"));
  fs::remove_all(dir_.file("cut/teacher/model"));
  fs::remove_all(dir_.file("cut/teacher/checkpoints/step-00000020"));
  ASSERT_EQ(run_distill(cmd + " --output " + dir_.file("cut") + " --resume", &out, &err), 0) << err;
  EXPECT_NE(err.find("resumed from " + dir_.file("cut/teacher/checkpoints/step-00000010")), std::string::npos) << err;
  const auto a = load_model_tensors(dir_.file("whole/teacher/model")), b = load_model_tensors(dir_.file("cut/teacher/model"));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(t.equal(b.at(name))) << name;
  // The starting point's weights did change: it was trained on, not copied.
  const auto start = load_model_tensors(dir_.file("pre/teacher/model"));
  EXPECT_FALSE(start.at("shared.weight").equal(a.at("shared.weight")));
  // The stage records its own fine-tuning (the starting point's stated tokens are added when a run
  // reports it).
  const auto done = json::parse(read_text_file(dir_.file("whole/teacher/DONE.json")));
  EXPECT_EQ(done["budget"]["steps"], 20);
}

TEST_F(E2eTask, BadTaskSettingsAreOneClearError) {
  std::string out, err;
  // A task file that is not pairs, and init_from naming no model: both named, nothing trained.
  EXPECT_EQ(run_distill("run configs/tiny.yaml --output " + dir_.file("bad") + task_settings(dir_) +
                            " --set task.test.format=text --set teacher.init_from=" + dir_.file("nowhere"), &out, &err), 1) << err;
  EXPECT_NE(err.find("task.test.format"), std::string::npos) << err;
  EXPECT_NE(err.find("teacher.init_from"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir_.file("bad/teacher")));
}

}  // namespace
}  // namespace distill
