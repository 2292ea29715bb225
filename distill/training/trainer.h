// One training loop for every job: a model from scratch (teacher or dense baseline) on ground
// truth, or a student against a frozen teacher. Logs, metrics.jsonl, checkpoints, exact resume.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/batching.h"
#include "distill/training/budget.h"
#include "distill/process/distributed.h"
#include "distill/evaluation/evaluate.h"
#include "distill/training/losses.h"
#include "distill/training/optim.h"
#include "distill/config/run_config.h"
#include "distill/training/teacher_cache.h"
#include "models/errors.h"
#include "models/arch/seq2seq.h"

namespace distill {

// The run was stopped by the user (Ctrl-C) after saving a checkpoint.
class InterruptedError : public Error {
 public:
  using Error::Error;
};

// Training diverged (NaN or inf loss); the last good checkpoint is left intact.
class TrainingError : public Error {
 public:
  using Error::Error;
};

struct TrainerOptions {
  std::string stage = "train";            // names the log lines and metrics ("teacher", "student", ...)
  std::string dir;                        // stage directory: checkpoints/, model/, metrics.jsonl, DONE.json
  TrainingConfig training;                // steps, optimizer, schedule, intervals
  uint64_t seed = 0;                      // torch RNG (dropout, jitter) seed at a fresh start
  bool resume = false;                    // continue from the newest checkpoint in dir/checkpoints
  std::vector<std::string> copy_files;    // copied into every saved model (tokenizer files)
  DataPosition start;                     // where a fresh run starts in the data stream (a student
                                          // continues where its teacher's training stopped)
  int64_t schedule_offset = 0;            // the learning-rate schedule is read this many steps further on
                                          // (a student continuing its teacher's schedule)
  Collective* dist = world();             // data-parallel: this rank trains on its share of every
                                          // global batch; only rank 0 writes (nullptr: one process)
};

struct TeacherSignal {
  Seq2SeqModel teacher{nullptr};          // frozen, eval mode
  DistillLossOptions loss;                // hard / soft mix
  int64_t cache_top_k = 0;                // > 0: cache the teacher's top-k soft targets per example
  std::shared_ptr<SoftTargetSource> targets;  // or: its soft targets read from here (a file on disk)
  double hidden_weight = 0;               // > 0: add this times the hidden-state term (needs no cache)
  HiddenLoss hidden_loss = HiddenLoss::kMse;
  std::vector<HiddenLayerPair> hidden_pairs;  // student/teacher hidden states matched
};

struct TrainResult {
  int64_t steps = 0;
  double seconds = 0;
  double tokens_per_second = 0;           // encoder + decoder tokens processed per second
  Budget budget;                          // what the whole stage consumed, resumed parts included
  DataPosition end;                       // the data position after the last step
  std::optional<EvalResult> eval;         // at the last step
};

class Trainer {
 public:
  Trainer(Seq2SeqModel model, std::shared_ptr<const Dataset> data, const std::vector<Batch>* eval_batches,
          TrainerOptions options, std::optional<TeacherSignal> teacher = std::nullopt);
  // Trains to options.training.steps and writes dir/model and dir/DONE.json.
  TrainResult run();

  Seq2SeqModel model() const { return model_; }

 private:
  struct StepLosses;
  // Forward, losses, then backward of loss * scale unless `before_backward` (given the step's
  // losses) returns false; data-parallel ranks reduce their losses there, before any gradient moves.
  StepLosses train_step(const Batch& batch, double scale, const std::function<bool(StepLosses&)>& before_backward = {});
  bool writer() const { return o_.dist == nullptr || o_.dist->is_root(); }
  void save_checkpoint(int64_t step, const DataPosition& next);
  // The error for non-finite training state, naming the last good checkpoint.
  TrainingError diverged(const std::string& what) const;
  bool restore_checkpoint(int64_t& step, DataPosition& next);
  void restore_checkpoint_from(const std::string& dir, int64_t& step, DataPosition& next);
  void log_routing(nlohmann::json& metrics);

  Seq2SeqModel model_;
  std::shared_ptr<const Dataset> data_;
  const std::vector<Batch>* eval_;
  TrainerOptions o_;
  std::optional<TeacherSignal> teacher_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::shared_ptr<SoftTargetSource> cache_;  // the teacher's stored soft targets, when it does not run every step
  Budget budget_;                         // consumed so far (restored on resume)
  RoutingAccumulator routing_;            // a sparse model's routing since the last log line
};

// Artetxe et al.'s expert-gradient scaling: multiplies the gradients of expert parameters by
// `factor` (1/sqrt(E)) and leaves every other gradient alone.
void scale_expert_gradients(const NamedParams& params, double factor);

// The finished checkpoint directories in `dir`/checkpoints, newest first.
std::vector<std::string> finished_checkpoints(const std::string& dir);

// The newest finished checkpoint directory in `dir`/checkpoints, or "".
std::string latest_checkpoint(const std::string& dir);

}  // namespace distill
