// Training objectives: each turns one tokenized document into (inputs, targets) examples.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace distill {

// One tokenized document; `target` is set only for input/target pairs. No EOS appended yet.
struct TokenizedDoc {
  std::vector<int32_t> text;
  std::vector<int32_t> target;
};

// One seq2seq example; both sides end with EOS.
struct Example {
  std::vector<int32_t> inputs;
  std::vector<int32_t> targets;
};

struct ObjectiveOptions {
  int64_t input_length = 128;       // most encoder tokens per example, EOS included
  int64_t target_length = 32;       // most decoder tokens per example, EOS included
  int64_t eos_id = 1;               // appended to inputs and targets
  int64_t vocab_size = 0;           // sentinels are vocab_size - 1 - i
  int64_t num_sentinels = 0;        // sentinels available (span corruption needs one per span)
  double noise_density = 0.15;      // span corruption: fraction of tokens masked
  double mean_span_length = 3.0;    // span corruption: mean length of a masked span
};

class Objective {
 public:
  virtual ~Objective() = default;
  virtual std::string name() const = 0;
  // Appends the examples of `doc` to `out`; `rng` makes every random choice.
  virtual void make_examples(const TokenizedDoc& doc, std::mt19937_64& rng, std::vector<Example>& out) const = 0;
  // Length of the raw token chunks it cuts documents into (for packing).
  virtual int64_t chunk_length() const = 0;
};

// "span_corruption" | "seq2seq" | "prefix_lm"; checks the options (ConfigError).
std::unique_ptr<Objective> make_objective(const std::string& name, const ObjectiveOptions& options);

// T5's span corruption (Raffel et al. 2020, random_spans_noise_mask): documents are cut into
// chunks whose corrupted forms fit input_length / target_length; per chunk,
// round(L * density) noise tokens form round(noise / mean_span) spans, the sequence starts with
// non-noise, each span is replaced by the next sentinel in the inputs, and the targets are the
// sentinels each followed by its span.
class SpanCorruption : public Objective {
 public:
  explicit SpanCorruption(const ObjectiveOptions& options);
  std::string name() const override { return "span_corruption"; }
  void make_examples(const TokenizedDoc& doc, std::mt19937_64& rng, std::vector<Example>& out) const override;
  int64_t chunk_length() const override { return chunk_length_; }

  // The noise mask of one chunk of `length` tokens (true = masked).
  std::vector<bool> noise_mask(int64_t length, std::mt19937_64& rng) const;
  // Inputs and targets for `tokens` under `mask`, both ending with EOS.
  Example corrupt(const std::vector<int32_t>& tokens, const std::vector<bool>& mask) const;

 private:
  ObjectiveOptions o_;
  int64_t chunk_length_ = 0;
};

// Input/target pairs as they are, each side truncated to fit and ended with EOS.
class Seq2SeqPairs : public Objective {
 public:
  explicit Seq2SeqPairs(const ObjectiveOptions& options) : o_(options) {}
  std::string name() const override { return "seq2seq"; }
  void make_examples(const TokenizedDoc& doc, std::mt19937_64& rng, std::vector<Example>& out) const override;
  int64_t chunk_length() const override { return o_.input_length - 1; }

 private:
  ObjectiveOptions o_;
};

// Prefix LM: a chunk split at a uniformly random point; the encoder reads the prefix, the
// decoder predicts the continuation.
class PrefixLm : public Objective {
 public:
  explicit PrefixLm(const ObjectiveOptions& options) : o_(options) {}
  std::string name() const override { return "prefix_lm"; }
  void make_examples(const TokenizedDoc& doc, std::mt19937_64& rng, std::vector<Example>& out) const override;
  int64_t chunk_length() const override { return o_.input_length - 1 + o_.target_length - 1; }

 private:
  ObjectiveOptions o_;
};

}  // namespace distill
