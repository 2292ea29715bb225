// The jobs end to end through the binary, on configs/tiny.yaml and the SOTU data set-up fetches.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "distill/process/run_lock.h"
#include "distill/training/trainer.h"
#include "models/kernels/native_bf16.h"
#include "models/io/atomic_file.h"
#include "models/io/safetensors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using nlohmann::json;
using test::have_sotu;
using test::run_distill;
namespace fs = std::filesystem;

TEST(E2eRun, TinyExperimentWritesACompleteConsistentReport) {
  // The bf16 keys at their defaults: bf16 products where the CPU multiplies bf16 natively, for the
  // teacher trained here too (teacher.train_bf16).
  ASSERT_TRUE(have_sotu()) << "run tools/fetch_data.sh (tools/setup.sh does)";
  test::TempDir dir;
  const auto t0 = std::chrono::steady_clock::now();
  std::string out, err;
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run"), &out, &err), 0) << err;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 60.0);
  EXPECT_NE(out.find("quality gain preserved"), std::string::npos) << out;

  for (const char* f : {"config.yaml", "distill.log", "report.md", "report.json", "tokenizer/spiece.model",
                        "teacher/model/config.json", "teacher/metrics.jsonl", "teacher/stage.json", "baseline/model/model.safetensors",
                        "student/model/spiece.model", "student/DONE.json", "student/stage.json"}) {
    EXPECT_TRUE(fs::exists(dir.file("run/") + f)) << f;
  }
  auto r = json::parse(read_text_file(dir.file("run/report.json")));
  EXPECT_EQ(r["seeds"], 1);
  for (const char* who : {"teacher", "baseline", "student"}) {
    const auto& m = r[who];
    for (const char* k : {"total", "embedding", "non_embedding", "active_per_token"})
      EXPECT_TRUE(m["parameters"][k].is_number_integer()) << who << " " << k;
    EXPECT_GT(m["flops_per_token"].get<double>(), 0) << who;
    ASSERT_EQ(m["evals"].size(), 1u) << who;
    const auto& e = m["evals"][0];
    for (const char* k : {"nll", "nll_stderr", "neg_log_perplexity", "perplexity", "accuracy", "tokens"})
      EXPECT_TRUE(e[k].is_number()) << who << " " << k;
    EXPECT_NEAR(e["perplexity"].get<double>(), std::exp(e["nll"].get<double>()), 1e-6 * e["perplexity"].get<double>());
    EXPECT_NEAR(m["quality"]["neg_log_perplexity"]["mean"].get<double>(), e["neg_log_perplexity"].get<double>(), 1e-12);
    EXPECT_TRUE(m["quality"]["neg_log_perplexity"]["ci95"].is_array()) << who;  // the held-out sample's noise
    for (const char* k : {"steps", "examples", "tokens", "train_flops", "seconds"})
      EXPECT_TRUE(m["budget"][k].is_number()) << who << " " << k;
    EXPECT_GT(m["budget"]["tokens"].get<int64_t>(), 0) << who;
  }
  // Fair budgets by default: the baseline trains for the teacher's steps plus the student's, over
  // the very batches the two saw (the student continues where the teacher stopped).
  const auto &tb = r["teacher"]["budget"], &bb = r["baseline"]["budget"], &sb = r["student"]["budget"];
  EXPECT_EQ(bb["steps"].get<int64_t>(), tb["steps"].get<int64_t>() + sb["steps"].get<int64_t>());
  EXPECT_GE(bb["tokens"].get<int64_t>(), tb["tokens"].get<int64_t>() + sb["tokens"].get<int64_t>());
  EXPECT_EQ(r["student"]["path_budget"]["tokens"].get<int64_t>(), tb["tokens"].get<int64_t>() + sb["tokens"].get<int64_t>());
  EXPECT_TRUE(r["budget_check"]["fair"].get<bool>());
  EXPECT_EQ(r["settings"]["baseline_steps"], 80);
  // Routing health of every sparse layer of the teacher.
  ASSERT_EQ(r["routing"].size(), 2u);
  for (const auto& l : r["routing"]) {
    for (const char* k : {"layer", "dropped_rate", "dropped_rate_train_capacity", "max_load", "min_load", "dead_experts",
                          "mean_gate", "aux_loss", "load"})
      EXPECT_TRUE(l.contains(k)) << k;
  }
  EXPECT_TRUE(r["teacher"]["evals"][0].contains("routing"));
  const double tp = r["teacher"]["parameters"]["total"], sp = r["student"]["parameters"]["total"];
  EXPECT_EQ(r["student"]["parameters"]["total"], r["baseline"]["parameters"]["total"]);
  EXPECT_NEAR(r["compression"]["percent"].get<double>(), 100 * (1 - sp / tp), 1e-9);
  EXPECT_NEAR(r["compression"]["ratio"].get<double>(), tp / sp, 1e-9);
  const auto& q = r["quality"];
  const double t = q["teacher"], b = q["baseline"], s = q["student"];
  EXPECT_NEAR(q["teacher_minus_baseline"].get<double>(), t - b, 1e-12);
  if (q["gain_preserved_percent"].is_null()) {
    EXPECT_TRUE(q["gain_preserved_undefined"].is_string());  // and the reason is given
  } else {
    EXPECT_NEAR(q["gain_preserved_percent"].get<double>(), 100 * (s - b) / (t - b), 1e-9);
  }
  EXPECT_NEAR(q["retention_percent"].get<double>(), 100 * t / s, 1e-9);  // NLLs: -t / -s
  EXPECT_TRUE(q["gap_noise_2se"].is_number());
  EXPECT_TRUE(r["warnings"].is_array());
  for (const char* k : {"hard_weight", "soft_weight", "temperature", "soft_loss", "student_init", "steps", "objective", "seeds"})
    EXPECT_TRUE(r["settings"].contains(k)) << k;
  EXPECT_EQ(r["settings"]["hard_weight"], 0.75);
  const std::string precision = native_bf16_products() ? "bf16 products" : "float32";
  EXPECT_EQ(r["settings"]["precision"]["training"], precision);
  EXPECT_EQ(r["settings"]["precision"]["frozen_teacher"], precision);
  EXPECT_EQ(r["settings"]["precision"]["teacher_training"], precision);
  const std::string stated = "training " + precision + " (the teacher's: " + precision + "), frozen teacher " + precision;
  EXPECT_NE(read_text_file(dir.file("run/report.md")).find("- Precision: " + stated + "."), std::string::npos);
  EXPECT_NE(read_text_file(dir.file("run/distill.log")).find("precision: " + stated + " (teacher.bf16, teacher.train_bf16, training.bf16: auto"),
            std::string::npos);
  // What each stage trained with is part of what it is (a change retrains it).
  const auto trained_bf16 = [&](const std::string& stage) {
    return json::parse(read_text_file(dir.file("run/" + stage + "/stage.json")))["fingerprint"]["training"]["bf16"].get<bool>();
  };
  EXPECT_EQ(trained_bf16("teacher"), native_bf16_products());
  EXPECT_EQ(trained_bf16("baseline"), native_bf16_products());
  EXPECT_EQ(trained_bf16("student"), native_bf16_products());

  // metrics.jsonl carries every loss term, and the teacher's the routing of each sparse layer.
  std::ifstream metrics(dir.file("run/student/metrics.jsonl"));
  std::string first;
  std::getline(metrics, first);
  auto m = json::parse(first);
  for (const char* k : {"loss", "hard", "soft", "kl", "lr", "tokens_per_s"}) EXPECT_TRUE(m.contains(k)) << k;
  std::ifstream teacher_metrics(dir.file("run/teacher/metrics.jsonl"));
  std::getline(teacher_metrics, first);
  m = json::parse(first);
  ASSERT_TRUE(m.contains("routing")) << first;
  EXPECT_EQ(m["routing"].size(), 2u);

  // A repeated run reuses every finished stage and reproduces the report.
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run"), &out, &err), 0) << err;
  for (const char* stage : {"teacher", "baseline", "student"})
    EXPECT_NE(err.find(std::string("[") + stage + "] finished earlier with the same settings: reusing"), std::string::npos) << err;
  auto again = json::parse(read_text_file(dir.file("run/report.json")));
  EXPECT_EQ(again["quality"], r["quality"]);

  // Other distillation settings retrain the student only; a second seed trains its three stages
  // and the quality figures get intervals over seeds.
  const std::string teacher_done = read_text_file(dir.file("run/teacher/DONE.json"));
  const std::string baseline_done = read_text_file(dir.file("run/baseline/DONE.json"));
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run") +
                            " --set distillation.hard_weight=0.5 --set distillation.soft_weight=0.5 --set seeds=2 --set parallel_stages=2",
                        &out, &err), 0) << err;
  EXPECT_EQ(read_text_file(dir.file("run/teacher/DONE.json")), teacher_done);  // not trained again
  EXPECT_EQ(read_text_file(dir.file("run/baseline/DONE.json")), baseline_done);
  EXPECT_EQ(err.find("[teacher seed 1] not reusing"), std::string::npos) << err;
  EXPECT_NE(err.find("[student seed 1] not reusing"), std::string::npos) << err;
  EXPECT_NE(err.find("distillation.hard_weight: 0.75 -> 0.5"), std::string::npos) << err;
  EXPECT_NE(err.find("started the teacher of seed 2"), std::string::npos) << err;  // side by side, in processes
  EXPECT_TRUE(fs::exists(dir.file("run/seed-1/teacher/DONE.json")));
  auto two = json::parse(read_text_file(dir.file("run/report.json")));
  EXPECT_EQ(two["seeds"], 2);
  EXPECT_EQ(two["settings"]["hard_weight"], 0.5);
  for (const char* who : {"teacher", "baseline", "student"}) {
    const auto& nlp = two[who]["quality"]["neg_log_perplexity"];
    EXPECT_TRUE(nlp["sd"].is_number()) << who;
    ASSERT_TRUE(nlp["ci95"].is_array()) << who;
    EXPECT_LE(nlp["ci95"][0].get<double>(), nlp["mean"].get<double>());
    EXPECT_GE(nlp["ci95"][1].get<double>(), nlp["mean"].get<double>());
    EXPECT_EQ(two[who]["evals"].size(), 2u);
  }
  EXPECT_EQ(two["teacher"]["evals"][0], again["teacher"]["evals"][0]);  // the first seed's teacher, reused
  EXPECT_NE(two["student"]["evals"][0], again["student"]["evals"][0]);  // retrained with the new mix

  // A baseline shorter than the student's path is retrained, and the report warns loudly.
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run") + " --set baseline.steps=5", &out, &err),
            0)
      << err;
  EXPECT_NE(err.find("training.steps: 80 -> 5"), std::string::npos) << err;
  auto shortened = json::parse(read_text_file(dir.file("run/report.json")));
  EXPECT_FALSE(shortened["budget_check"]["fair"].get<bool>());
  EXPECT_NE(out.find("gain preserved is overstated"), std::string::npos) << out;
  EXPECT_NE(read_text_file(dir.file("run/report.md")).find("gain preserved is overstated"), std::string::npos);

  // eval on the student from the CLI agrees with the report's evaluation set-up (same data? no:
  // here the whole validation file) and prints the three figures.
  ASSERT_EQ(run_distill("eval --model " + dir.file("run/student/model") + " --data datasets/sotu/validation.txt --input-length 64 --target-length 16 --max-batches 5 --json",
                        &out, &err), 0) << err;
  auto e = json::parse(out);
  EXPECT_GT(e["tokens"].get<int64_t>(), 0);
  ASSERT_EQ(run_distill("eval --model " + dir.file("run/teacher/model") + " --data datasets/sotu/validation.txt --input-length 64 --target-length 16 --max-batches 5",
                        &out, &err), 0) << err;
  EXPECT_NE(out.find("dropped"), std::string::npos) << out;
  EXPECT_NE(out.find("dead experts"), std::string::npos) << out;
}

