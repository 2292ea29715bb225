#include "data/objectives.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "models/errors.h"

namespace distill {

namespace {

struct SpanCounts {
  int64_t noise = 0, spans = 0;
};

SpanCounts span_counts(int64_t length, double density, double mean_span) {
  SpanCounts c;
  c.noise = std::clamp<int64_t>(std::llround(static_cast<double>(length) * density), 1, std::max<int64_t>(1, length - 1));
  c.spans = std::max<int64_t>(1, std::llround(static_cast<double>(c.noise) / mean_span));
  c.spans = std::min(c.spans, std::max<int64_t>(1, length - c.noise));  // each span needs non-noise before it
  return c;
}

// `items` split into `segments` non-empty parts, uniformly over all such splits.
std::vector<int64_t> random_segmentation(int64_t items, int64_t segments, std::mt19937_64& rng) {
  std::vector<int64_t> cuts(static_cast<size_t>(items - 1));
  std::iota(cuts.begin(), cuts.end(), 1);
  std::shuffle(cuts.begin(), cuts.end(), rng);
  cuts.resize(static_cast<size_t>(segments - 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int64_t> lengths;
  int64_t prev = 0;
  for (auto c : cuts) {
    lengths.push_back(c - prev);
    prev = c;
  }
  lengths.push_back(items - prev);
  return lengths;
}

}  // namespace

std::unique_ptr<Objective> make_objective(const std::string& name, const ObjectiveOptions& o) {
  if (o.input_length < 2 || o.target_length < 2) throw ConfigError("objective: input and target lengths must be >= 2");
  if (name == "span_corruption") return std::make_unique<SpanCorruption>(o);
  if (name == "seq2seq") return std::make_unique<Seq2SeqPairs>(o);
  if (name == "prefix_lm") return std::make_unique<PrefixLm>(o);
  throw ConfigError("unknown objective \"" + name + "\" (expected span_corruption, seq2seq or prefix_lm)");
}

SpanCorruption::SpanCorruption(const ObjectiveOptions& o) : o_(o) {
  if (!(o.noise_density > 0 && o.noise_density < 1)) throw ConfigError("span corruption: noise_density must be in (0, 1)");
  if (!(o.mean_span_length >= 1)) throw ConfigError("span corruption: mean_span_length must be >= 1");
  // Longest chunk whose inputs (non-noise + a sentinel per span + EOS) and targets (noise + a
  // sentinel per span + EOS) fit.
  for (int64_t len = 2;; ++len) {
    auto c = span_counts(len, o.noise_density, o.mean_span_length);
    if (len - c.noise + c.spans + 1 > o.input_length || c.noise + c.spans + 1 > o.target_length) break;
    chunk_length_ = len;
  }
  if (chunk_length_ < 2) throw ConfigError("span corruption: input/target lengths too short for any span");
  auto c = span_counts(chunk_length_, o.noise_density, o.mean_span_length);
  if (c.spans > o.num_sentinels) {
    throw ConfigError("span corruption needs " + std::to_string(c.spans) + " sentinels per example but the tokenizer has " +
                      std::to_string(o.num_sentinels) + " (train it with more --sentinels, or shorten the inputs)");
  }
}

std::vector<bool> SpanCorruption::noise_mask(int64_t length, std::mt19937_64& rng) const {
  auto c = span_counts(length, o_.noise_density, o_.mean_span_length);
  auto noise = random_segmentation(c.noise, c.spans, rng);
  auto keep = random_segmentation(length - c.noise, c.spans, rng);
  std::vector<bool> mask;
  mask.reserve(static_cast<size_t>(length));
  for (size_t i = 0; i < noise.size(); ++i) {
    mask.insert(mask.end(), static_cast<size_t>(keep[i]), false);
    mask.insert(mask.end(), static_cast<size_t>(noise[i]), true);
  }
  return mask;
}

Example SpanCorruption::corrupt(const std::vector<int32_t>& tokens, const std::vector<bool>& mask) const {
  Example ex;
  int64_t span = -1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (mask[i]) {
      if (i == 0 || !mask[i - 1]) {
        ++span;
        const auto sentinel = static_cast<int32_t>(o_.vocab_size - 1 - span);
        ex.inputs.push_back(sentinel);
        ex.targets.push_back(sentinel);
      }
      ex.targets.push_back(tokens[i]);
    } else {
      ex.inputs.push_back(tokens[i]);
    }
  }
  ex.inputs.push_back(static_cast<int32_t>(o_.eos_id));
  ex.targets.push_back(static_cast<int32_t>(o_.eos_id));
  return ex;
}

void SpanCorruption::make_examples(const TokenizedDoc& doc, std::mt19937_64& rng, std::vector<Example>& out) const {
  const auto& t = doc.text;
  for (size_t start = 0; start < t.size(); start += static_cast<size_t>(chunk_length_)) {
    const size_t end = std::min(t.size(), start + static_cast<size_t>(chunk_length_));
    if (end - start < 2) break;  // nothing to corrupt
    std::vector<int32_t> chunk(t.begin() + static_cast<std::ptrdiff_t>(start), t.begin() + static_cast<std::ptrdiff_t>(end));
    out.push_back(corrupt(chunk, noise_mask(static_cast<int64_t>(chunk.size()), rng)));
  }
}

void Seq2SeqPairs::make_examples(const TokenizedDoc& doc, std::mt19937_64&, std::vector<Example>& out) const {
  Example ex;
  const auto& target = doc.target.empty() ? doc.text : doc.target;
  ex.inputs.assign(doc.text.begin(), doc.text.begin() + std::min<std::ptrdiff_t>(doc.text.size(), o_.input_length - 1));
  ex.targets.assign(target.begin(), target.begin() + std::min<std::ptrdiff_t>(target.size(), o_.target_length - 1));
  ex.inputs.push_back(static_cast<int32_t>(o_.eos_id));
  ex.targets.push_back(static_cast<int32_t>(o_.eos_id));
  out.push_back(std::move(ex));
}

void PrefixLm::make_examples(const TokenizedDoc& doc, std::mt19937_64& rng, std::vector<Example>& out) const {
  const auto& t = doc.text;
  const size_t chunk = static_cast<size_t>(chunk_length());
  for (size_t start = 0; start + 2 <= t.size(); start += chunk) {
    const size_t end = std::min(t.size(), start + chunk);
    if (end - start < 2) break;
    // Split so that both sides fit: nothing of the chunk is lost.
    const size_t lo = std::max(start + 1, end - std::min(end - start, static_cast<size_t>(o_.target_length - 1)));
    const size_t hi = std::min(end - 1, start + static_cast<size_t>(o_.input_length - 1));
    std::uniform_int_distribution<size_t> split_at(lo, std::max(lo, hi));
    const size_t split = split_at(rng);
    Example ex;
    ex.inputs.assign(t.begin() + static_cast<std::ptrdiff_t>(start), t.begin() + static_cast<std::ptrdiff_t>(split));
    ex.targets.assign(t.begin() + static_cast<std::ptrdiff_t>(split), t.begin() + static_cast<std::ptrdiff_t>(end));
    ex.inputs.push_back(static_cast<int32_t>(o_.eos_id));
    ex.targets.push_back(static_cast<int32_t>(o_.eos_id));
    out.push_back(std::move(ex));
  }
}

}  // namespace distill
