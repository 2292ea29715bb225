// The experiment's report: what was compressed, how much, and how much quality was kept.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "distill/evaluate.h"
#include "distill/run_config.h"
#include "models/model_config.h"

namespace distill {

struct ReportInputs {
  ModelConfig teacher, student;      // architectures
  EvalResult teacher_eval, baseline_eval, student_eval;  // same held-out batches
  int64_t src_len = 0, tgt_len = 0;  // example lengths used for FLOP counts
  RunConfig config;                  // the settings that produced it
  double teacher_seconds = 0, baseline_seconds = 0, student_seconds = 0;
};

// report.json content: parameters (total, embedding, non-embedding, active per token), FLOPs per
// token, compression (percent and ratio), each model's quality, quality gain preserved
// (student - baseline) / (teacher - baseline) on negative log perplexity, plain retention
// student / teacher, settings, and warnings (e.g. a teacher-baseline gap within the noise).
nlohmann::json build_report(const ReportInputs& in);

// The same as Markdown, for report.md and the README.
std::string report_markdown(const nlohmann::json& report);

// A few lines for the console.
std::string report_summary(const nlohmann::json& report);

}  // namespace distill
