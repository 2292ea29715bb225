// distill sweep CONFIG: the variants of one base experiment; distill report DIR: a run's or a
// sweep's report.md and report.html written again from what it left.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>

#include "distill/cli/commands.h"
#include "distill/pipeline/experiment.h"
#include "distill/report/html_report.h"
#include "distill/process/runtime.h"
#include "distill/pipeline/sweep.h"
#include "distill/config/sweep_config.h"

namespace distill::cli {
namespace fs = std::filesystem;

namespace {

struct SweepArgs {
  std::string config;
  std::vector<std::string> set;
  std::string output;
  bool resume = false;
  bool check = false;
  bool no_bf16 = false;
};

}  // namespace

Command add_sweep(CLI::App& app) {
  auto a = std::make_shared<SweepArgs>();
  auto* sub = app.add_subcommand(
      "sweep", "Variants of one experiment (the paper's Table 6 and 7): the tokenizer, teachers and fair baselines they share "
               "trained once, a report per variant, and OUTPUT/sweep.md and report.html over all of them");
  sub->add_option("config", a->config, "Sweep file: a run configuration plus `sweep: {variants: [{name, set}]}`")->required();
  sub->add_option("--set", a->set, "Override a key of the base (so of every variant): --set training.steps=100 (repeatable)");
  sub->add_option("--output", a->output, "Output directory (overrides output_dir)");
  sub->add_flag("--resume", a->resume, "Continue unfinished stages from their newest checkpoint");
  sub->add_flag("--check", a->check, "Validate the sweep and print each variant's overrides; train nothing");
  add_no_bf16(sub, a->no_bf16);
  return {sub, [a] {
            const auto sweep = load_sweep_config(a->config, config_overrides(a->set, a->output, a->no_bf16));
            if (a->check) {
              for (const auto& v : sweep.variants) {
                std::cout << v.name << ": " << v.config.output_dir;
                for (const auto& s : v.set) std::cout << " " << s;
                std::cout << "\n";
              }
              return;
            }
            apply_config_threads(sweep.base.threads);
            open_run_directory(sweep.base, Job::experiment);
            const auto s = run_sweep(sweep, a->resume);
            spdlog::default_logger()->flush();
            std::cout << "report: " << (fs::path(sweep.base.output_dir) / "sweep.md").string() << " and "
                      << (fs::path(sweep.base.output_dir) / "report.html").string() << "\n";
          }};
}

Command add_report(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("report", "Write a run's or a sweep's report.md (sweep.md) and report.html with its plots "
                                           "again, from report.json (sweep.json) and the stages' metrics.jsonl");
  sub->add_option("dir", *dir, "The output_dir of a run or a sweep")->required();
  return {sub, [dir] {
            regenerate_report(*dir);
            std::cout << "report: " << (fs::path(*dir) / "report.html").string() << "\n";
          }};
}

}  // namespace distill::cli
