#include "distill/sweep.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>

#include "distill/distributed.h"
#include "distill/experiment.h"
#include "distill/html_report.h"
#include "distill/stage_jobs.h"
#include "distill/stats.h"
#include "models/io/atomic_file.h"

namespace distill {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Each distinct data set of a sweep, prepared once: variants that leave the data alone share it.
class SweepData {
 public:
  const PreparedData& of(const RunConfig& c) {
    // What prepare_data and resolve_tokenizer read: the data settings, the seed (the data seed's
    // default), a given teacher's tokenizer and where a trained tokenizer is kept.
    const std::string key = json{{"data", run_config_json(c)["data"]}, {"seed", c.seed}, {"teacher", c.teacher.path},
                                 {"stages_dir", c.stages_dir}}.dump();
    auto it = prepared_.find(key);
    if (it == prepared_.end()) it = prepared_.emplace(key, prepare_data(c, resolve_tokenizer(c))).first;
    return it->second;
  }

 private:
  std::map<std::string, PreparedData> prepared_;
};

// The pending stages of every variant as one list: a stage two variants share (the same
// directory: the same settings) is one job, and a student waits for its teacher's job wherever
// that job came from.
std::vector<StageJob> all_pending_stages(const SweepConfig& sweep, SweepData& data) {
  std::vector<StageJob> all;
  std::map<std::string, size_t> by_dir;
  for (const auto& v : sweep.variants) {
    const auto jobs = pending_stages(v.config, data.of(v.config));
    std::vector<size_t> global(jobs.size());
    for (size_t i = 0; i < jobs.size(); ++i) {
      StageJob job = jobs[i];
      if (auto it = by_dir.find(job.dir); it != by_dir.end()) {
        global[i] = it->second;
        continue;
      }
      for (auto& a : job.after) a = global[a];
      job.config_file = (fs::path(v.config.output_dir) / "config.yaml").string();
      global[i] = all.size();
      by_dir.emplace(job.dir, all.size());
      all.push_back(std::move(job));
    }
  }
  return all;
}

json number_or_null(const json& j) { return j.is_number() ? j : json(); }

// Per seed: the student's held-out negative log perplexity and its teacher's directory.
std::vector<std::pair<double, std::string>> student_per_seed(const json& report) {
  std::vector<std::pair<double, std::string>> out;
  for (size_t i = 0; i < report["runs"].size() && i < report["student"]["evals"].size(); ++i) {
    out.emplace_back(report["student"]["evals"][i]["neg_log_perplexity"].get<double>(),
                     report["runs"][i]["teacher"]["dir"].get<std::string>());
  }
  return out;
}

// The student of `report` against the reference variant's, paired by seed: both distilled from
// the same teacher on the same batches, so the teacher's and the data's luck cancel. Null when
// their seeds have different teachers.
json paired_difference(const json& report, const json& reference) {
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

}  // namespace

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
  md += "\n\nEach variant's own report: `<variant>/report.md`. Plots: `report.html`.\n";
  return md;
}

json run_sweep(const SweepConfig& sweep, bool resume) {
  const std::string out = sweep.base.output_dir;
  for (const auto& v : sweep.variants) {
    if (!is_writer()) break;
    fs::create_directories(v.config.output_dir);
    write_text_atomic((fs::path(v.config.output_dir) / "config.yaml").string(), run_config_yaml(v.config));
  }
  if (world()) world()->barrier();
  spdlog::info("sweep of {} variant(s) into {}; shared stages in {}", sweep.variants.size(), out,
               sweep.variants.front().config.stages_dir);
  SweepData data;
  const auto jobs = all_pending_stages(sweep, data);
  const int threads = at::get_num_threads();
  const int workers = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(jobs.size()),
                                                         sweep.base.parallel_stages > 0 ? sweep.base.parallel_stages : threads));
  if (!jobs.empty()) spdlog::info("{} stage(s) to train across the variants", jobs.size());
  if (workers > 1 && !world()) {
    run_stage_jobs(jobs, (fs::path(out) / "config.yaml").string(), resume, workers, std::max(1, threads / workers));
  }
  EvaluationCache evaluations;
  json rows = json::array();
  std::vector<json> reports;
  size_t reference = 0;
  for (const auto& v : sweep.variants) {
    spdlog::info("variant {}: {}", v.name, v.set.empty() ? std::string("the base") : fmt::format("{}", fmt::join(v.set, " ")));
    reports.push_back(run_experiment(v.config, data.of(v.config), resume, &evaluations));
    rows.push_back(sweep_row(v, reports.back()));
    if (v.name == sweep.reference) reference = reports.size() - 1;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i]["student_minus_reference"] = i == reference ? json() : paired_difference(reports[i], reports[reference]);
  }
  json s = {{"config", (fs::path(out) / "config.yaml").string()},
            {"output_dir", out},
            {"reference", rows.empty() ? json() : rows[reference]["label"]},
            {"rows", rows}};
  if (!is_writer()) return s;
  write_text_atomic((fs::path(out) / "sweep.json").string(), s.dump(2) + "\n");
  const std::string plots = write_html_report(out);
  write_text_atomic((fs::path(out) / "sweep.md").string(), sweep_markdown(s) + plots);
  return s;
}

}  // namespace distill