TEST(E2eJobs, TrainThenDistillSeparatelyAndConfigCheck) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  const std::string common = " --output " + dir.file("run") + " --set training.steps=6 --set training.log_interval=3";
  // Each job's log states the precision of the models it trains or runs, and the auto keys behind it.
  const std::string p = native_bf16_products() ? "bf16 products" : "float32";
  ASSERT_EQ(run_distill("train configs/tiny.yaml" + common, &out, &err), 0) << err;
  EXPECT_TRUE(fs::exists(dir.file("run/teacher/model/config.json")));
  EXPECT_NE(err.find("precision: teacher training " + p + " (teacher.train_bf16: auto"), std::string::npos) << err;
  ASSERT_EQ(run_distill("distill configs/tiny.yaml" + common + " --set student.init=mean", &out, &err), 0) << err;
  EXPECT_NE(err.find("built from experts (mean)"), std::string::npos) << err;
  EXPECT_NE(err.find("precision: student training " + p + ", frozen teacher " + p + " (teacher.bf16, training.bf16: auto"),
            std::string::npos) << err;
  auto config = read_text_file(dir.file("run/config.yaml"));
  EXPECT_NE(config.find("init: mean"), std::string::npos) << config;
  // The teacher cache and bf16 products from the command line; without static examples the
  // cache is refused before anything runs.
  const std::string cached = common + " --set distillation.teacher_cache=true --set training.bf16=true";
  EXPECT_EQ(run_distill("distill configs/tiny.yaml" + cached, &out, &err), 1);
  EXPECT_NE(err.find("distillation.teacher_cache needs data.static_examples: true"), std::string::npos) << err;
  ASSERT_EQ(run_distill("distill configs/tiny.yaml" + cached + " --set data.static_examples=true", &out, &err), 0) << err;
  config = read_text_file(dir.file("run/config.yaml"));
  EXPECT_NE(config.find("teacher_cache: true"), std::string::npos) << config;
  EXPECT_NE(config.find("static_examples: true"), std::string::npos) << config;

  ASSERT_EQ(run_distill("config check configs/tiny.yaml --set distillation.temperature=2", &out, &err), 0) << err;
  EXPECT_NE(out.find("temperature: 2"), std::string::npos) << out;
  EXPECT_EQ(run_distill("config check configs/tiny.yaml --set distillation.temprature=2", &out, &err), 1);
  EXPECT_NE(err.find("did you mean \"distillation.temperature\""), std::string::npos) << err;
  // A teacher that does not exist is an error before anything runs.
  EXPECT_EQ(run_distill("distill configs/tiny.yaml --output " + dir.file("other"), &out, &err), 1);
  EXPECT_NE(err.find("no teacher at"), std::string::npos) << err;
}

}  // namespace
}  // namespace distill

