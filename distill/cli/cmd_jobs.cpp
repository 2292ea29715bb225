// The jobs: distill train | distill | eval | run, and distill config check.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "data/tokenized_corpus.h"
#include "distill/cli/commands.h"
#include "distill/process/distributed.h"
#include "distill/evaluation/evaluate.h"
#include "distill/pipeline/experiment.h"
#include "distill/pipeline/stage_training.h"
#include "distill/report/report.h"
#include "distill/config/run_config.h"
#include "distill/process/runtime.h"
#include "distill/pipeline/stage_jobs.h"
#include "distill/config/sweep_config.h"
#include "models/io/checkpoint.h"
#include "models/errors.h"

namespace distill::cli {
namespace fs = std::filesystem;

void add_no_bf16(CLI::App* sub, bool& flag) {
  sub->add_flag("--no-bf16", flag,
                "Float32 matrix products whatever the config says (training.bf16, teacher.bf16 and teacher.train_bf16 "
                "default to auto: bf16 where the CPU multiplies it natively): --set training.bf16=false "
                "--set teacher.bf16=false --set teacher.train_bf16=false");
}

std::vector<std::string> config_overrides(std::vector<std::string> set, const std::string& output, bool no_bf16) {
  if (!output.empty()) set.push_back("output_dir=" + output);
  if (no_bf16) set.insert(set.end(), {"training.bf16=false", "teacher.bf16=false", "teacher.train_bf16=false"});
  return set;
}

namespace {

struct JobArgs {
  std::string config;
  std::vector<std::string> set;
  std::string output;
  bool resume = false;
  bool dense = false;
  bool no_bf16 = false;
};

void add_job_options(CLI::App* sub, JobArgs& a) {
  sub->add_option("config", a.config, "Run configuration (YAML)")->required();
  sub->add_option("--set", a.set, "Override a key: --set training.steps=100 (repeatable)");
  sub->add_option("--output", a.output, "Output directory (overrides output_dir)");
  sub->add_flag("--resume", a.resume, "Continue unfinished stages from their newest checkpoint");
  add_no_bf16(sub, a.no_bf16);
}

RunConfig load(const JobArgs& a) {
  auto c = load_run_config(a.config, config_overrides(a.set, a.output, a.no_bf16));
  apply_config_threads(c.threads);
  return c;
}

struct StageArgs {
  std::string config, stage;
  int64_t seed_index = 0;
  bool resume = false;
  bool pretraining = false;
};

}  // namespace

Command add_train(CLI::App& app) {
  auto a = std::make_shared<JobArgs>();
  auto* sub = app.add_subcommand("train", "Train a model from scratch: the sparse teacher, or with --dense the dense baseline");
  add_job_options(sub, *a);
  sub->add_flag("--dense", a->dense, "Train the dense baseline (the student's shape, the student's whole budget) instead of the teacher");
  return {sub, [a] {
            auto c = load(*a);
            open_run_directory(c, a->dense ? Job::baseline : Job::teacher);
            auto data = prepare_data(c, resolve_tokenizer(c));
            auto r = a->dense ? train_baseline(c, data, a->resume) : train_teacher(c, data, a->resume);
            if (is_writer()) std::cout << r.name << " model: " << r.model_dir << "\n";
          }};
}

Command add_distill(CLI::App& app) {
  auto a = std::make_shared<JobArgs>();
  auto* sub = app.add_subcommand("distill", "Distill the teacher into a dense student on the mixed loss");
  add_job_options(sub, *a);
  return {sub, [a] {
            auto c = load(*a);
            open_run_directory(c, Job::student);
            auto data = prepare_data(c, resolve_tokenizer(c));
            auto teacher = find_teacher(c, data);
            auto r = distill_student(c, data, teacher, a->resume);
            if (is_writer()) std::cout << "student model: " << r.model_dir << "\n";
          }};
}

Command add_run(CLI::App& app) {
  auto a = std::make_shared<JobArgs>();
  auto* sub = app.add_subcommand("run", "The whole experiment: teacher, dense baseline, student, evaluation, report");
  add_job_options(sub, *a);
  return {sub, [a] {
            auto c = load(*a);
            open_run_directory(c, Job::experiment);
            auto report = run_experiment(c, a->resume);
            spdlog::default_logger()->flush();
            if (is_writer()) std::cout << report_summary(report) << "report: " << (fs::path(c.output_dir) / "report.md").string() << "\n";
          }};
}

Command add_compare(CLI::App& app) {
  auto a = std::make_shared<JobArgs>();
  auto* sub = app.add_subcommand(
      "compare", "Does the teacher earn its gap? Train the Switch teacher and its dense counterpart for the same steps on "
                 "the same batches (every seed) and report the gap with its 95% interval");
  add_job_options(sub, *a);
  return {sub, [a] {
            auto c = load(*a);
            open_run_directory(c, Job::comparison);
            auto report = run_comparison(c, a->resume);
            spdlog::default_logger()->flush();
            if (is_writer()) std::cout << comparison_summary(report) << "report: " << (fs::path(c.output_dir) / "compare.md").string() << "\n";
          }};
}

Command add_stage(CLI::App& app) {
  auto a = std::make_shared<StageArgs>();
  auto* sub = app.add_subcommand("stage", "Train one stage of one seed (distill run starts these as child processes)");
  sub->group("");  // not listed in --help: an internal entry point
  sub->add_option("config", a->config, "Resolved run configuration (OUTPUT/config.yaml)")->required();
  sub->add_option("--seed-index", a->seed_index, "Which seed (0-based)")->check(CLI::NonNegativeNumber);
  sub->add_option("--stage", a->stage, "teacher | baseline | student | dense")
      ->required()
      ->check(CLI::IsMember({"teacher", "baseline", "student", "dense"}));
  sub->add_flag("--resume", a->resume, "Continue from the newest checkpoint");
  sub->add_flag("--pretraining", a->pretraining, "The configuration is a run's pre-training (its log lines say so)");
  return {sub, [a] {
            use_child_logging();
            auto c = load_run_config(a->config);
            c.pretraining = a->pretraining;
            if (a->seed_index >= c.seeds) {
              throw ConfigError(a->config + ": --seed-index " + std::to_string(a->seed_index) + " but seeds is " + std::to_string(c.seeds));
            }
            auto data = prepare_data(c, resolve_tokenizer(c), /*quiet=*/true);
            run_stage(c, data, a->seed_index, a->stage, a->resume);
          }};
}

Command add_config(CLI::App& app) {
  auto a = std::make_shared<JobArgs>();
  auto* sub = app.add_subcommand("config", "Configuration tools");
  sub->require_subcommand(1);
  auto* check = sub->add_subcommand("check", "Validate a run configuration and print it resolved");
  check->add_option("config", a->config, "Run configuration (YAML)")->required();
  check->add_option("--set", a->set, "Override a key: --set training.steps=100 (repeatable)");
  add_no_bf16(check, a->no_bf16);
  return {sub, [a] {
            if (is_sweep_file(a->config)) {  // checked as `distill sweep` reads it
              const auto sweep = load_sweep_config(a->config, config_overrides(a->set, a->output, a->no_bf16));
              std::cout << run_config_yaml(sweep.base) << "# a sweep of " << sweep.variants.size() << " variant(s):\n";
              for (const auto& v : sweep.variants) {
                std::cout << "#   " << v.name << ":";
                for (const auto& o : v.set) std::cout << " " << o;
                std::cout << "\n";
              }
              return;
            }
            std::cout << run_config_yaml(load(*a));
          }};
}

}  // namespace distill::cli
