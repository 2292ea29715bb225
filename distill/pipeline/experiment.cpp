#include "distill/pipeline/experiment.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "distill/evaluation/task_eval.h"
#include "distill/pipeline/stage_jobs.h"
#include "distill/pipeline/stage_training.h"
#include "distill/pipeline/stages.h"
#include "distill/process/run_lock.h"
#include "distill/report/html_report.h"
#include "distill/report/report.h"
#include "models/errors.h"
#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/io/hf_config.h"
#include "models/kernels/native_bf16.h"

namespace distill {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The precision of the models `job` trains or runs, as a phrase, and the bf16 keys that decide it.
std::string precision_phrase(const RunConfig& c, Job job, std::vector<std::string>& keys) {
  const std::string training = precision_name(c.training.bf16), frozen = precision_name(c.teacher.bf16),
                    teacher_training = precision_name(c.teacher.train_bf16);
  switch (job) {
    case Job::experiment:
      keys = {"teacher.bf16", "training.bf16"};
      if (c.teacher.path.empty()) keys.push_back("teacher.train_bf16");
      return precision_text(precision_record(c, c.teacher.path.empty()));
    case Job::comparison:
      keys = {"teacher.train_bf16"};
      return "the teacher and its dense counterpart train with " + teacher_training;
    case Job::teacher:
      keys = {"teacher.train_bf16"};
      return "teacher training " + teacher_training;
    case Job::baseline:
      keys = {"training.bf16"};
      return "baseline training " + training;
    case Job::student:
      keys = {"teacher.bf16", "training.bf16"};
      return "student training " + training + ", frozen teacher " + frozen;
  }
  return {};
}

}  // namespace

void open_run_directory(const RunConfig& config, Job job) {
  // Ranks of one data-parallel job must run the same configuration; only rank 0 writes.
  if (Collective* w = world()) w->check_same("configuration", run_config_yaml(config));
  if (!is_writer()) return;
  fs::create_directories(config.output_dir);
  lock_run_directory(config.output_dir);  // before anything in it is written
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  const std::string log_path = (fs::path(config.output_dir) / "distill.log").string();
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> file;
  try {
    file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_path);
  } catch (const spdlog::spdlog_ex& e) {
    throw Error(log_path + ": cannot write the run log (" + e.what() + "); is the output directory writable?");
  }
  auto logger = std::make_shared<spdlog::logger>("distill", spdlog::sinks_init_list{console, file});
  logger->set_pattern("%H:%M:%S %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::flush_every(std::chrono::seconds(2));
  write_text_atomic((fs::path(config.output_dir) / "config.yaml").string(), run_config_yaml(config));
  std::vector<std::string> used;
  const std::string phrase = precision_phrase(config, job, used);
  std::string automatic;  // the keys used that were left at auto, in the config's order
  for (const auto& k : config.bf16_auto)
    if (std::find(used.begin(), used.end(), k) != used.end()) automatic += (automatic.empty() ? "" : ", ") + k;
  const std::string why =
      automatic.empty() ? ""
                        : " (" + automatic + ": auto, and this CPU " +
                              (native_bf16_products() ? "multiplies bf16 natively; --no-bf16 keeps float32)" : "has no native bf16 products)");
  spdlog::info("precision: {}{}", phrase, why);
}

namespace {

// Evaluates each distinct model once (seeds may share a teacher or a given baseline; a sweep's
// runs share teachers and baselines): keyed by the stage's identity, its directory, and what
// decides the evaluation (`context`: the held-out data and how a teacher is run).
class Evaluations {
 public:
  Evaluations(const std::vector<Batch>& batches, std::string context, EvaluationCache* shared)
      : batches_(batches), context_(std::move(context)), done_(shared ? *shared : own_) {}
  const EvalResult& of(const StageResult& stage, const std::function<Seq2SeqModel()>& load) {
    const std::string key = stage.identity + "|" + stage.model_dir + "|" + context_;
    auto it = done_.find(key);
    if (it != done_.end()) return it->second;
    auto model = load();
    return done_.emplace(key, evaluate(model, batches_, world())).first->second;
  }

