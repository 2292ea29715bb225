// Quality gain preserved = (student - baseline) / (teacher - baseline), for any score where higher
// is better, from each seed's values and the per-item sums they were computed from (held-out
// batches for NLL, examples for a task metric): the gap and the lift with both sources of error,
// and Fieller's 95% interval of their ratio, or why the ratio is undefined.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/evaluation/stats.h"

namespace distill {

struct GainInputs {
  std::vector<double> gaps;    // per seed: teacher - baseline
  std::vector<double> lifts;   // per seed: student - baseline
  stats::BatchSums gap_sums;   // the gap's mean over seeds as per-item sums (any sign convention, the
  stats::BatchSums lift_sums;  // same for both: only their spreads and covariance are used)
  double sample_dof = 1;       // degrees of freedom of the per-item noise (items - 1)
  std::string unit = "nats";   // how the gap is written in the reason a ratio is undefined
  int decimals = 4;
};

struct Gain {
  stats::Estimate gap, lift;
  std::optional<double> percent;          // 100 lift / gap, when defined
  std::optional<stats::Interval> ci95;    // in percent
  std::string undefined;                  // why it is not defined (empty when it is)
  nlohmann::json per_seed;                // 100 lift / gap per seed; null for a seed whose teacher is no better
};

Gain gain_preserved(const GainInputs& in);

// An estimate as the reports write it: mean, se, n, sd (null for one seed), ci95 (null when nothing
// is uncertain).
nlohmann::json estimate_json(const stats::Estimate& e);

// sum_m w_m * (model m's per-item sums), averaged over the seeds' runs: the paired per-item series
// whose ratio is the mean over seeds of a linear combination of the models' scores (`of` picks a
// model's scores from a seed's run).
template <class Run, class Scores>
stats::BatchSums seed_mean(const std::vector<Run>& runs,
                           const std::vector<std::pair<std::function<const Scores&(const Run&)>, double>>& terms,
                           stats::BatchSums Scores::*sums) {
  std::vector<const stats::BatchSums*> xs;
  std::vector<double> w;
  for (const auto& run : runs) {
    for (const auto& [of, weight] : terms) {
      xs.push_back(&(of(run).*sums));
      w.push_back(weight / static_cast<double>(runs.size()));
    }
  }
  return stats::combine(xs, w);
}

}  // namespace distill
