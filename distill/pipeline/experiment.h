// The whole experiment behind `distill run` and `distill compare`: every seed's stages (trained
// side by side in child processes), their evaluation and the report. One stage: stage_training.h;
// the data: run_data.h.
#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "distill/config/run_config.h"
#include "distill/evaluation/evaluate.h"
#include "distill/pipeline/run_data.h"

namespace distill {

// Held-out evaluations kept across runs of one process (a sweep's runs share stages).
using EvaluationCache = std::map<std::string, EvalResult>;

// The whole experiment, every seed; writes OUTPUT/report.json and OUTPUT/report.md and returns the report.
nlohmann::json run_experiment(const RunConfig& config, bool resume);
// The same on `data` already prepared for `config` (a sweep prepares each distinct data set once).
// `evaluations`, when given, is consulted and filled instead of a cache of this run's own.
nlohmann::json run_experiment(const RunConfig& config, const PreparedData& data, bool resume,
                              EvaluationCache* evaluations = nullptr);

// Does the teacher earn its gap? Trains the Switch teacher and its dense counterpart for the same
// steps on the same batches for every seed, evaluates both, and writes OUTPUT/compare.json and
// OUTPUT/compare.md: the gap with its 95% interval, and the teacher's routing health.
nlohmann::json run_comparison(const RunConfig& config, bool resume);

// What a job trains; its log's first line states the precision of those models alone.
enum class Job { experiment, comparison, teacher, baseline, student };

// Takes OUTPUT for this process (OUTPUT/.lock: a second run into it is refused), starts logging to
// the console and OUTPUT/distill.log, and writes OUTPUT/config.yaml.
void open_run_directory(const RunConfig& config, Job job);

}  // namespace distill
