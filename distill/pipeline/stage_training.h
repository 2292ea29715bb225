// The stages of one seed (teacher, dense baseline, student, and the comparison's dense
// counterpart): what determines each one's model, training or reusing it, and which are still to
// be trained. The data they train on: run_data.h; the whole run: experiment.h.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "distill/config/run_config.h"
#include "distill/pipeline/run_data.h"
#include "distill/training/stage_result.h"
#include "models/arch/seq2seq.h"

namespace distill {

// A model checkpoint's vocabulary must cover the tokenizer's with the same special ids.
void check_vocabulary(const ModelConfig& model, const Tokenizer& tokenizer, const std::string& what);

// The architecture of a from-scratch teacher (dense when dense_only).
ModelConfig teacher_model_config(const RunConfig& config, int64_t vocab_size, bool dense_only);

// Seed replica `i` of a run: its output directory (OUTPUT for the first, OUTPUT/seed-<i> for the
// others) and model seed (seed + 1000 i); the data order stays the run's.
RunConfig replica_config(const RunConfig& config, int64_t i);

// The teacher: trained from scratch into OUTPUT/teacher, or teacher.path as it is.
StageResult train_teacher(const RunConfig& config, const PreparedData& data, bool resume);

// Steps of a baseline trained here: baseline.steps, else the teacher's steps (or the steps
// teacher.trained_tokens takes at this batch size) plus the student's.
int64_t baseline_steps(const RunConfig& config, const PreparedData& data);
// The steps a baseline trained here takes: baseline_steps, or continue_steps on top of baseline.path.
int64_t baseline_train_steps(const RunConfig& config, const PreparedData& data);

// The dense baseline: trained from scratch into OUTPUT/baseline, or baseline.path (trained on for
// baseline.continue_steps into OUTPUT/baseline).
StageResult train_baseline(const RunConfig& config, const PreparedData& data, bool resume);

// The teacher's dense counterpart (the student's shape) trained from scratch for the teacher's
// steps on the same batches into OUTPUT/dense: the Switch-vs-dense comparison at equal steps.
StageResult train_dense_counterpart(const RunConfig& config, const PreparedData& data, bool resume);

// The teacher a `distill distill` job uses: teacher.path, else the finished teacher stage.
StageResult find_teacher(const RunConfig& config, const PreparedData& data);

// How the frozen teacher is run (its precision and capacity), which its outputs depend on: part of
// a student's fingerprint and of the key its evaluations are kept under.
nlohmann::json teacher_run(const RunConfig& config);

// Loads `teacher` frozen for distillation, with the configured evaluation capacity factor and dtype.
Seq2SeqModel load_teacher(const RunConfig& config, const StageResult& teacher, const Tokenizer& tokenizer);

// Builds, initialises and distills the student into OUTPUT/student. A student of a teacher trained
// here continues in the data where the teacher's training stopped, so the baseline, trained over
// the same stream for the teacher's and the student's steps, sees exactly the batches they saw.
StageResult distill_student(const RunConfig& config, const PreparedData& data, const StageResult& teacher, bool resume);

// A stage of one seed that still has to be trained, and the jobs (indices) it waits for.
struct StageJob {
  int64_t seed_index = 0;
  std::string stage;          // teacher | baseline | student
  std::vector<size_t> after;  // jobs that must finish first (a student waits for its teacher)
  std::string dir;            // the stage's directory (jobs of several runs that share it are one)
  std::string config_file;    // the run's resolved configuration; empty: the one run_stage_jobs is given
  bool pretraining = false;   // config_file is a run's pre-training (RunConfig::pretraining)
};

// Every stage of every seed that is not finished with its current settings, in dependency order:
// of the experiment, or with `comparison` of the Switch-vs-dense comparison (teacher and dense).
std::vector<StageJob> pending_stages(const RunConfig& config, const PreparedData& data, bool comparison = false);

// The Switch-vs-dense comparison trains its teacher from scratch here: ConfigError otherwise.
void require_teacher_trained_here(const RunConfig& config);

// Trains (or reuses) one stage (teacher, baseline, student or dense) of one seed: what a
// `distill stage` child process does.
StageResult run_stage(const RunConfig& config, const PreparedData& data, int64_t seed_index, const std::string& stage,
                      bool resume);

}  // namespace distill