namespace distill {
namespace {

// Starts a long `distill train`, waits for its third logged step, sends `signal` (INT as Ctrl-C
// would, TERM as a scheduler would), checks that it exited with 130 having saved a checkpoint, and
// returns the step it stopped at (-1 if it did not say).
int64_t interrupt_training(const test::TempDir& dir, const std::string& signal) {
  const std::string script = "cd " + std::string(DISTILL_SOURCE_DIR) + " && (" + DISTILL_BINARY +
                             " --threads 2 train configs/tiny.yaml --output " + dir.file("run") +
                             " --set training.steps=300 --set training.log_interval=1 --set training.checkpoint_interval=0 2>" +
                             dir.file("err") + " & pid=$!; for i in $(seq 600); do grep -q 'step 3/' " + dir.file("err") +
                             " && break; sleep 0.1; done; cat /proc/$pid/task/*/status | grep SigBlk >" + dir.file("blocked") +
                             "; kill -" + signal + " $pid; wait $pid; echo $? >" + dir.file("code") + ")";
  EXPECT_EQ(std::system(script.c_str()), 0);
  const std::string err = read_text_file(dir.file("err"));
  EXPECT_EQ(read_text_file(dir.file("code")), "130\n") << err;
  // The signals reach one watcher thread only (distill/process/interrupt.h): a handler run on a thread
  // inside oneDNN's sgemm corrupts the heap. Every thread blocks SIGINT and SIGTERM but the watcher,
  // whose sigwait unblocks them while it waits.
  std::istringstream blocked(read_text_file(dir.file("blocked")));
  int threads = 0, open = 0;
  for (std::string label, mask; blocked >> label >> mask; ++threads) open += (std::stoull(mask, nullptr, 16) & 0x4002) != 0x4002;
  EXPECT_GE(threads, 3);  // main, watcher, batch producer (and OpenMP's)
  EXPECT_LE(open, 1) << read_text_file(dir.file("blocked"));
  const auto at = err.find("interrupted at step ");
  EXPECT_NE(at, std::string::npos) << err;
  if (at == std::string::npos) return -1;
  const int64_t step = std::stoll(err.substr(at + 20));
  EXPECT_TRUE(fs::exists(dir.file("run/teacher/checkpoints/step-" + fmt::format("{:08d}", step) + "/trainer_state.json")));
  return step;
}

TEST(E2eInterrupt, CtrlCSavesACheckpointAndResumeFinishes) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  ASSERT_GE(interrupt_training(dir, "INT"), 0);
  EXPECT_FALSE(fs::exists(dir.file("run/teacher/model")));
  std::string out, err2;
  // The same settings resume (how often it logs is not a setting of the model).
  ASSERT_EQ(run_distill("train configs/tiny.yaml --resume --output " + dir.file("run") + " --set training.steps=300 --set training.log_interval=100",
                        &out, &err2),
            0)
      << err2;
  EXPECT_NE(err2.find("resumed from"), std::string::npos) << err2;
  EXPECT_NE(err2.find("step 300/300"), std::string::npos) << err2;
  EXPECT_TRUE(fs::exists(dir.file("run/teacher/model/model.safetensors")));
}

TEST(E2eInterrupt, SigtermSavesACheckpointLikeCtrlC) {
  // Issue 13, class 11: a job scheduler's or a container's stop is SIGTERM.
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  EXPECT_GE(interrupt_training(dir, "TERM"), 0);
}

// distill run trains the teacher and the baseline side by side in child processes: Ctrl-C reaches
// them through the parent, each saves a checkpoint, and --resume finishes the experiment.
TEST(E2eInterrupt, CtrlCStopsEveryStageProcessAndResumeFinishesTheRun) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  const std::string settings = " --set training.steps=150 --set training.checkpoint_interval=0";
  const std::string script = "cd " + std::string(DISTILL_SOURCE_DIR) + " && (" + DISTILL_BINARY +
                             " --threads 2 run configs/tiny.yaml --output " + dir.file("run") + settings +
                             " --set training.log_interval=1 2>" + dir.file("err") +
                             " & pid=$!; for i in $(seq 600); do grep -q 'baseline\\] step 3/' " + dir.file("err") +
                             " && break; sleep 0.1; done; kill -INT $pid; wait $pid; echo $? >" + dir.file("code") + ")";
  ASSERT_EQ(std::system(script.c_str()), 0);
  const std::string err = read_text_file(dir.file("err"));
  EXPECT_EQ(read_text_file(dir.file("code")), "130\n") << err;
  EXPECT_NE(err.find("started the teacher of seed 1"), std::string::npos) << err;
  EXPECT_NE(err.find("every running stage saved a checkpoint"), std::string::npos) << err;
  EXPECT_FALSE(latest_checkpoint(dir.file("run/baseline")).empty()) << err;
  EXPECT_FALSE(fs::exists(dir.file("run/report.json")));
  std::string out, err2;
  ASSERT_EQ(run_distill("run configs/tiny.yaml --resume --output " + dir.file("run") + settings + " --set parallel_stages=2", &out, &err2), 0) << err2;
  EXPECT_NE(err2.find("[baseline] resumed from"), std::string::npos) << err2;
  EXPECT_TRUE(fs::exists(dir.file("run/report.json")));
  auto r = json::parse(read_text_file(dir.file("run/report.json")));
  EXPECT_EQ(r["baseline"]["budget"]["steps"], 300);  // the teacher's 150 plus the student's 150
}

