// The report's arithmetic: t quantiles, intervals over seeds and the held-out sample, Fieller's
// interval for gain preserved and when it is undefined, the budget check, and the stage records
// that decide what is reused.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "distill/report/report.h"
#include "distill/pipeline/stages.h"
#include "distill/evaluation/stats.h"
#include "models/io/atomic_file.h"
#include "models/errors.h"
#include "tests/test_util.h"

namespace distill {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(Stats, StudentTQuantilesMatchTables) {
  EXPECT_NEAR(stats::student_t_quantile(0.975, 1), 12.706205, 1e-5);
  EXPECT_NEAR(stats::student_t_quantile(0.975, 2), 4.302653, 1e-5);
  EXPECT_NEAR(stats::student_t_quantile(0.975, 10), 2.228139, 1e-5);
  EXPECT_NEAR(stats::student_t_quantile(0.975, 2.5), 3.574655, 1e-5);  // fractional dof (Welch)
  EXPECT_NEAR(stats::student_t_quantile(0.975, 1e9), 1.959964, 1e-5);
  EXPECT_NEAR(stats::student_t_quantile(0.025, 10), -2.228139, 1e-5);
  EXPECT_NEAR(stats::student_t_quantile(0.95, 5), 2.015048, 1e-5);
}

TEST(Stats, SeedIntervalsFromKnownNumbers) {
  // Three seeds, no sample noise: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653.
  auto e = stats::estimate({1.0, 2.0, 3.0}, 0.0, 100);
  EXPECT_DOUBLE_EQ(e.mean, 2.0);
  EXPECT_NEAR(e.sd, 1.0, 1e-12);
  EXPECT_NEAR(e.se, 1.0 / std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(e.dof, 2.0, 1e-9);
  EXPECT_NEAR(e.lo, 2.0 - 4.302653 / std::sqrt(3.0), 1e-5);
  EXPECT_NEAR(e.hi, 2.0 + 4.302653 / std::sqrt(3.0), 1e-5);
  // Both sources: variances add, and Welch-Satterthwaite gives the degrees of freedom.
  auto both = stats::estimate({1.0, 2.0, 3.0}, 0.5, 20);
  const double vs = 1.0 / 3.0, ve = 0.25;
  EXPECT_NEAR(both.se, std::sqrt(vs + ve), 1e-12);
  EXPECT_NEAR(both.dof, (vs + ve) * (vs + ve) / (vs * vs / 2 + ve * ve / 20), 1e-9);
  // One seed: only the sample's noise, with its degrees of freedom.
  auto one = stats::estimate({5.0}, 0.1, 9);
  EXPECT_DOUBLE_EQ(one.sd, 0.0);
  EXPECT_NEAR(one.hi - one.mean, 0.1 * 2.262157, 1e-5);
  // Nothing uncertain: a point.
  auto point = stats::estimate({5.0}, 0.0, 9);
  EXPECT_EQ(point.lo, 5.0);
  EXPECT_EQ(point.hi, 5.0);
}

TEST(Stats, FiellerIntervalAndWhenItIsUndefined) {
  // Independent a and d: the interval solves (a - g d)^2 = t^2 (var_a + g^2 var_d).
  const double a = 0.3, d = 0.5, va = 0.0004, vd = 0.0009, t = 2.0;
  auto i = stats::fieller(a, d, va, vd, 0.0, t);
  ASSERT_TRUE(i.has_value());
  for (double g : {i->lo, i->hi}) EXPECT_NEAR((a - g * d) * (a - g * d), t * t * (va + g * g * vd), 1e-12);
  EXPECT_LT(i->lo, a / d);
  EXPECT_GT(i->hi, a / d);
  // The gap's own interval includes zero (|d| <= t se_d): no bounded interval for the ratio.
  EXPECT_FALSE(stats::fieller(a, 0.05, va, vd, 0.0, t).has_value());
  // A gap known exactly: the interval is a's divided by d.
  auto exact = stats::fieller(a, d, va, 0.0, 0.0, t);
  ASSERT_TRUE(exact.has_value());
  EXPECT_NEAR(exact->lo, (a - t * std::sqrt(va)) / d, 1e-12);
  EXPECT_NEAR(exact->hi, (a + t * std::sqrt(va)) / d, 1e-12);
}

TEST(Stats, RatioStandardErrorAndPairedDifferences) {
  stats::BatchSums x{{10, 12, 8, 10}, {5, 6, 4, 5}};  // ratio 2 in every batch: no noise
  EXPECT_DOUBLE_EQ(x.ratio(), 2.0);
  EXPECT_NEAR(stats::ratio_se(x), 0.0, 1e-12);
  stats::BatchSums y{{10, 14, 6, 10}, {5, 5, 5, 5}};  // batch means 2, 2.8, 1.2, 2
  EXPECT_NEAR(stats::ratio_se(y), stats::sd({2, 2.8, 1.2, 2}) / 2.0, 1e-12);  // equal counts: sd / sqrt(n)
  // A model and itself plus a constant per token differ by exactly that constant, with no noise.
  stats::BatchSums z{{15, 19, 11, 15}, {5, 5, 5, 5}};
  auto diff = stats::combine({&z, &y}, {1.0, -1.0});
  EXPECT_NEAR(diff.ratio(), 1.0, 1e-12);
  EXPECT_NEAR(stats::ratio_se(diff), 0.0, 1e-12);
}

// An evaluation with per-batch NLLs drawn around `nll` (the same wiggle for every model, as on
// shared batches), `shift` added in every batch.
EvalResult eval_of(double nll, double shift_per_batch = 0.0) {
  EvalResult e;
  const std::vector<double> wiggle{0.02, -0.01, 0.03, -0.04, 0.0, 0.01, -0.02, 0.01};
  for (size_t j = 0; j < wiggle.size(); ++j) {
    const double n = 100;
    e.batch_nll.value.push_back((nll + wiggle[j] + (j % 2 ? shift_per_batch : -shift_per_batch)) * n);
    e.batch_nll.count.push_back(n);
    e.batch_correct.value.push_back(30);
    e.batch_correct.count.push_back(n);
  }
  e.nll = e.batch_nll.ratio();
  e.neg_log_perplexity = -e.nll;
  e.perplexity = std::exp(e.nll);
  e.accuracy = 0.3;
  e.tokens = 800;
  return e;
}

StageResult stage(const char* name, int64_t steps, int64_t tokens) {
  StageResult s;
  s.name = name;
  s.model_dir = std::string("/runs/") + name;
  s.budget.steps = steps;
  s.budget.tokens = tokens;
  s.budget.examples = steps * 16;
  return s;
}

ReportInputs inputs(const std::vector<std::array<double, 3>>& nlls, int64_t baseline_tokens = 2700) {
  ReportInputs in;
  in.teacher.model_type = "switch_transformers";
  in.teacher.num_experts = 4;
  in.teacher.encoder_sparse_step = in.teacher.decoder_sparse_step = 2;
  in.teacher.vocab_size = in.baseline.vocab_size = in.student.vocab_size = 100;
  in.src_len = 16;
  in.tgt_len = 4;
  uint64_t seed = 1;
  for (const auto& [t, b, s] : nlls) {
    SeedRun run;
    run.seed = seed++;
    run.teacher = stage("teacher", 2500, 2500);
    run.baseline = stage("baseline", 2700, baseline_tokens);
    run.student = stage("student", 200, 200);
    run.teacher_eval = eval_of(t);
    run.baseline_eval = eval_of(b);
    run.student_eval = eval_of(s);
    in.runs.push_back(run);
  }
  return in;
}

TEST(Report, GainPreservedWithIntervalsOverSeeds) {
  // NLLs (teacher, baseline, student) per seed: gaps 0.5, 0.6, 0.4; lifts 0.2, 0.3, 0.1.
  auto r = build_report(inputs({{5.0, 5.5, 5.3}, {5.0, 5.6, 5.3}, {5.1, 5.5, 5.4}}));
  const auto& q = r["quality"];
  EXPECT_NEAR(q["teacher"].get<double>(), -(5.0 + 5.0 + 5.1) / 3, 1e-9);
  EXPECT_NEAR(q["gain_preserved_percent"].get<double>(), 100.0 * 0.2 / 0.5, 1e-6);
  // The gap's interval: the seeds' spread (sd 0.1, se 0.1 / sqrt 3, t 4.303); the shared batches
  // add no noise to a difference of models that wiggle alike.
  EXPECT_NEAR(q["gap"]["mean"].get<double>(), 0.5, 1e-9);
  EXPECT_NEAR(q["gap"]["sd"].get<double>(), 0.1, 1e-9);
  EXPECT_NEAR(q["gap"]["ci95"][1].get<double>() - 0.5, 4.302653 * 0.1 / std::sqrt(3.0), 1e-4);
  ASSERT_TRUE(q["gain_preserved_ci95"].is_array());
  const double lo = q["gain_preserved_ci95"][0].get<double>(), hi = q["gain_preserved_ci95"][1].get<double>();
  EXPECT_LT(lo, 40.0);
  EXPECT_GT(hi, 40.0);
  // Fieller by hand: lifts and gaps move together here (cov = var), so solve the quadratic.
  const double va = 0.01 / 3, vd = 0.01 / 3, cv = 0.01 / 3, t = 4.302653;
  const double A = 0.25 - t * t * vd, B = 0.1 - t * t * cv, C = 0.04 - t * t * va;
  EXPECT_NEAR(lo, 100 * (B - std::sqrt(B * B - A * C)) / A, 1e-2);
  EXPECT_NEAR(hi, 100 * (B + std::sqrt(B * B - A * C)) / A, 1e-2);
  ASSERT_EQ(q["gain_preserved_per_seed"].size(), 3u);
  EXPECT_NEAR(q["gain_preserved_per_seed"][1].get<double>(), 50.0, 1e-6);
  for (const char* who : {"teacher", "baseline", "student"}) {
    EXPECT_TRUE(r[who]["quality"]["neg_log_perplexity"]["ci95"].is_array()) << who;
    EXPECT_EQ(r[who]["evals"].size(), 3u) << who;
  }
  EXPECT_TRUE(r["budget_check"]["fair"].get<bool>());
  for (const auto& w : r["warnings"]) EXPECT_EQ(w.get<std::string>().find("fewer than"), std::string::npos) << w;
  EXPECT_NE(report_markdown(r).find("(95% interval"), std::string::npos);
}

TEST(Report, GainPreservedIsUndefinedWhenTheGapIsWithinNoise) {
  // Gaps 0.05, -0.05, 0.03 over seeds: the interval includes zero.
  auto r = build_report(inputs({{5.0, 5.05, 5.02}, {5.1, 5.05, 5.06}, {5.0, 5.03, 5.01}}));
  const auto& q = r["quality"];
  EXPECT_TRUE(q["gain_preserved_percent"].is_null());
  EXPECT_TRUE(q["gain_preserved_ci95"].is_null());
  EXPECT_NE(q["gain_preserved_undefined"].get<std::string>().find("includes zero"), std::string::npos);
  EXPECT_NE(report_markdown(r).find("**undefined**"), std::string::npos);
  EXPECT_NE(report_summary(r).find("gain preserved undefined"), std::string::npos);
  // The seed whose teacher is worse than its baseline has no gain of its own.
  EXPECT_NEAR(q["gain_preserved_per_seed"][0].get<double>(), 100.0 * 0.03 / 0.05, 1e-6);
  EXPECT_TRUE(q["gain_preserved_per_seed"][1].is_null());
  EXPECT_NE(report_markdown(r).find("gap -0.0500, gain -"), std::string::npos);
  // A teacher clearly worse than the baseline: undefined too, for that reason.
  auto worse = build_report(inputs({{5.5, 5.0, 5.2}, {5.6, 5.0, 5.3}, {5.5, 5.1, 5.2}}));
  EXPECT_NE(worse["quality"]["gain_preserved_undefined"].get<std::string>().find("worse than the dense baseline"), std::string::npos);
}

TEST(Report, OneSeedUsesTheSampleNoiseAndSaysSo) {
  auto in = inputs({{5.0, 5.5, 5.3}});
  in.runs[0].baseline_eval = eval_of(5.5, 0.05);  // noisier than the teacher, batch by batch
  auto r = build_report(in);
  const auto& gap = r["quality"]["gap"];
  EXPECT_TRUE(gap["sd"].is_null());
  ASSERT_TRUE(gap["ci95"].is_array());
  EXPECT_GT(gap["se"].get<double>(), 0.0);
  EXPECT_NEAR(r["quality"]["gap_noise_2se"].get<double>(), 2 * gap["se"].get<double>(), 1e-12);
  bool said = false;
  for (const auto& w : r["warnings"]) said |= w.get<std::string>().find("one seed") != std::string::npos;
  EXPECT_TRUE(said);
}

TEST(Report, ShortOrUnknownBaselineBudgetIsALoudWarning) {
  auto r = build_report(inputs({{5.0, 5.5, 5.3}}, /*baseline_tokens=*/200));
  EXPECT_FALSE(r["budget_check"]["fair"].get<bool>());
  bool warned = false;
  for (const auto& w : r["warnings"]) warned |= w.get<std::string>().find("gain preserved is overstated") != std::string::npos;
  EXPECT_TRUE(warned) << r["warnings"];
  EXPECT_NE(report_markdown(r).find("the baseline had less"), std::string::npos);

  auto in = inputs({{5.0, 5.5, 5.3}});
  in.runs[0].teacher.budget_known = false;
  in.runs[0].teacher.trained_here = false;
  auto unknown = build_report(in);
  EXPECT_TRUE(unknown["budget_check"]["fair"].is_null());
  warned = false;
  for (const auto& w : unknown["warnings"]) warned |= w.get<std::string>().find("teacher's training budget is unknown") != std::string::npos;
  EXPECT_TRUE(warned);
}

TEST(Stages, ReusedOnlyWithTheSameSettingsAndStartedAfreshOtherwise) {
  test::TempDir dir;
  const std::string stage_dir = dir.file("student");
  json fp = {{"stage", "student"}, {"distillation", {{"hard_weight", 0.75}, {"soft_weight", 0.25}}}, {"seed", 1}};
  EXPECT_EQ(prepare_stage("student", stage_dir, fp, false), StageAction::kTrain);
  ASSERT_TRUE(fs::exists(stage_dir + "/stage.json"));
  // Finish it.
  fs::create_directories(stage_dir + "/model");
  write_text_atomic(stage_dir + "/model/config.json", "{}");
  write_text_atomic(stage_dir + "/DONE.json", json{{"budget", {{"steps", 7}, {"tokens", 70}}}, {"data_end", {{"epoch", 1}, {"batch", 3}}}}.dump());
  EXPECT_EQ(prepare_stage("student", stage_dir, fp, false), StageAction::kReuse);
  const auto finished = read_finished_stage(stage_dir);
  EXPECT_EQ(finished.budget.steps, 7);
  EXPECT_EQ(finished.budget.tokens, 70);
  EXPECT_EQ(finished.data_end.epoch, 1);
  EXPECT_EQ(finished.data_end.batch, 3);
  EXPECT_EQ(finished.fingerprint, fingerprint_hash(fp));
  // A changed setting: trained again in an emptied directory, and the diff names it.
  json changed = fp;
  changed["distillation"]["hard_weight"] = 0.5;
  EXPECT_NE(fingerprint_diff(fp, changed).find("distillation.hard_weight: 0.75 -> 0.5"), std::string::npos);
  EXPECT_EQ(prepare_stage("student", stage_dir, changed, false), StageAction::kTrain);
  EXPECT_FALSE(fs::exists(stage_dir + "/DONE.json"));
  EXPECT_FALSE(fs::exists(stage_dir + "/model"));
  // An unfinished stage with a checkpoint resumes only with --resume and the same settings.
  fs::create_directories(stage_dir + "/checkpoints/step-00000005");
  write_text_atomic(stage_dir + "/checkpoints/step-00000005/trainer_state.json", "{}");
  EXPECT_EQ(prepare_stage("student", stage_dir, changed, true), StageAction::kResume);
  EXPECT_EQ(prepare_stage("student", stage_dir, fp, true), StageAction::kTrain);  // other settings: not its run
  EXPECT_FALSE(fs::exists(stage_dir + "/checkpoints"));
  // A directory without any record (an older distill) is not trusted.
  fs::remove(stage_dir + "/stage.json");
  fs::create_directories(stage_dir + "/model");
  write_text_atomic(stage_dir + "/model/config.json", "{}");
  write_text_atomic(stage_dir + "/DONE.json", "{}");
  EXPECT_EQ(prepare_stage("student", stage_dir, fp, false), StageAction::kTrain);
}

TEST(Stages, FileHashesTellContentsApart) {
  test::TempDir dir;
  write_text_atomic(dir.file("a"), "hello world, a corpus line\n");
  write_text_atomic(dir.file("b"), "hello world, a corpus line!\n");
  write_text_atomic(dir.file("c"), "hello world, a corpus line\n");
  EXPECT_NE(file_hash(dir.file("a")), file_hash(dir.file("b")));
  EXPECT_EQ(file_hash(dir.file("a")), file_hash(dir.file("c")));
  EXPECT_THROW(file_hash(dir.file("missing")), InputError);
}

}  // namespace
}  // namespace distill
