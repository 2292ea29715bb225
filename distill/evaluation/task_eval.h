// A task judged by its own metric: the input/target pairs of a held-out file decoded greedily in
// batches (with the key/value cache), then scored against the targets (task_metrics.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/corpus.h"
#include "data/tokenizer.h"
#include "distill/evaluation/task_metrics.h"
#include "models/arch/seq2seq.h"

namespace distill {

struct TaskPairs {
  std::vector<std::string> inputs;      // source texts
  std::vector<std::string> references;  // target texts
};

// The pairs of a TSV / JSONL pairs corpus, in file order; at most `max_examples` (0 = all).
TaskPairs read_task_pairs(const CorpusOptions& options, int64_t max_examples = 0);

struct DecodeOptions {
  int64_t batch_size = 128;      // examples decoded together (sorted by input length, so little padding)
  int64_t input_length = 128;    // encoder tokens, </s> included, as in training (longer inputs are cut)
  int64_t max_new_tokens = 64;   // decoder tokens at most
  bool use_cache = true;         // key/value cache (false: re-run the decoder on the prefix every step)
};

struct Decoded {
  std::vector<std::string> predictions;  // in the order of the inputs
  double seconds = 0;                    // wall clock of encoding, decoding and detokenising
  int64_t generated_tokens = 0;          // tokens emitted, </s> included
  int64_t truncated = 0;                 // outputs that reached max_new_tokens without </s>
  double examples_per_second() const { return seconds > 0 ? static_cast<double>(predictions.size()) / seconds : 0; }
  // examples_per_second, seconds, generated_tokens, truncated.
  nlohmann::json speed_json() const;
};

// One line per pair, input<TAB>target<TAB>prediction: what a prediction file holds.
std::string predictions_tsv(const TaskPairs& pairs, const std::vector<std::string>& predictions);

// Greedy predictions of `model` for `inputs`.
Decoded decode_task(Seq2SeqModel& model, const Tokenizer& tokenizer, const std::vector<std::string>& inputs,
                    const DecodeOptions& options);

}  // namespace distill