// student.schedule: continue reads the schedule on from the teacher's last step, so every step of
// the student's path has the learning rate of the baseline's step at the same place in the data.
TEST(E2eRun, AStudentContinuingItsTeachersScheduleHasTheBaselinesLearningRate) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  const std::string common = " --set training.log_interval=1 --set training.schedule.name=inverse_sqrt";
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run") + common + " --set student.schedule=continue", &out, &err), 0)
      << err;
  auto lr_by_step = [&](const std::string& stage) {
    std::map<int64_t, double> lr;
    std::ifstream in(dir.file("run/" + stage + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      const auto m = json::parse(line);
      if (m.contains("lr")) lr[m["step"].get<int64_t>()] = m["lr"].get<double>();
    }
    return lr;
  };
  const auto teacher = lr_by_step("teacher"), baseline = lr_by_step("baseline"), student = lr_by_step("student");
  ASSERT_FALSE(teacher.empty());
  ASSERT_FALSE(student.empty());
  const int64_t offset = teacher.rbegin()->first;
  for (const auto& [step, lr] : student) {
    ASSERT_TRUE(baseline.count(offset + step)) << step;
    EXPECT_DOUBLE_EQ(lr, baseline.at(offset + step)) << "student step " << step;
  }
  // restart (the default) warms up again: its first step's rate is not the baseline's there.
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run") + common, &out, &err), 0) << err;
  const auto restarted = lr_by_step("student");
  EXPECT_LT(restarted.begin()->second, baseline.at(offset + restarted.begin()->first));
  // A given teacher's schedule is unknown.
  EXPECT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("other") + " --set student.schedule=continue --set teacher.path=" +
                            dir.file("run/teacher/model"), &out, &err), 1);
  EXPECT_NE(err.find("student.schedule = continue needs a teacher trained or fine-tuned here"), std::string::npos) << err;
}

