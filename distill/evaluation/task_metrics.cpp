#include "distill/evaluation/task_metrics.h"

#include <algorithm>
#include <set>

#include "models/errors.h"

namespace distill {

std::vector<std::string> split_tokens(const std::string& text) {
  std::vector<std::string> out;
  std::string current;
  for (char ch : text) {
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v') {
      if (!current.empty()) out.push_back(std::move(current));
      current.clear();
    } else {
      current += ch;
    }
  }
  if (!current.empty()) out.push_back(std::move(current));
  return out;
}

std::u32string normalized_code_points(const std::string& text) {
  std::u32string out;
  const auto words = split_tokens(text);
  for (size_t w = 0; w < words.size(); ++w) {
    if (w) out.push_back(U' ');
    const auto& s = words[w];
    for (size_t i = 0; i < s.size();) {
      const auto c = static_cast<unsigned char>(s[i]);
      const int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
      if (n == 0 || i + n > s.size()) {  // not UTF-8: one point per byte
        out.push_back(c);
        ++i;
        continue;
      }
      char32_t cp = n == 1 ? c : c & (0x7F >> n);
      for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
      out.push_back(cp);
      i += n;
    }
  }
  return out;
}

ExampleScore score_example(const std::string& prediction, const std::string& reference) {
  ExampleScore s;
  const auto p = split_tokens(prediction), r = split_tokens(reference);
  s.exact = p == r;
  s.token_edits = levenshtein(p, r);
  s.reference_tokens = static_cast<int64_t>(r.size());
  const auto pc = normalized_code_points(prediction), rc = normalized_code_points(reference);
  s.char_edits = levenshtein(pc, rc);
  s.reference_chars = static_cast<int64_t>(rc.size());
  return s;
}

MetricValue bootstrap_ratio(const stats::BatchSums& x, int64_t resamples, uint64_t seed) {
  MetricValue m;
  m.value = x.ratio();
  m.lo = m.hi = m.value;
  const size_t n = x.value.size();
  if (n < 2 || resamples < 2) return m;
  std::vector<double> ratios;
  for (const auto& [v, c] : stats::bootstrap_sums(x.value, x.count, resamples, seed)) ratios.push_back(c > 0 ? v / c : 0.0);
  std::sort(ratios.begin(), ratios.end());
  m.lo = stats::percentile(ratios, 0.025);
  m.hi = stats::percentile(ratios, 0.975);
  return m;
}

TaskScores score_task(const std::vector<std::string>& predictions, const std::vector<std::string>& references,
                      const TaskScoreOptions& options) {
  if (predictions.size() != references.size()) {
    throw InputError("task scoring: " + std::to_string(predictions.size()) + " predictions for " +
                     std::to_string(references.size()) + " references");
  }
  if (references.empty()) throw InputError("task scoring: no examples to score");
  TaskScores t;
  t.examples = static_cast<int64_t>(references.size());
  for (size_t i = 0; i < references.size(); ++i) {
    const auto s = score_example(predictions[i], references[i]);
    t.exact.value.push_back(s.exact ? 1.0 : 0.0);
    t.exact.count.push_back(1.0);
    t.token_edits.value.push_back(static_cast<double>(s.token_edits));
    t.token_edits.count.push_back(static_cast<double>(s.reference_tokens));
    t.char_edits.value.push_back(static_cast<double>(s.char_edits));
    t.char_edits.count.push_back(static_cast<double>(s.reference_chars));
  }
  // Each metric resamples the same examples (one seed), so their intervals describe one bootstrap.
  t.exact_match = bootstrap_ratio(t.exact, options.bootstrap_resamples, options.seed);
  t.token_error_rate = bootstrap_ratio(t.token_edits, options.bootstrap_resamples, options.seed);
  t.char_error_rate = bootstrap_ratio(t.char_edits, options.bootstrap_resamples, options.seed);
  if (options.classification) {
    std::set<std::vector<std::string>> labels;
    for (const auto& r : references) labels.insert(split_tokens(r));
    int64_t invalid = 0;
    for (const auto& p : predictions) invalid += labels.count(split_tokens(p)) ? 0 : 1;
    t.accuracy = t.exact_match;  // a label predicted right is an exact match of its text
    t.invalid_label_rate = static_cast<double>(invalid) / static_cast<double>(predictions.size());
  }
  return t;
}

nlohmann::json TaskScores::to_json() const {
  auto metric = [](const MetricValue& m) { return nlohmann::json{{"value", m.value}, {"ci95", {m.lo, m.hi}}}; };
  nlohmann::json j = {{"examples", examples},
                      {"exact_match", metric(exact_match)},
                      {"token_error_rate", metric(token_error_rate)},
                      {"char_error_rate", metric(char_error_rate)}};
  if (accuracy) j["accuracy"] = metric(*accuracy);
  if (invalid_label_rate) j["invalid_label_rate"] = *invalid_label_rate;
  return j;
}

}  // namespace distill
