// Data-parallel training on c10d (issue 15): ranks on loopback, launched by --nproc or by hand
// with torchrun's environment.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "distill/trainer.h"
#include "models/io/atomic_file.h"
#include "models/io/safetensors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

bool have_sotu() { return fs::exists(std::string(DISTILL_SOURCE_DIR) + "/datasets/sotu/validation.txt"); }

// Dense baseline, dropout off, every step logged: 10 teacher + 10 student steps = 20 steps.
const std::string kSettings =
    " --set training.steps=10 --set training.log_interval=1 --set training.dropout=0 --set training.eval_interval=0";

std::vector<double> losses(const std::string& metrics) {
  std::vector<double> out;
  std::istringstream in(read_text_file(metrics));
  for (std::string line; std::getline(in, line);) {
    const auto j = json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

TEST(E2eDataParallel, TwoRanksOfHalfTheBatchMatchOneRankOfTheWholeBatch) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  ASSERT_EQ(test::run_distill("train configs/tiny.yaml --dense --output " + dir.file("one") + kSettings, &out, &err), 0) << err;
  // The second run reuses the first's tokenizer: only the parallelism differs.
  const std::string tok = " --set data.tokenizer.path=" + dir.file("one/tokenizer");
  ASSERT_EQ(test::run_distill("--nproc 2 train configs/tiny.yaml --dense --output " + dir.file("two") + kSettings + tok, &out, &err), 0)
      << err;
  EXPECT_NE(err.find("launched 2 ranks"), std::string::npos) << err;
  const auto a = losses(dir.file("one/baseline/metrics.jsonl")), b = losses(dir.file("two/baseline/metrics.jsonl"));
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << "step " << i + 1;
  const auto wa = load_model_tensors(dir.file("one/baseline/model")), wb = load_model_tensors(dir.file("two/baseline/model"));
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [name, t] : wa) EXPECT_TRUE(torch::allclose(t, wb.at(name), 1e-5, 1e-5)) << name;
  // Only rank 0 writes: one metrics line per step, one checkpoint.
  const auto state = json::parse(read_text_file(latest_checkpoint(dir.file("two/baseline")) + "/trainer_state.json"));
  EXPECT_EQ(state["world_size"], 2);
}

// Starts ranks by hand with torchrun's variables; returns the shell script's exit status.
std::string rank_command(int rank, const std::string& port, const std::string& args) {
  return "RANK=" + std::to_string(rank) + " WORLD_SIZE=2 LOCAL_RANK=" + std::to_string(rank) +
         " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port + " DISTILL_COLLECTIVE_TIMEOUT=120 " + DISTILL_BINARY +
         " --threads 1 " + args;
}

TEST(E2eDataParallel, KillingOneRankMakesTheOtherExitNonZeroWithinAMinute) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  const std::string port = std::to_string(29700 + ::getpid() % 200);
  const std::string args = "train configs/tiny.yaml --dense --output " + dir.file("run") +
                           " --set training.steps=5000 --set training.log_interval=1";
  const std::string script = "cd " + std::string(DISTILL_SOURCE_DIR) + " && (" + rank_command(0, port, args) + " 2>" +
                             dir.file("err0") + " & p0=$!; " + rank_command(1, port, args) + " 2>" + dir.file("err1") +
                             " & p1=$!; for i in $(seq 900); do grep -q 'step 3/' " + dir.file("err0") +
                             " && break; sleep 0.1; done; kill -9 $p1; s=$(date +%s); wait $p0; echo $? >" + dir.file("code") +
                             "; echo $(( $(date +%s) - s )) >" + dir.file("seconds") + ")";
  ASSERT_EQ(std::system(script.c_str()), 0);
  const std::string err = read_text_file(dir.file("err0"));
  ASSERT_NE(err.find("step 3/"), std::string::npos) << err << read_text_file(dir.file("err1"));
  EXPECT_NE(read_text_file(dir.file("code")), "0\n") << err;
  EXPECT_LT(std::stoi(read_text_file(dir.file("seconds"))), 60) << err;
  EXPECT_NE(err.find("rank 0: all-reduce failed"), std::string::npos) << err;
}

TEST(E2eDataParallel, RanksWithDifferentConfigurationsRefuseToStart) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  const std::string port = std::to_string(29500 + ::getpid() % 200);
  const std::string base = "train configs/tiny.yaml --dense --output " + dir.file("run");
  const std::string script = "cd " + std::string(DISTILL_SOURCE_DIR) + " && (" + rank_command(0, port, base + " --set training.steps=10") +
                             " 2>" + dir.file("err0") + " & p0=$!; " + rank_command(1, port, base + " --set training.steps=11") +
                             " 2>" + dir.file("err1") + "; echo $? >" + dir.file("code1") + "; wait $p0; echo $? >" +
                             dir.file("code0") + ")";
  ASSERT_EQ(std::system(script.c_str()), 0);
  for (const char* r : {"0", "1"}) {
    EXPECT_EQ(read_text_file(dir.file(std::string("code") + r)), "1\n") << r;
    const std::string err = read_text_file(dir.file(std::string("err") + r));
    EXPECT_NE(err.find("ranks disagree on the configuration: rank(s) 1 differ from rank 0"), std::string::npos) << err;
  }
  EXPECT_FALSE(fs::exists(dir.file("run/baseline")));
}

}  // namespace
}  // namespace distill
