#include "distill/report/sweep_report.h"

#include <fmt/format.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "distill/evaluation/stats.h"
#include "distill/report/report.h"

namespace distill {
using json = nlohmann::json;

namespace {

json number_or_null(const json& j) { return j.is_number() ? j : json(); }

std::vector<std::pair<double, std::string>> student_per_seed(const json& report) {
  std::vector<std::pair<double, std::string>> out;
  for (size_t i = 0; i < report["runs"].size() && i < report["student"]["evals"].size(); ++i) {
    out.emplace_back(report["student"]["evals"][i]["neg_log_perplexity"].get<double>(),
                     report["runs"][i]["teacher"]["dir"].get<std::string>());
  }
  return out;
}

}  // namespace

json student_minus_reference(const json& report, const json& reference) {
  const auto a = student_per_seed(report), b = student_per_seed(reference);
  if (a.size() != b.size() || a.empty()) return json();
  std::vector<double> d;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].second != b[i].second) return json();
    d.push_back(a[i].first - b[i].first);
  }
  const auto e = stats::estimate(d, 0.0, 1e9);
  return {{"mean", e.mean}, {"sd", e.sd}, {"ci95", {e.lo, e.hi}}, {"n", e.n}};
}


json sweep_row(const SweepVariant& v, const json& r) {
  const auto& q = r["quality"];
  json row = {{"name", v.name},
              {"label", v.label},
              {"set", v.set},
              {"paper_percent", v.paper_percent ? json(*v.paper_percent) : json()},
              {"dir", v.config.output_dir},
              {"seeds", r["seeds"]},
              {"teacher_parameters", r["teacher"]["parameters"]["total"]},
              {"student_parameters", r["student"]["parameters"]["total"]},
              {"compression_percent", r["compression"]["percent"]},
              {"gain_preserved_percent", number_or_null(q["gain_preserved_percent"])},
              {"gain_preserved_ci95", q["gain_preserved_ci95"]},
              {"gain_preserved_per_seed", q["gain_preserved_per_seed"]},
              {"teacher", q["teacher"]},
              {"baseline", q["baseline"]},
              {"student", q["student"]},
              {"gap", q["gap"]},
              {"student_minus_baseline", q["student_minus_baseline"]},
              {"budget", {{"teacher_tokens", r["teacher"]["budget"]["tokens"]},
                          {"baseline_tokens", r["baseline"]["budget"]["tokens"]},
                          {"student_path_tokens", r["student"]["path_budget"]["tokens"]},
                          {"fair", r["budget_check"]["fair"]}}}};
  if (q.contains("gain_preserved_undefined")) row["gain_preserved_undefined"] = q["gain_preserved_undefined"];
  if (r["settings"].contains("precision")) row["precision"] = r["settings"]["precision"];
  return row;
}

std::string gain_preserved_text(const json& gain, const json& ci) {
  if (!gain.is_number()) return "undefined";
  std::string s = fmt::format("{:.1f}%", gain.get<double>());
  if (ci.is_array()) s += fmt::format(" ({:.1f} to {:.1f})", ci[0].get<double>(), ci[1].get<double>());
  return s;
}

std::string sweep_markdown(const json& s) {
  std::string md = "# Sweep: " + s["config"].get<std::string>() + "\n\n";
  md += "Gain preserved = (student - baseline) / (teacher - baseline) on held-out negative log perplexity, mean over " +
        std::string("seeds with its 95% interval; each row's dense baseline has the student's shape and the student's "
                    "whole budget (its teacher's training plus its distillation).\n\n");
  const std::string first = s.value("reference", json()).is_string() ? s["reference"].get<std::string>() : "the first";
  md += "| variant | compression | gain preserved (95% interval) | paper | student | student - baseline (95% interval) | "
        "student - " + first + ", paired by seed (95% interval) | baseline | teacher | seeds | "
        "baseline tokens / student path tokens |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
  const auto interval = [](const json& e) {
    if (!e.is_object()) return std::string();
    return fmt::format("{:+.4f} ({:+.4f} to {:+.4f})", e["mean"].get<double>(), e["ci95"][0].get<double>(), e["ci95"][1].get<double>());
  };
  for (const auto& row : s["rows"]) {
    const std::string gain = gain_preserved_text(row["gain_preserved_percent"], row["gain_preserved_ci95"]);
    const std::string paper = row["paper_percent"].is_number() ? fmt::format("{:.0f}%", row["paper_percent"].get<double>()) : "";
    md += fmt::format("| {} | {:.1f}% | {} | {} | {:.4f} | {} | {} | {:.4f} | {:.4f} | {} | {} / {}{} |\n",
                      row["label"].get<std::string>(), row["compression_percent"].get<double>(), gain, paper,
                      row["student"].get<double>(), interval(row["student_minus_baseline"]),
                      row.contains("student_minus_reference") ? interval(row["student_minus_reference"]) : "",
                      row["baseline"].get<double>(), row["teacher"].get<double>(), row["seeds"].get<int64_t>(),
                      row["budget"]["baseline_tokens"].dump(), row["budget"]["student_path_tokens"].dump(),
                      row["budget"]["fair"].get<bool>() ? "" : " (unfair)");
  }
  for (const auto& row : s["rows"]) {
    if (row.contains("gain_preserved_undefined")) {
      md += "\n- " + row["label"].get<std::string>() + ": gain preserved undefined: " + row["gain_preserved_undefined"].get<std::string>();
    }
  }
  // Which products ran: one line when every variant ran alike (the usual case), else one per variant.
  std::set<std::string> precisions;
  for (const auto& row : s["rows"])
    if (row.contains("precision")) precisions.insert(precision_text(row["precision"]));
  if (precisions.size() == 1) {
    md += "\n\nPrecision: " + *precisions.begin() + ".";
  } else if (precisions.size() > 1) {
    md += "\n";
    for (const auto& row : s["rows"])
      if (row.contains("precision")) md += "\n- " + row["label"].get<std::string>() + ": " + precision_text(row["precision"]) + ".";
  }
  md += "\n\nEach variant's own report: `<variant>/report.md`. Plots: `report.html`.\n";
  return md;
}


}  // namespace distill
