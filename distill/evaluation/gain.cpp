#include "distill/evaluation/gain.h"

#include <fmt/format.h>

namespace distill {

Gain gain_preserved(const GainInputs& in) {
  Gain g;
  const size_t N = in.gaps.size();
  g.gap = stats::estimate(in.gaps, stats::ratio_se(in.gap_sums), in.sample_dof);
  g.lift = stats::estimate(in.lifts, stats::ratio_se(in.lift_sums), in.sample_dof);
  g.per_seed = nlohmann::json::array();
  for (size_t i = 0; i < N; ++i) {
    g.per_seed.push_back(in.gaps[i] > 0 ? nlohmann::json(100.0 * in.lifts[i] / in.gaps[i]) : nlohmann::json(nullptr));
  }
  // Fieller's interval for lift / gap, at the t quantile of the less certain of the two.
  const double cov = (N >= 2 ? stats::covariance(in.lifts, in.gaps) / static_cast<double>(N) : 0.0) +
                     stats::ratio_covariance(in.lift_sums, in.gap_sums);
  const double dof = std::min(g.gap.dof, g.lift.dof);
  const double tq = g.gap.se > 0 ? stats::student_t_quantile(0.975, dof) : 0.0;
  const auto interval = stats::fieller(g.lift.mean, g.gap.mean, g.lift.se * g.lift.se, g.gap.se * g.gap.se, cov, tq);
  const int d = in.decimals;
  const std::string gap_text =
      g.gap.se > 0 ? fmt::format("{:+.{}f} {}, 95% interval {:+.{}f} to {:+.{}f}", g.gap.mean, d, in.unit, g.gap.lo, d, g.gap.hi, d)
                   : fmt::format("{:+.{}f} {}", g.gap.mean, d, in.unit);
  if (interval && g.gap.mean > 0) {
    g.percent = 100.0 * g.lift.mean / g.gap.mean;
    g.ci95 = stats::Interval{100.0 * interval->lo, 100.0 * interval->hi};
  } else if (g.gap.se <= 0) {
    g.undefined = "the teacher-baseline gap (" + gap_text + ") has no measured uncertainty";
  } else if (g.gap.hi < 0) {
    g.undefined = "the teacher is worse than the dense baseline (" + gap_text + "): there is no gain to preserve";
  } else {
    g.undefined = "the teacher-baseline gap (" + gap_text + ") includes zero: there is no measurable gain to preserve; "
                  "train the teacher longer, use more seeds or evaluate on more data";
  }
  return g;
}

nlohmann::json estimate_json(const stats::Estimate& e) {
  nlohmann::json j = {{"mean", e.mean}, {"se", e.se}, {"n", e.n}};
  j["sd"] = e.n >= 2 ? nlohmann::json(e.sd) : nlohmann::json(nullptr);  // one seed: the spread is unknown, not zero
  j["ci95"] = e.se > 0 ? nlohmann::json::array({e.lo, e.hi}) : nlohmann::json(nullptr);
  return j;
}

}  // namespace distill
