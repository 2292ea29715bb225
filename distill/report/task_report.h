// The task part of the report: each model's task metrics over seeds and examples, and on each
// metric the teacher-baseline gap and the share of it the student keeps.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/evaluation/task_metrics.h"

namespace distill {

// One seed's three models scored on the same examples.
struct TaskRun {
  TaskScores teacher, baseline, student;
  nlohmann::json decoding;  // per model: examples per second etc. (decode_task), for the record
};

struct TaskReportOptions {
  bool classification = false;       // name exact match "accuracy"
  int64_t bootstrap_resamples = 1000;  // for the paired bootstrap of gain preserved over examples
  uint64_t seed = 1;
  std::string test_files;             // what was scored, for the report's text
};

// report.json's "task": "metrics" (per metric: per model mean over seeds with its 95% interval from
// the seeds' spread and the examples' noise, and each seed's value with its bootstrap interval),
// "gain" per metric (gap, lift, gain preserved with Fieller's interval over seeds and examples, and
// a paired bootstrap interval over examples of the seed-mean ratio), "examples", "decoding".
nlohmann::json build_task_report(const std::vector<TaskRun>& runs, const TaskReportOptions& options);

// Markdown section for report.md.
std::string task_markdown(const nlohmann::json& task);

}  // namespace distill
