// A corpus read, tokenized and split once: what datasets are built from.
#pragma once

#include <cstdint>
#include <vector>

#include "data/corpus.h"
#include "data/objectives.h"
#include "data/tokenizer.h"

namespace distill {

struct TokenizedCorpus {
  std::vector<TokenizedDoc> train;
  std::vector<TokenizedDoc> validation;  // empty unless validation_fraction > 0
  CorpusStats stats;
  int64_t tokens = 0;                    // all tokens, both splits
};

// Streams the corpus through the tokenizer on `threads` threads (ids without EOS; objectives add
// it). With validation_fraction > 0 documents go to validation by a hash of (split_seed, index).
TokenizedCorpus tokenize_corpus(const CorpusOptions& corpus, const Tokenizer& tokenizer,
                                double validation_fraction = 0.0, uint64_t split_seed = 0, int threads = 2);

// Objective options for `tokenizer`'s EOS, vocabulary and sentinels, at the given lengths.
ObjectiveOptions objective_options(const Tokenizer& tokenizer, int64_t input_length, int64_t target_length);

}  // namespace distill