TEST(E2eCompare, TeacherAgainstItsDenseCounterpartAtEqualSteps) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  // Both models train as the teacher does (teacher.train_bf16, set to float32 here to check that the
  // dense counterpart follows it whatever the CPU), and the report says so.
  ASSERT_EQ(run_distill("compare configs/tiny.yaml --output " + dir.file("run") +
                            " --set seeds=2 --set parallel_stages=2 --set teacher.train_bf16=false", &out,
                        &err), 0) << err;
  EXPECT_NE(out.find("gap "), std::string::npos) << out;
  EXPECT_NE(err.find("started the dense counterpart of seed 2"), std::string::npos) << err;
  auto r = json::parse(read_text_file(dir.file("run/compare.json")));
  EXPECT_EQ(r["seeds"], 2);
  EXPECT_EQ(r["settings"]["precision"], "float32");
  EXPECT_NE(read_text_file(dir.file("run/compare.md")).find("- Precision: both trained with float32."), std::string::npos);
  EXPECT_NE(err.find("precision: the teacher and its dense counterpart train with float32\n"), std::string::npos) << err;
  EXPECT_FALSE(json::parse(read_text_file(dir.file("run/dense/stage.json")))["fingerprint"]["training"]["bf16"].get<bool>());
  EXPECT_EQ(r["teacher"]["budget"]["steps"], r["dense"]["budget"]["steps"]);  // equal steps
  EXPECT_EQ(r["teacher"]["budget"]["tokens"], r["dense"]["budget"]["tokens"]);  // on the same batches
  ASSERT_EQ(r["gap_per_seed"].size(), 2u);
  EXPECT_NEAR(r["gap"]["mean"].get<double>(), (r["gap_per_seed"][0].get<double>() + r["gap_per_seed"][1].get<double>()) / 2, 1e-12);
  ASSERT_TRUE(r["gap"]["ci95"].is_array());
  const double lo = r["gap"]["ci95"][0], hi = r["gap"]["ci95"][1];
  const std::string verdict = r["verdict"];
  if (lo > 0) EXPECT_NE(verdict.find("teacher beats"), std::string::npos);
  else if (hi < 0) EXPECT_NE(verdict.find("dense counterpart beats"), std::string::npos);
  else EXPECT_NE(verdict.find("includes zero"), std::string::npos);
  EXPECT_EQ(r["routing"].size(), 2u);
  EXPECT_TRUE(fs::exists(dir.file("run/compare.md")));
  // The experiment in the same directory reuses the teacher the comparison trained.
  ASSERT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run") + " --no-bf16", &out, &err), 0) << err;
  EXPECT_NE(err.find("[teacher] finished earlier with the same settings"), std::string::npos) << err;
  // A given teacher has no dense counterpart trained alongside it.
  EXPECT_EQ(run_distill("compare configs/tiny.yaml --output " + dir.file("other") + " --set teacher.path=" + dir.file("run/teacher/model"), &out, &err), 1);
  EXPECT_NE(err.find("unset teacher.path"), std::string::npos) << err;
}

