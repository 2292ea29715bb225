#include "distill/pipeline/sweep.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>

#include "distill/process/distributed.h"
#include "distill/pipeline/experiment.h"
#include "distill/pipeline/stage_training.h"
#include "distill/report/html_report.h"
#include "distill/report/sweep_report.h"
#include "distill/pipeline/stage_jobs.h"
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


// Per seed: the student's held-out negative log perplexity and its teacher's directory.
}  // namespace

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
    rows[i]["student_minus_reference"] = i == reference ? json() : student_minus_reference(reports[i], reports[reference]);
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