 private:
  const std::vector<Batch>& batches_;
  std::string context_;
  EvaluationCache own_;
  EvaluationCache& done_;
};

// Independent stages train side by side in child processes; what they leave is then reused.
void train_side_by_side(const RunConfig& c, const std::vector<StageJob>& jobs, bool resume) {
  const int threads = at::get_num_threads();
  const int workers = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(jobs.size()),
                                                         c.parallel_stages > 0 ? c.parallel_stages : threads));
  if (workers > 1 && !world()) {  // a data-parallel job trains its stages one after another
    run_stage_jobs(jobs, (fs::path(c.output_dir) / "config.yaml").string(), resume, workers, std::max(1, threads / workers));
  }
}

// Every seed's three models decode task.test (each distinct model once) and are scored on it; the
// predictions are written to OUTPUT/predictions/<model>-<identity>.tsv for inspection.
std::vector<TaskRun> score_task_runs(const RunConfig& c, const PreparedData& data, const std::vector<SeedRun>& runs) {
  const TaskPairs pairs = read_task_pairs(corpus_options(c.task.test), c.task.max_examples);
  DecodeOptions d;
  d.batch_size = c.task.batch_size;
  d.input_length = c.data.input_length;
  d.max_new_tokens = c.task.max_new_tokens;
  TaskScoreOptions so;
  so.classification = c.task.classification;
  so.bootstrap_resamples = c.task.bootstrap_resamples;
  so.seed = c.seed;
  spdlog::info("decoding {} task examples of {} with every model", pairs.inputs.size(), fmt::join(c.task.test.files, ", "));
  std::map<std::string, std::pair<TaskScores, json>> done;
  const auto score = [&](const StageResult& stage, const char* who, const std::function<Seq2SeqModel()>& load)
      -> const std::pair<TaskScores, json>& {
    const std::string key = stage.identity + "|" + stage.model_dir;
    auto it = done.find(key);
    if (it != done.end()) return it->second;
    auto model = load();
    const Decoded out = decode_task(model, data.tokenizer, pairs.inputs, d);
    auto scores = score_task(out.predictions, pairs.references, so);
    spdlog::info("[{}] exact match {:.2f}%, token error rate {:.2f}% ({:.0f} examples/s, {} cut at {} tokens)", who,
                 100 * scores.exact_match.value, 100 * scores.token_error_rate.value, out.examples_per_second(),
                 out.truncated, d.max_new_tokens);
    if (is_writer()) {
      const fs::path dir = fs::path(c.output_dir) / "predictions";
      fs::create_directories(dir);
      write_text_atomic((dir / (std::string(who) + "-" + stage.identity.substr(0, 16) + ".tsv")).string(),
                        predictions_tsv(pairs, out.predictions));
    }
    return done.emplace(key, std::make_pair(std::move(scores), out.speed_json())).first->second;
  };
  std::vector<TaskRun> task_runs;
  for (const auto& run : runs) {
    TaskRun t;
    const auto& te = score(run.teacher, "teacher", [&] { return load_teacher(c, run.teacher, data.tokenizer); });
    const auto& be = score(run.baseline, "baseline", [&] { return load_model(run.baseline.model_dir); });
    const auto& se = score(run.student, "student", [&] { return load_model(run.student.model_dir); });
    t.teacher = te.first;
    t.baseline = be.first;
    t.student = se.first;
    t.decoding = {{"teacher", te.second}, {"baseline", be.second}, {"student", se.second}};
    task_runs.push_back(std::move(t));
  }
  return task_runs;
}

}  // namespace