TEST(E2eJobs, AFailedStageProcessIsOneClearErrorNamingTheStage) {
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  EXPECT_EQ(run_distill("run configs/tiny.yaml --output " + dir.file("run") +
                            " --set training.optimizer.lr=1e9 --set parallel_stages=2",
                        &out, &err), 1);
  // The teacher or the baseline diverges first; the other is stopped.
  EXPECT_NE(err.find("of seed 1 failed (exit 1): ["), std::string::npos) << err;
  EXPECT_NE(err.find("training diverged"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir.file("run/report.json")));
}

TEST(E2eJobs, StageProcessesRunTheParentsBinaryEvenWhenItsFileIsGone) {
  // Rebuilding distill during a run replaced the file its path names; stage processes started
  // from that path then exited 127. They run the parent's own image now.
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  fs::copy_file(DISTILL_BINARY, dir.file("distill-copy"));
  fs::permissions(dir.file("distill-copy"), fs::perms::owner_exec, fs::perm_options::add);
  const std::string script = "cd " + std::string(DISTILL_SOURCE_DIR) + " && (" + dir.file("distill-copy") +
                             " --threads 2 run configs/tiny.yaml --output " + dir.file("run") +
                             " --set training.steps=10 --set parallel_stages=2 2>" + dir.file("err") +
                             " & p=$!; for i in $(seq 600); do grep -q 'SentencePiece tokenizer' " + dir.file("err") +
                             " && break; sleep 0.02; done; rm " + dir.file("distill-copy") + "; wait $p; echo $? >" +
                             dir.file("code") + ")";
  ASSERT_EQ(std::system(script.c_str()), 0);
  const std::string err = read_text_file(dir.file("err"));
  ASSERT_NE(err.find("SentencePiece tokenizer"), std::string::npos) << err;  // the file went before any stage started
  EXPECT_EQ(read_text_file(dir.file("code")), "0\n") << err;
  EXPECT_TRUE(fs::exists(dir.file("run/report.json"))) << err;
}

