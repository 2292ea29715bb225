#include "distill/report/task_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "distill/evaluation/gain.h"

namespace distill {
using nlohmann::json;

namespace {

struct MetricSpec {
  const char* key;
  const char* name;
  bool higher_is_better;
  stats::BatchSums TaskScores::*sums;
  MetricValue TaskScores::*value;
};

const std::vector<MetricSpec>& metric_specs() {
  static const std::vector<MetricSpec> specs = {
      {"exact_match", "exact match", true, &TaskScores::exact, &TaskScores::exact_match},
      {"token_error_rate", "token error rate", false, &TaskScores::token_edits, &TaskScores::token_error_rate},
      {"char_error_rate", "character error rate", false, &TaskScores::char_edits, &TaskScores::char_error_rate},
  };
  return specs;
}

using ScoresOf = std::function<const TaskScores&(const TaskRun&)>;

// The 95% percentile interval of 100 lift / gap over examples resampled together for every model
// and seed (paired), and the share of resamples whose gap is not positive (ratio undefined there;
// above 2.5% of them the interval is undefined too).
json bootstrap_gain(const stats::BatchSums& lift, const stats::BatchSums& gap, int64_t resamples, uint64_t seed) {
  const size_t n = gap.value.size();
  if (n < 2 || resamples < 2) return nullptr;
  std::vector<double> ratios;
  int64_t undefined = 0;
  for (const auto& [l, g] : stats::bootstrap_sums(lift.value, gap.value, resamples, seed)) {
    if (g > 0) ratios.push_back(100.0 * l / g);
    else ++undefined;
  }
  const double undefined_share = static_cast<double>(undefined) / static_cast<double>(resamples);
  json j = {{"resamples", resamples}, {"undefined_share", undefined_share}};
  // A gap that is not positive in more than 2.5% of the resamples leaves the ratio unbounded.
  if (undefined_share > 0.025 || ratios.size() < 2) {
    j["ci95"] = nullptr;
    return j;
  }
  std::sort(ratios.begin(), ratios.end());
  j["ci95"] = {stats::percentile(ratios, 0.025), stats::percentile(ratios, 0.975)};
  return j;
}

std::string percent(double x) { return fmt::format("{:.2f}%", 100.0 * x); }

}  // namespace

json build_task_report(const std::vector<TaskRun>& runs, const TaskReportOptions& options) {
  const ScoresOf teacher_of = [](const TaskRun& r) -> const TaskScores& { return r.teacher; };
  const ScoresOf baseline_of = [](const TaskRun& r) -> const TaskScores& { return r.baseline; };
  const ScoresOf student_of = [](const TaskRun& r) -> const TaskScores& { return r.student; };
  const std::vector<std::pair<const char*, ScoresOf>> roles = {
      {"teacher", teacher_of}, {"baseline", baseline_of}, {"student", student_of}};
  const auto examples = runs.front().teacher.examples;
  const double dof = static_cast<double>(std::max<int64_t>(2, examples) - 1);
  json task = {{"examples", examples}, {"seeds", runs.size()}, {"test_files", options.test_files},
               {"classification", options.classification}};
  json metrics = json::object(), gains = json::object();
  for (const auto& m : metric_specs()) {
    json per_model = json::object();
    for (const auto& [who, of] : roles) {
      std::vector<double> values;
      json per_seed = json::array();
      for (const auto& run : runs) {
        const auto& v = of(run).*m.value;
        values.push_back(v.value);
        per_seed.push_back({{"value", v.value}, {"bootstrap_ci95", {v.lo, v.hi}}});
      }
      const auto sums = seed_mean(runs, {{of, 1.0}}, m.sums);
      per_model[who] = estimate_json(stats::estimate(values, stats::ratio_se(sums), dof));
      per_model[who]["per_seed"] = per_seed;
    }
    metrics[m.key] = per_model;

    // On a lower-is-better metric the gain is the baseline's value minus the teacher's.
    const double sign = m.higher_is_better ? 1.0 : -1.0;
    GainInputs gi;
    for (const auto& run : runs) {
      const double t = (run.teacher.*m.value).value, b = (run.baseline.*m.value).value, s = (run.student.*m.value).value;
      gi.gaps.push_back(100.0 * sign * (t - b));  // percentage points
      gi.lifts.push_back(100.0 * sign * (s - b));
    }
    gi.gap_sums = seed_mean(runs, {{teacher_of, 100.0 * sign}, {baseline_of, -100.0 * sign}}, m.sums);
    gi.lift_sums = seed_mean(runs, {{student_of, 100.0 * sign}, {baseline_of, -100.0 * sign}}, m.sums);
    gi.sample_dof = dof;
    gi.unit = "points";
    gi.decimals = 2;
    const Gain g = gain_preserved(gi);
    json gain = {{"higher_is_better", m.higher_is_better},
                 {"unit", "percentage points, positive when the teacher (student) is better than the baseline"},
                 {"gap", estimate_json(g.gap)},
                 {"student_minus_baseline", estimate_json(g.lift)},
                 {"gain_preserved_per_seed", g.per_seed},
                 {"bootstrap", bootstrap_gain(gi.lift_sums, gi.gap_sums, options.bootstrap_resamples, options.seed)}};
    if (g.percent) {
      gain["gain_preserved_percent"] = *g.percent;
      gain["gain_preserved_ci95"] = {g.ci95->lo, g.ci95->hi};
    } else {
      gain["gain_preserved_percent"] = nullptr;
      gain["gain_preserved_ci95"] = nullptr;
      gain["gain_preserved_undefined"] = g.undefined;
    }
    gains[m.key] = gain;
  }
  task["metrics"] = metrics;
  task["gain"] = gains;
  json decoding = json::array();
  for (const auto& run : runs) decoding.push_back(run.decoding);
  task["decoding"] = decoding;
  return task;
}

std::string task_markdown(const json& task) {
  const bool classification = task.value("classification", false);
  std::string md = fmt::format("\n## The task: {} held-out examples decoded greedily ({})\n\n", task["examples"].get<int64_t>(),
                               task["test_files"].get<std::string>());
  md += "Each value: mean over seeds with its 95% interval (the seeds' spread and the examples' noise). Gain "
        "preserved = (student - baseline) / (teacher - baseline) on the metric (for an error rate, the reduction), "
        "with Fieller's interval over seeds and examples and a paired bootstrap over examples.\n\n";
  md += "| metric | teacher | baseline | student | teacher - baseline | gain preserved | bootstrap over examples |\n";
  md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& m : metric_specs()) {
    const auto& per_model = task["metrics"][m.key];
    auto cell = [](const json& e) {
      std::string s = percent(e["mean"].get<double>());
      if (!e["ci95"].is_null()) s += " (" + percent(e["ci95"][0].get<double>()) + " to " + percent(e["ci95"][1].get<double>()) + ")";
      return s;
    };
    const auto& g = task["gain"][m.key];
    std::string gap = fmt::format("{:+.2f} points", g["gap"]["mean"].get<double>());
    std::string kept = g["gain_preserved_percent"].is_null()
                           ? std::string("undefined")
                           : fmt::format("{:.1f}% ({:.1f}% to {:.1f}%)", g["gain_preserved_percent"].get<double>(),
                                         g["gain_preserved_ci95"][0].get<double>(), g["gain_preserved_ci95"][1].get<double>());
    std::string boot = "undefined";
    if (!g["bootstrap"].is_null() && !g["bootstrap"]["ci95"].is_null()) {
      boot = fmt::format("{:.1f}% to {:.1f}%", g["bootstrap"]["ci95"][0].get<double>(), g["bootstrap"]["ci95"][1].get<double>());
    }
    const std::string name = classification && std::string(m.key) == "exact_match" ? "accuracy" : m.name;
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", name, cell(per_model["teacher"]), cell(per_model["baseline"]),
                      cell(per_model["student"]), gap, kept, boot);
  }
  md += "\n(teacher - baseline in percentage points of the metric, signed so that positive means the teacher is better.)\n";
  for (const auto& m : metric_specs()) {
    const auto& g = task["gain"][m.key];
    if (g["gain_preserved_percent"].is_null()) {
      md += fmt::format("- {}: gain preserved undefined: {}\n", m.name, g["gain_preserved_undefined"].get<std::string>());
    }
  }
  return md;
}

}  // namespace distill
