// The jobs behind the CLI: data preparation, training a model from scratch, distilling a
// student, and the whole experiment (teacher, dense baseline, student, evaluation, report).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "data/tokenized_corpus.h"
#include "data/tokenizer.h"
#include "distill/evaluate.h"
#include "distill/run_config.h"
#include "models/seq2seq.h"

namespace distill {

struct PreparedData {
  Tokenizer tokenizer;
  std::shared_ptr<const Dataset> train;
  std::vector<Batch> eval;                 // fixed held-out batches, the same for every model
  std::vector<std::string> tokenizer_files;  // copied next to every saved model
  int64_t train_documents = 0, validation_documents = 0, train_tokens = 0;
  CorpusStats stats;
};

// The tokenizer named by data.tokenizer.path, else the teacher checkpoint's, else one trained
// on the training corpus into OUTPUT/tokenizer (reused when present).
Tokenizer resolve_tokenizer(const RunConfig& config);

// Reads, tokenizes and splits the corpora; builds the training dataset and the evaluation batches.
PreparedData prepare_data(const RunConfig& config, Tokenizer tokenizer);

// A model checkpoint's vocabulary must cover the tokenizer's with the same special ids.
void check_vocabulary(const ModelConfig& model, const Tokenizer& tokenizer, const std::string& what);

// The architecture of a from-scratch teacher (dense when dense_only).
ModelConfig teacher_model_config(const RunConfig& config, int64_t vocab_size, bool dense_only);

struct StageResult {
  std::string name;       // teacher | baseline | student
  std::string model_dir;  // where the trained model is
  bool reused = false;    // a finished stage found on disk
  double seconds = 0;     // training time (0 when reused)
};

// Trains the teacher (or, with dense, the dense baseline) from scratch into OUTPUT/<stage>.
StageResult train_from_scratch(const RunConfig& config, const PreparedData& data, bool dense, bool resume);

// Loads the teacher (teacher.path, else OUTPUT/teacher/model) frozen for distillation, with the
// configured evaluation capacity factor and dtype.
Seq2SeqModel load_teacher(const RunConfig& config, const Tokenizer& tokenizer, std::string* dir = nullptr);

// Builds, initialises and distills the student into OUTPUT/student.
StageResult distill_student(const RunConfig& config, const PreparedData& data, bool resume);

// The whole experiment; writes OUTPUT/report.json and OUTPUT/report.md and returns the report.
nlohmann::json run_experiment(const RunConfig& config, bool resume);

// Starts logging to the console and OUTPUT/distill.log, and writes OUTPUT/config.yaml.
void open_run_directory(const RunConfig& config);

}  // namespace distill