TEST(E2eJobs, DivergenceLeavesOnlyFiniteCheckpoints) {
  // Issue 13, class 3: a huge learning rate; every step is checkpointed until training diverges.
  // Whatever was written must be finite (the gradient is checked before the update, the state before
  // a checkpoint), so --resume never starts from poison.
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  EXPECT_EQ(run_distill("train configs/tiny.yaml --output " + dir.file("run") +
                            " --set training.optimizer.lr=1e4 --set training.grad_clip=0 --set training.steps=30"
                            " --set training.checkpoint_interval=1 --set training.keep_checkpoints=100",
                        &out, &err), 1);
  EXPECT_NE(err.find("training diverged"), std::string::npos) << err;
  const fs::path checkpoints = dir.file("run/teacher/checkpoints");
  int seen = 0;
  if (fs::exists(checkpoints)) {
    for (const auto& entry : fs::directory_iterator(checkpoints)) {
      for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
        const auto path = entry.path() / file;
        if (!fs::exists(path)) continue;
        for (const auto& [name, tensor] : SafetensorsFile(path.string()).load_all()) {
          if (tensor.is_floating_point()) {
            EXPECT_TRUE(torch::isfinite(tensor).all().item<bool>()) << path << " " << name;
          }
        }
        ++seen;
      }
    }
  }
  EXPECT_FALSE(fs::exists(dir.file("run/teacher/model")));
  std::cerr << "checked " << seen << " checkpoint files\n";
}