json run_comparison(const RunConfig& c, bool resume) {
  require_teacher_trained_here(c);
  auto tokenizer = resolve_tokenizer(c);
  auto data = prepare_data(c, tokenizer);
  train_side_by_side(c, pending_stages(c, data, /*comparison=*/true), resume);
  std::vector<SeedRun> runs;
  for (int64_t i = 0; i < c.seeds; ++i) {
    const RunConfig rc = replica_config(c, i);
    SeedRun run;
    run.seed = rc.seed;
    run.teacher = train_teacher(rc, data, resume);
    run.baseline = train_dense_counterpart(rc, data, resume);
    runs.push_back(std::move(run));
  }
  spdlog::info("evaluating {} model(s) on {} held-out batches", 2 * runs.size(), data.eval.size());
  for (auto& run : runs) {
    auto teacher = load_model(run.teacher.model_dir);
    run.teacher_eval = evaluate(teacher, data.eval, world());
    auto dense = load_model(run.baseline.model_dir);
    run.baseline_eval = evaluate(dense, data.eval, world());
  }
  ComparisonInputs in;
  in.teacher = read_hf_config((fs::path(runs[0].teacher.model_dir) / "config.json").string());
  in.dense = read_hf_config((fs::path(runs[0].baseline.model_dir) / "config.json").string());
  in.runs = runs;
  in.src_len = c.data.input_length;
  in.tgt_len = c.data.target_length;
  in.config = c;
  auto report = build_comparison(in);
  if (!is_writer()) return report;
  write_text_atomic((fs::path(c.output_dir) / "compare.json").string(), report.dump(2) + "\n");
  write_text_atomic((fs::path(c.output_dir) / "compare.md").string(), comparison_markdown(report));
  return report;
}

json run_experiment(const RunConfig& c, bool resume) { return run_experiment(c, prepare_data(c, resolve_tokenizer(c)), resume); }

json run_experiment(const RunConfig& c, const PreparedData& data, bool resume, EvaluationCache* evaluations) {
  train_side_by_side(c, pending_stages(c, data, /*comparison=*/false), resume);
  std::vector<SeedRun> runs;
  for (int64_t i = 0; i < c.seeds; ++i) {
    const RunConfig rc = replica_config(c, i);
    SeedRun run;
    run.seed = rc.seed;
    run.teacher = i > 0 && c.teacher.train_once ? runs[0].teacher : train_teacher(rc, data, resume);
    run.baseline = train_baseline(rc, data, resume);
    run.student = distill_student(rc, data, run.teacher, resume);
    runs.push_back(std::move(run));
  }

  spdlog::info("evaluating {} model(s) on {} held-out batches", 3 * runs.size(), data.eval.size());
  const json context = {{"data", run_config_json(c)["data"]}, {"teacher_run", teacher_run(c)}};
  Evaluations evals(data.eval, fingerprint_hash(context), evaluations);
  for (auto& run : runs) {
    run.teacher_eval = evals.of(run.teacher, [&] { return load_teacher(c, run.teacher, data.tokenizer); });
    run.baseline_eval = evals.of(run.baseline, [&] { return load_model(run.baseline.model_dir); });
    run.student_eval = evals.of(run.student, [&] { return load_model(run.student.model_dir); });
  }
  ReportInputs in;
  if (!c.task.test.files.empty()) in.task_runs = score_task_runs(c, data, runs);
  in.task_options = {c.task.classification, c.task.bootstrap_resamples, c.seed, fmt::format("{}", fmt::join(c.task.test.files, ", "))};
  in.teacher = read_hf_config((fs::path(runs[0].teacher.model_dir) / "config.json").string());
  in.baseline = read_hf_config((fs::path(runs[0].baseline.model_dir) / "config.json").string());
  in.student = read_hf_config((fs::path(runs[0].student.model_dir) / "config.json").string());
  in.runs = runs;
  in.src_len = c.data.input_length;
  in.tgt_len = c.data.target_length;
  in.config = c;
  in.baseline_steps = baseline_train_steps(c, data);
  auto report = build_report(in);
  if (!is_writer()) return report;
  write_text_atomic((fs::path(c.output_dir) / "report.json").string(), report.dump(2) + "\n");
  const std::string plots = write_html_report(c.output_dir);
  write_text_atomic((fs::path(c.output_dir) / "report.md").string(), report_markdown(report) + plots);
  return report;
}
}  // namespace distill
