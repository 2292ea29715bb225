// The experiment's report: what was compressed, how much, how much quality was kept, what each
// model's training cost, and how certain each figure is.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/evaluation/evaluate.h"
#include "distill/config/run_config.h"
#include "distill/training/stage_result.h"
#include "distill/report/task_report.h"
#include "models/arch/model_config.h"

namespace distill {

// One seed's three models: how they were made and how they scored on the shared held-out batches.
struct SeedRun {
  uint64_t seed = 0;  // model seed (init, dropout, router jitter)
  StageResult teacher, baseline, student;
  EvalResult teacher_eval, baseline_eval, student_eval;
};

struct ReportInputs {
  ModelConfig teacher, baseline, student;  // architectures
  std::vector<SeedRun> runs;               // one per seed, at least one
  int64_t src_len = 0, tgt_len = 0;        // example lengths used for FLOP counts
  int64_t baseline_steps = 0;              // steps the baseline trained here (0: given as it is)
  RunConfig config;                        // the settings that produced it
  std::vector<TaskRun> task_runs;          // one per seed when the run has a task; else empty
  TaskReportOptions task_options;
};

// report.json content. Per model: parameters, FLOPs per token, training budget, every seed's
// evaluation and the quality over seeds (mean, sd, 95% interval from the seeds' spread and the
// held-out sample's noise). Then compression; the teacher-baseline gap; quality gain preserved
// (student - baseline) / (teacher - baseline) with Fieller's 95% interval, or why it is undefined
// (the gap's interval includes zero, or the teacher is worse); the budget check (the baseline
// must have trained on at least the tokens of the student's whole path); the teacher's routing
// per sparse layer; warnings; settings; with a task, "task" (task_report.h).
nlohmann::json build_report(const ReportInputs& in);

// How reports and the run log name a precision: "bf16 products" (float32 accumulation) or "float32".
const char* precision_name(bool bf16);
// A report's settings.precision: which products ran in bf16 (float32 accumulation) and which in
// float32, for the trained models, the frozen teacher and a teacher trained here.
nlohmann::json precision_record(const RunConfig& config, bool teacher_trained_here);
// A report's settings.precision as a phrase: "training bf16 products (the teacher's: float32),
// frozen teacher bf16 products" (the teacher's part when the teacher was trained here).
std::string precision_text(const nlohmann::json& precision);

// The same as Markdown, for report.md and the README.
std::string report_markdown(const nlohmann::json& report);

// A few lines for the console.
std::string report_summary(const nlohmann::json& report);

// The Switch-vs-dense comparison at equal steps: the teacher and its dense counterpart per seed
// (SeedRun's teacher and baseline; no student).
struct ComparisonInputs {
  ModelConfig teacher, dense;
  std::vector<SeedRun> runs;
  int64_t src_len = 0, tgt_len = 0;
  RunConfig config;
};

// compare.json: both models' parameters, FLOPs per token, budgets, every seed's evaluation and the
// quality over seeds; the gap (teacher - dense) with its 95% interval and whether it excludes zero;
// the teacher's routing per sparse layer; warnings.
nlohmann::json build_comparison(const ComparisonInputs& in);
std::string comparison_markdown(const nlohmann::json& comparison);
std::string comparison_summary(const nlohmann::json& comparison);

}  // namespace distill