TEST(E2eJobs, AFreshRunNeverInheritsAnOlderRunsCheckpoints) {
  // Issue 13, class 2: an older run's checkpoints must not survive a new run into the same
  // directory, whether that run was left unfinished with the same settings or its settings changed.
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  const std::string base = "train configs/tiny.yaml --output " + dir.file("run") + " --set training.keep_checkpoints=100";
  const auto steps_checkpointed = [&] {
    std::set<int64_t> steps;
    for (const auto& entry : fs::directory_iterator(dir.file("run/teacher/checkpoints")))
      steps.insert(std::stoll(entry.path().filename().string().substr(5)));
    return steps;
  };
  ASSERT_EQ(run_distill(base + " --set training.steps=28 --set training.checkpoint_interval=7", &out, &err), 0) << err;
  EXPECT_EQ(steps_checkpointed(), (std::set<int64_t>{7, 14, 21, 28}));
  fs::remove(dir.file("run/teacher/DONE.json"));  // as if killed before it finished
  fs::remove_all(dir.file("run/teacher/model"));
  ASSERT_EQ(run_distill(base + " --set training.steps=28 --set training.checkpoint_interval=5", &out, &err), 0) << err;
  EXPECT_NE(err.find("starting afresh"), std::string::npos) << err;
  EXPECT_EQ(steps_checkpointed(), (std::set<int64_t>{5, 10, 15, 20, 25, 28}));
  ASSERT_EQ(run_distill(base + " --set training.steps=30 --set training.checkpoint_interval=10", &out, &err), 0) << err;
  EXPECT_NE(err.find("its settings changed"), std::string::npos) << err;
  EXPECT_EQ(steps_checkpointed(), (std::set<int64_t>{10, 20, 30}));
}

TEST(E2eJobs, ResumeSkipsADamagedCheckpointAndLogsEachStepOnce) {
  // Issue 13, class 11: a run killed after step 10's checkpoint was damaged resumes from step 5 with
  // a warning, and metrics.jsonl holds every step once (not the killed run's steps 6-10 twice).
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  const std::string cmd = "train configs/tiny.yaml --output " + dir.file("run") +
                          " --set training.steps=10 --set training.checkpoint_interval=5 --set training.log_interval=1";
  ASSERT_EQ(run_distill(cmd, &out, &err), 0) << err;
  fs::remove(dir.file("run/teacher/DONE.json"));  // as if killed at the very end
  fs::remove_all(dir.file("run/teacher/model"));
  const std::string damaged = dir.file("run/teacher/checkpoints/step-00000010/model.safetensors");
  fs::resize_file(damaged, fs::file_size(damaged) / 2);
  ASSERT_EQ(run_distill(cmd + " --resume", &out, &err), 0) << err;
  EXPECT_NE(err.find("step-00000010 cannot be restored"), std::string::npos) << err;
  EXPECT_NE(err.find("resumed from " + dir.file("run/teacher/checkpoints/step-00000005")), std::string::npos) << err;
  std::map<int64_t, int> logged;  // step -> training lines
  std::istringstream metrics(read_text_file(dir.file("run/teacher/metrics.jsonl")));
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) ++logged[j.at("step").get<int64_t>()];
  }
  ASSERT_EQ(logged.size(), 10u);
  for (const auto& [step, n] : logged) EXPECT_EQ(n, 1) << "step " << step;
}

TEST(E2eJobs, AnOutputThatCannotBeWrittenIsExitOneNamingThePath) {
  // Issue 13, class 10 (as root, a read-only directory does not stop writes; these paths do).
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  std::string out, err;
  write_text_atomic(dir.file("file"), "x");
  EXPECT_EQ(run_distill("train configs/tiny.yaml --output " + dir.file("file/run"), &out, &err), 1);
  EXPECT_NE(err.find(dir.file("file")), std::string::npos) << err;
  fs::create_directories(dir.file("run/distill.log"));  // the log cannot be opened
  EXPECT_EQ(run_distill("train configs/tiny.yaml --output " + dir.file("run"), &out, &err), 1);
  EXPECT_NE(err.find("distill.log: cannot write the run log"), std::string::npos) << err;
}

TEST(E2eJobs, ASecondRunIntoALockedDirectoryIsRefused) {
  // Issue 13, class 4. This test process takes the lock the way a running distill does.
  ASSERT_TRUE(have_sotu());
  test::TempDir dir;
  fs::create_directories(dir.file("run"));
  lock_run_directory(dir.file("run"));
  EXPECT_NO_THROW(lock_run_directory(dir.file("run")));  // again from the holder: fine
  std::string out, err;
  EXPECT_EQ(run_distill("train configs/tiny.yaml --output " + dir.file("run"), &out, &err), 1);
  EXPECT_NE(err.find("is in use by another distill (pid " + std::to_string(getpid()) + " on "), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir.file("run/config.yaml")));  // nothing written
  EXPECT_FALSE(fs::exists(dir.file("run/distill.log")));
}

}  // namespace
}  // namespace distill
