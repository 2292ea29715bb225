// A run's data, from its configuration: the tokenizer, the training dataset and the fixed held-out
// batches every model is evaluated on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "data/corpus.h"
#include "data/tokenized_corpus.h"
#include "data/tokenizer.h"
#include "distill/config/run_config.h"

namespace distill {

struct PreparedData {
  Tokenizer tokenizer;
  std::shared_ptr<const Dataset> train;
  std::vector<Batch> eval;                 // fixed held-out batches, the same for every model
  std::vector<std::string> tokenizer_files;  // copied next to every saved model
  int64_t train_documents = 0, validation_documents = 0, train_tokens = 0;
  CorpusStats stats;
  nlohmann::json fingerprint;              // what determines the training batches (stage fingerprints)
};

// The tokenizer named by data.tokenizer.path, else the teacher checkpoint's, else one trained
// on the training corpus into OUTPUT/tokenizer (reused when present).
Tokenizer resolve_tokenizer(const RunConfig& config);

// Reads, tokenizes and splits the corpora; builds the training dataset and the evaluation batches.
// `quiet` leaves the summary out of the log (child processes that each prepare the same data).
PreparedData prepare_data(const RunConfig& config, Tokenizer tokenizer, bool quiet = false);

// Where a tokenizer trained here lives: OUTPUT/tokenizer, or in stages_dir by the hash of its
// settings and input files (shared by the runs that agree on them).
std::string trained_tokenizer_dir(const RunConfig& config);

// How the corpus readers read a configured corpus.
CorpusOptions corpus_options(const CorpusConfig& corpus);

// Whether the run pre-trains on pretrain.data first (its tokenizer then reads that corpus too).
bool pretrains(const RunConfig& config);

// The seed of the data order and the span-corruption noise: data.seed, else the run's seed.
uint64_t data_seed(const RunConfig& config);

// What determines the training batches: the corpus bytes, the tokenizer, the objective, batching
// and the data seed (not the held-out files, which only the evaluation reads).
nlohmann::json data_fingerprint(const RunConfig& config, const Tokenizer& tokenizer);

}  // namespace distill
