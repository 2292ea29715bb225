// A task's own metrics from decoded outputs against references: exact match, token (word or
// phoneme) and character error rates by edit distance, and accuracy when the targets are class
// labels; each with a 95% bootstrap interval over the examples.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/evaluation/stats.h"

namespace distill {

// Levenshtein distance between two sequences (insertions, deletions and substitutions cost 1).
template <typename Sequence>
int64_t levenshtein(const Sequence& a, const Sequence& b) {
  std::vector<int64_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int64_t diagonal = row[0];
    row[0] = static_cast<int64_t>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int64_t up = row[j];
      row[j] = std::min({up + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// Whitespace-separated tokens (words, phonemes).
std::vector<std::string> split_tokens(const std::string& text);
// The Unicode code points of UTF-8 text with runs of whitespace collapsed to one space and none at
// either end (invalid bytes count as one point each).
std::u32string normalized_code_points(const std::string& text);

// One example's counts: what every metric sums.
struct ExampleScore {
  bool exact = false;        // the token sequences are equal (whitespace-insensitive)
  int64_t token_edits = 0;   // edit distance over whitespace tokens
  int64_t reference_tokens = 0;
  int64_t char_edits = 0;    // edit distance over code points (whitespace collapsed)
  int64_t reference_chars = 0;
};
ExampleScore score_example(const std::string& prediction, const std::string& reference);

// A metric over the examples with its 95% percentile-bootstrap interval.
struct MetricValue {
  double value = 0;
  double lo = 0, hi = 0;
};

struct TaskScores {
  int64_t examples = 0;
  MetricValue exact_match;       // share of examples predicted exactly
  MetricValue token_error_rate;  // sum of token edits / sum of reference tokens (WER, or PER for phonemes)
  MetricValue char_error_rate;   // sum of code-point edits / sum of reference code points
  std::optional<MetricValue> accuracy;  // class labels: share predicted right
  std::optional<double> invalid_label_rate;  // class labels: share of predictions that are no label at all
  // Per example, for paired comparisons between models on the same examples.
  stats::BatchSums exact, token_edits, char_edits;
  nlohmann::json to_json() const;  // without the per-example sums
};

struct TaskScoreOptions {
  bool classification = false;   // the references are class labels: report accuracy too
  int64_t bootstrap_resamples = 1000;  // resamples of the examples for the intervals
  uint64_t seed = 1;             // of the resampling
};

// Scores predictions against references (the same length; InputError otherwise, or when empty).
TaskScores score_task(const std::vector<std::string>& predictions, const std::vector<std::string>& references,
                      const TaskScoreOptions& options = {});

// The 95% percentile-bootstrap interval of sum(value) / sum(count) over items resampled with
// replacement.
MetricValue bootstrap_ratio(const stats::BatchSums& x, int64_t resamples, uint64_t seed);

}  // namespace distill
