#include "distill/pipeline/stage_training.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "distill/pipeline/stages.h"
#include "distill/training/student_init.h"
#include "distill/training/teacher_target_file.h"
#include "distill/training/trainer.h"
#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/io/hf_config.h"
#include "models/io/safetensors.h"
#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A stage's directory: OUTPUT/<stage>, or with stages_dir one there named by the hash of its
// fingerprint (students stay in OUTPUT: they are what a run is about).
std::string stage_dir(const RunConfig& c, const std::string& stage, const json& fingerprint) {
  if (c.stages_dir.empty() || stage == "student") return (fs::path(c.output_dir) / stage).string();
  return (fs::path(c.stages_dir) / (stage + "-" + fingerprint_hash(fingerprint))).string();
}

int64_t teacher_steps(const RunConfig& c) { return c.teacher.steps ? *c.teacher.steps : c.training.steps; }

// How logs name a stage: "student", or "student seed 2" when there are several seeds.
std::string stage_label(const RunConfig& c, const std::string& name) {
  const std::string what = c.pretraining ? name + " pre-training" : name;
  return c.seeds > 1 ? what + " seed " + std::to_string(c.seed_index + 1) : what;
}

// How stage `stage` trains: `training` with its steps, in the teacher's training precision
// (teacher.train_bf16) for the teacher and its dense counterpart in the comparison, which trains
// as the teacher does.
TrainingConfig stage_training(const RunConfig& c, const std::string& stage, int64_t steps) {
  TrainingConfig t = c.training;
  t.steps = steps;
  if (stage == "teacher" || stage == "dense") t.bf16 = c.teacher.train_bf16;
  return t;
}

// The training settings that determine a model (not how often it logs, evaluates or checkpoints).
json training_fingerprint(const TrainingConfig& t) {
  RunConfig tmp;
  tmp.training = t;
  json j = run_config_json(tmp)["training"];
  for (const char* k : {"log_interval", "eval_interval", "checkpoint_interval", "keep_checkpoints"}) j.erase(k);
  return j;
}

StageResult given_model(const std::string& name, const std::string& dir, const std::optional<int64_t>& trained_tokens) {
  StageResult r;
  r.name = name;
  r.model_dir = dir;
  r.reused = true;
  r.trained_here = false;
  r.budget_known = trained_tokens.has_value();
  if (trained_tokens) r.budget.tokens = *trained_tokens;
  r.identity = model_dir_hash(dir);
  return r;
}

// Fills what a finished stage recorded into `r`.
void read_stage(StageResult& r, const std::string& dir) {
  const auto f = read_finished_stage(dir);
  r.budget = f.budget;
  r.data_end = f.data_end;
  r.identity = f.fingerprint;
}

json teacher_fingerprint(const RunConfig& c, const json& data_fingerprint) {
  return {{"stage", "teacher"}, {"data", data_fingerprint}, {"model", run_config_json(c)["teacher"]["model"]},
          {"training", training_fingerprint(stage_training(c, "teacher", teacher_steps(c)))}, {"seed", c.seed}};
}

FfnInitOptions ffn_init_options(const RunConfig& c) {
  return {parse_ffn_init(c.student.init), c.student.top_k, c.student.weighting == "plain"};
}

// The shape of the dense baseline and the student: the teacher's, dense, at the student's width.
ModelConfig dense_shape(const RunConfig& c, int64_t vocab_size) {
  const ModelConfig teacher = !c.teacher.path.empty() ? read_hf_config((fs::path(c.teacher.path) / "config.json").string())
                                                      : teacher_model_config(c, vocab_size, /*dense_only=*/false);
  return student_config(teacher, student_d_ff(teacher, c.student.d_ff, ffn_init_options(c)), c.training.dropout);
}

// A dense model trained here for `steps`: the baseline (from scratch, or on from baseline.path),
// or the teacher's dense counterpart ("dense", from scratch).
json baseline_fingerprint(const RunConfig& c, const json& data_fingerprint, int64_t vocab_size, int64_t steps,
                          const std::string& stage) {
  json f = {{"stage", stage}, {"data", data_fingerprint}, {"seed", c.seed}};
  if (stage == "baseline" && !c.baseline.path.empty()) f["from"] = model_dir_hash(c.baseline.path);
  else f["model"] = hf_config_json(dense_shape(c, vocab_size));
  f["training"] = training_fingerprint(stage_training(c, stage, steps));
  return f;
}

// The pre-training run of `c` (a seed replica): the same seed and models, the pre-training data,
// and pretrain.steps for the teacher and for the baseline alike. Its stages live in stages_dir
// (load_run_config sets one), named by their settings, so every process finds them.
RunConfig pretrain_config(const RunConfig& c) {
  RunConfig p = c;
  p.data = c.pretrain.data;
  p.data.tokenizer = c.data.tokenizer;
  if (p.data.tokenizer.path.empty()) p.data.tokenizer.path = trained_tokenizer_dir(c);  // the run's, resolved first
  if (!p.data.seed) p.data.seed = static_cast<int64_t>(data_seed(c));
  p.pretrain = PretrainConfig{};
  p.task = TaskConfig{};
  p.teacher.steps = c.pretrain.steps;
  p.baseline.steps = c.pretrain.steps;
  p.output_dir = (fs::path(c.output_dir) / "pretrain").string();
  p.pretraining = true;
  return p;
}

// Where the pre-training run's configuration is written for the stage processes that train it.
std::string pretrain_config_file(const RunConfig& c) {
  return (fs::path(c.output_dir) / "pretrain" / "config.yaml").string();
}

// The checkpoint a teacher or baseline (`stage`) is fine-tuned from: its pre-training stage of this
// seed, or <stage>.init_from; nullopt when it starts from scratch (or is given by path).
struct InitSource {
  std::string stage_dir;    // a pre-training stage's directory; empty for init_from
  json fingerprint;         // the pre-training stage's fingerprint
  std::string model_dir;
  std::string identity;
};

std::optional<InitSource> init_source(const RunConfig& c, const Tokenizer& tokenizer, const std::string& stage) {
  InitSource s;
  if (pretrains(c)) {
    const RunConfig p = pretrain_config(c);
    const json data = data_fingerprint(p, tokenizer);
    s.fingerprint = stage == "teacher" ? teacher_fingerprint(p, data)
                                       : baseline_fingerprint(p, data, tokenizer.vocab_size(), c.pretrain.steps, "baseline");
    s.stage_dir = stage_dir(p, stage, s.fingerprint);
    s.model_dir = (fs::path(s.stage_dir) / "model").string();
    s.identity = fingerprint_hash(s.fingerprint);
    return s;
  }
  const std::string& from = stage == "teacher" ? c.teacher.init_from : c.baseline.init_from;
  if (from.empty()) return std::nullopt;
  s.model_dir = from;
  s.identity = model_dir_hash(from);
  return s;
}

// A stage's fingerprint names the checkpoint it was fine-tuned from, if any.
json with_init(json fingerprint, const std::optional<InitSource>& init) {
  if (init) fingerprint["from"] = init->identity;
  return fingerprint;
}

json teacher_fingerprint(const RunConfig& c, const PreparedData& data) {
  return with_init(teacher_fingerprint(c, data.fingerprint), init_source(c, data.tokenizer, "teacher"));
}

// Only the baseline may start from a checkpoint (the dense counterpart of `compare` does not).
std::optional<InitSource> dense_init_source(const RunConfig& c, const Tokenizer& tokenizer, const std::string& stage) {
  return stage == "baseline" ? init_source(c, tokenizer, stage) : std::nullopt;
}

json baseline_fingerprint(const RunConfig& c, const PreparedData& data, int64_t steps, const std::string& stage = "baseline") {
  return with_init(baseline_fingerprint(c, data.fingerprint, data.tokenizer.vocab_size(), steps, stage),
                   dense_init_source(c, data.tokenizer, stage));
}

// A checkpoint loaded to be trained on: the training's dropout, its vocabulary checked.
Seq2SeqModel load_for_training(const std::string& dir, const TrainingConfig& t, const Tokenizer& tokenizer,
                               const std::string& what) {
  auto cfg = read_hf_config((fs::path(dir) / "config.json").string());
  check_vocabulary(cfg, tokenizer, what + " " + dir);
  cfg.dropout_rate = t.dropout;
  if (cfg.is_sparse()) cfg.expert_dropout_rate = t.expert_dropout;
  Seq2SeqModel model(cfg);
  load_state(model, load_model_tensors(dir), dir);
  return model;
}

DataPosition student_start(const StageResult& teacher) { return teacher.trained_here ? teacher.data_end : DataPosition{}; }


json student_fingerprint(const RunConfig& c, const PreparedData& data, const StageResult& teacher) {
  const json settings = run_config_json(c);
  const DataPosition start = student_start(teacher);
  return {{"stage", "student"},
          {"data", data.fingerprint},
          {"teacher", teacher.identity},
          {"teacher_run", teacher_run(c)},
          {"student", settings["student"]},
          {"distillation", settings["distillation"]},
          {"training", training_fingerprint(c.training)},
          {"seed", c.seed},
          {"start", {{"epoch", start.epoch}, {"batch", start.batch}}}};
}

bool baseline_trained_here(const RunConfig& c) { return c.baseline.path.empty() || c.baseline.continue_steps > 0; }

}  // namespace

json teacher_run(const RunConfig& c) {
  // bf16 as "products" (float32 activations, bf16 products): a file made by the earlier all-bf16
  // teacher (recorded as true) is not taken for one of these.
  return {{"bf16", c.teacher.bf16 ? json("products") : json(false)},
          {"capacity_factor", c.distillation.teacher_capacity_factor ? json(*c.distillation.teacher_capacity_factor) : json()}};
}

void check_vocabulary(const ModelConfig& m, const Tokenizer& t, const std::string& what) {
  if (m.vocab_size < t.vocab_size() || m.pad_token_id != t.pad_id() || m.eos_token_id != t.eos_id()) {
    throw ConfigError(what + ": vocabulary does not match the tokenizer " + t.model_file() + ": model vocab_size " +
                      std::to_string(m.vocab_size) + " (pad " + std::to_string(m.pad_token_id) + ", eos " +
                      std::to_string(m.eos_token_id) + "), tokenizer " + std::to_string(t.vocab_size()) + " ids (pad " +
                      std::to_string(t.pad_id()) + ", eos " + std::to_string(t.eos_id()) + ")");
  }
}

ModelConfig teacher_model_config(const RunConfig& c, int64_t vocab_size, bool dense_only) {
  const auto& a = c.teacher.model;
  const auto& t = c.training;
  ModelConfig m;
  m.model_type = a.num_experts > 0 && !dense_only ? "switch_transformers" : "t5";
  m.vocab_size = vocab_size;
  m.d_model = a.d_model;
  m.d_ff = a.d_ff;
  m.d_kv = a.d_kv;
  m.num_heads = a.num_heads;
  m.num_layers = a.num_layers;
  m.num_decoder_layers = a.num_decoder_layers;
  m.relative_attention_num_buckets = a.relative_attention_num_buckets;
  m.relative_attention_max_distance = a.relative_attention_max_distance;
  m.is_gated_act = a.feed_forward_proj == "gated-gelu";
  m.dense_act_fn = m.is_gated_act ? "gelu_new" : "relu";
  m.tie_word_embeddings = a.tie_word_embeddings;
  m.dropout_rate = t.dropout;
  if (m.model_type == "switch_transformers") {
    m.num_experts = a.num_experts;
    m.encoder_sparse_step = a.encoder_sparse_step.value_or(a.sparse_step);
    m.decoder_sparse_step = a.decoder_sparse_step.value_or(a.sparse_step);
    m.capacity_mode = a.capacity_mode == "fixed" ? CapacityMode::kFixed : CapacityMode::kFactor;
    m.expert_capacity = a.expert_capacity;
    if (m.capacity_mode == CapacityMode::kFactor) {
      // distill ignores it; Hugging Face applies it to each sequence. Its per-sequence share of the
      // evaluation capacity, at the longer of the two stacks, is the closest fixed rule.
      const double longest = static_cast<double>(std::max(c.data.input_length, c.data.target_length));
      m.expert_capacity = static_cast<int64_t>(std::ceil(a.capacity_factor_eval * longest / static_cast<double>(a.num_experts)));
    }
    m.capacity_factor_train = a.capacity_factor_train;
    m.capacity_factor_eval = a.capacity_factor_eval;
    m.router_top_k = a.router_top_k;
    m.router_loss = a.router_loss == "hf" ? RouterLoss::kHf : RouterLoss::kPaper;
    m.router_jitter_noise = a.router_jitter_noise;
    m.router_z_loss_coef = a.router_z_loss_coef;
    m.router_aux_loss_coef = a.router_aux_loss_coef;
    m.router_ignore_padding_tokens = a.router_ignore_padding;
    m.expert_dropout_rate = t.expert_dropout;
  }
  m.validate("teacher.model");
  return m;
}

RunConfig replica_config(const RunConfig& c, int64_t i) {
  RunConfig r = c;
  r.data.seed = static_cast<int64_t>(data_seed(c));
  r.seed = c.seed + 1000 * static_cast<uint64_t>(i);
  r.seed_index = i;
  if (i > 0) r.output_dir = (fs::path(c.output_dir) / ("seed-" + std::to_string(i))).string();
  return r;
}

namespace {

// The checkpoint a stage is fine-tuned from, with what its training cost.
struct InitModel {
  std::string model_dir;
  Budget budget;
  bool budget_known = true;
};

// `init` ready to start from: its pre-training stage trained here first when it is not finished
// (run_experiment's stage processes normally trained it already).
InitModel prepare_init(const RunConfig& c, const PreparedData& data, const InitSource& init, const std::string& stage,
                       bool resume) {
  InitModel m{init.model_dir, {}, true};
  if (init.stage_dir.empty()) {  // <stage>.init_from: its budget is what the configuration states
    const auto& tokens = stage == "teacher" ? c.teacher.trained_tokens : c.baseline.trained_tokens;
    m.budget_known = tokens.has_value();
    if (tokens) m.budget.tokens = *tokens;
    return m;
  }
  if (!stage_is_done(init.stage_dir, init.fingerprint)) {
    const RunConfig p = pretrain_config(c);
    spdlog::info("[{}] pre-training it first: {} steps on {}", stage_label(c, stage), c.pretrain.steps,
                 fmt::join(p.data.train.files, ", "));
    const PreparedData pdata = prepare_data(p, data.tokenizer);
    if (stage == "teacher") train_teacher(p, pdata, resume);
    else train_baseline(p, pdata, resume);
  }
  m.budget = read_finished_stage(init.stage_dir).budget;
  return m;
}

}  // namespace

StageResult train_teacher(const RunConfig& c, const PreparedData& data, bool resume) {
  if (!c.teacher.path.empty()) return given_model("teacher", c.teacher.path, c.teacher.trained_tokens);
  StageResult r;
  r.name = "teacher";
  const auto source = init_source(c, data.tokenizer, r.name);  // once: it may hash a checkpoint's files
  const json fingerprint = with_init(teacher_fingerprint(c, data.fingerprint), source);
  const std::string dir = stage_dir(c, r.name, fingerprint);
  r.model_dir = (fs::path(dir) / "model").string();
  const std::string label = stage_label(c, r.name);
  const std::optional<InitModel> init =
      source ? std::optional<InitModel>(prepare_init(c, data, *source, r.name, resume)) : std::nullopt;
  const auto action = prepare_stage(label, dir, fingerprint, resume);
  r.reused = action == StageAction::kReuse;
  if (!r.reused) {
    const TrainingConfig training = stage_training(c, "teacher", teacher_steps(c));
    Seq2SeqModel model{nullptr};
    if (init) {
      model = load_for_training(init->model_dir, training, data.tokenizer, "the teacher's starting point");
      spdlog::info("[{}] fine-tuning {} ({}) for {} steps (seed {})", label, init->model_dir, model->config().model_type,
                   training.steps, c.seed);
    } else {
      model = Seq2SeqModel(teacher_model_config(c, data.tokenizer.vocab_size(), /*dense_only=*/false));
      init_from_scratch(model, training.init_scale, c.seed);  // paired with the baseline's
      spdlog::info("[{}] training a {} model from scratch for {} steps (seed {})", label, model->config().model_type,
                   training.steps, c.seed);
    }
    TrainerOptions o{label, dir, training, c.seed, action == StageAction::kResume, data.tokenizer_files, {}};
    Trainer(model, data.train, &data.eval, o).run();
  }
  read_stage(r, dir);
  if (init) {  // the teacher's budget is its pre-training's plus its fine-tuning's
    r.budget += init->budget;
    r.budget_known = init->budget_known;
  }
  return r;
}

int64_t baseline_steps(const RunConfig& c, const PreparedData& data) {
  if (c.baseline.steps) return *c.baseline.steps;
  if (c.teacher.path.empty()) return teacher_steps(c) + c.training.steps;
  if (!c.teacher.trained_tokens) return c.training.steps;  // unknown: the report says so
  // The steps the teacher's tokens take at this batch size (epoch 0's mean tokens per batch).
  const auto epoch = data.train->make_epoch(0);
  double tokens = 0;
  for (const auto& e : epoch.examples) tokens += static_cast<double>(e.inputs.size() + e.targets.size());
  const double per_step = tokens / static_cast<double>(std::max<size_t>(1, epoch.batches.size())) *
                          static_cast<double>(c.training.grad_accumulation);
  const auto steps = static_cast<int64_t>(std::ceil(static_cast<double>(*c.teacher.trained_tokens) / std::max(1.0, per_step)));
  spdlog::info("[baseline] teacher.trained_tokens {} take ~{} steps of ~{:.0f} tokens: the baseline trains {} + {} steps",
               *c.teacher.trained_tokens, steps, per_step, steps, c.training.steps);
  return steps + c.training.steps;
}

int64_t baseline_train_steps(const RunConfig& c, const PreparedData& data) {
  return c.baseline.path.empty() ? baseline_steps(c, data) : c.baseline.continue_steps;
}

namespace {

// Whether seed i trains a teacher of its own (else it uses teacher.path or the first seed's).
bool trains_own_teacher(const RunConfig& c, int64_t i) {
  return c.teacher.path.empty() && (i == 0 || !c.teacher.train_once);
}

// A dense model of the student's shape trained here into OUTPUT/<name>: from scratch, or on from
// baseline.path for the baseline when given.
StageResult train_dense(const RunConfig& c, const PreparedData& data, const std::string& name, int64_t steps, bool resume) {
  StageResult r;
  r.name = name;
  const auto source = dense_init_source(c, data.tokenizer, name);  // once: it may hash a checkpoint's files
  const json fingerprint =
      with_init(baseline_fingerprint(c, data.fingerprint, data.tokenizer.vocab_size(), steps, name), source);
  const std::string dir = stage_dir(c, r.name, fingerprint);
  r.model_dir = (fs::path(dir) / "model").string();
  const bool from_path = name == "baseline" && !c.baseline.path.empty();
  const std::optional<InitModel> init =
      source ? std::optional<InitModel>(prepare_init(c, data, *source, name, resume)) : std::nullopt;
  const TrainingConfig training = stage_training(c, name, steps);
  const std::string label = stage_label(c, r.name);
  const auto action = prepare_stage(label, dir, fingerprint, resume);
  r.reused = action == StageAction::kReuse;
  if (!r.reused) {
    Seq2SeqModel model{nullptr};
    const std::string start = from_path ? c.baseline.path : init ? init->model_dir : "";
    if (!start.empty()) {
      // load_for_training checks the vocabulary itself; a given baseline is checked once known dense.
      model = from_path ? load_model(start) : load_for_training(start, training, data.tokenizer, "the baseline's starting point");
      if (model->config().is_sparse()) {
        throw ConfigError("baseline " + start + " is a sparse model; the baseline must be dense");
      }
      if (from_path) check_vocabulary(model->config(), data.tokenizer, "baseline " + start);
      spdlog::info("[{}] training {} on for {} steps", label, start, training.steps);
    } else {
      model = Seq2SeqModel(dense_shape(c, data.tokenizer.vocab_size()));
      init_from_scratch(model, training.init_scale, c.seed);  // paired with the teacher's
      spdlog::info("[{}] training a dense model of the student's shape from scratch for {} steps (seed {})", label,
                   training.steps, c.seed);
    }
    TrainerOptions o{label, dir, training, c.seed, action == StageAction::kResume, data.tokenizer_files, {}};
    Trainer(model, data.train, &data.eval, o).run();
  }
  read_stage(r, dir);
  if (init) {  // pre-training plus fine-tuning
    r.budget += init->budget;
    r.budget_known = init->budget_known;
  }
  return r;
}

}  // namespace

void require_teacher_trained_here(const RunConfig& c) {
  if (!c.teacher.path.empty()) {
    throw ConfigError("distill compare trains the teacher and its dense counterpart side by side: unset teacher.path");
  }
  if (pretrains(c) || !c.teacher.init_from.empty()) {
    throw ConfigError("distill compare trains the teacher and its dense counterpart from scratch on the same batches: "
                      "unset pretrain.steps and teacher.init_from");
  }
}

StageResult train_baseline(const RunConfig& c, const PreparedData& data, bool resume) {
  const bool given = !c.baseline.path.empty();
  if (given && c.baseline.continue_steps == 0) return given_model("baseline", c.baseline.path, c.baseline.trained_tokens);
  StageResult r = train_dense(c, data, "baseline", baseline_train_steps(c, data), resume);
  if (given) {
    r.budget_known = c.baseline.trained_tokens.has_value();
    if (c.baseline.trained_tokens) r.budget.tokens += *c.baseline.trained_tokens;
  }
  return r;
}

StageResult train_dense_counterpart(const RunConfig& c, const PreparedData& data, bool resume) {
  require_teacher_trained_here(c);
  return train_dense(c, data, "dense", teacher_steps(c), resume);
}

StageResult find_teacher(const RunConfig& c, const PreparedData& data) {
  if (!c.teacher.path.empty()) return given_model("teacher", c.teacher.path, c.teacher.trained_tokens);
  StageResult r;
  r.name = "teacher";
  const std::string dir = stage_dir(c, r.name, teacher_fingerprint(c, data));
  r.model_dir = (fs::path(dir) / "model").string();
  if (!fs::exists(fs::path(dir) / "DONE.json") || !fs::exists(fs::path(r.model_dir) / "config.json")) {
    throw ConfigError("no teacher at " + r.model_dir + ": set teacher.path, or train one first (distill train CONFIG, or distill run CONFIG)");
  }
  read_stage(r, dir);
  r.reused = true;
  return r;
}

Seq2SeqModel load_teacher(const RunConfig& c, const StageResult& stage, const Tokenizer& tokenizer) {
  const std::string& dir = stage.model_dir;
  if (!fs::exists(fs::path(dir) / "config.json")) {
    throw ConfigError("no teacher at " + dir + ": set teacher.path, or train one first (distill train CONFIG, or distill run CONFIG)");
  }
  auto cfg = read_hf_config((fs::path(dir) / "config.json").string());
  check_vocabulary(cfg, tokenizer, "teacher " + dir);
  if (c.distillation.teacher_capacity_factor && cfg.is_sparse()) {
    // The paper's evaluation capacity: per batch, factor 2.0 by default.
    cfg.capacity_mode = CapacityMode::kFactor;
    cfg.capacity_factor_eval = *c.distillation.teacher_capacity_factor;
  }
  Seq2SeqModel teacher(cfg);
  load_state(teacher, load_model_tensors(dir), dir);
  teacher->set_bf16_products(c.teacher.bf16);
  teacher->eval();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  return teacher;
}

namespace {

// The teacher's soft targets of the student's batches, from the file every student of this teacher
// with these settings shares (computed here when missing or stale).
std::shared_ptr<SoftTargetSource> teacher_target_file(const RunConfig& c, const PreparedData& data, const StageResult& teacher_stage,
                                                      Seq2SeqModel& teacher, DataPosition start) {
  const auto& x = c.distillation;
  const int64_t V = teacher->config().vocab_size, k = std::min(x.teacher_cache_top_k, V);
  const int64_t batches = c.training.steps * c.training.grad_accumulation;
  json header = {{"format", 1},
                 {"teacher", teacher_stage.identity},
                 {"teacher_run", teacher_run(c)},
                 {"data", fingerprint_hash(data.fingerprint)},
                 {"start", {{"epoch", start.epoch}, {"batch", start.batch}}},
                 {"batches", batches},
                 {"k", k},
                 {"temperature", x.temperature},
                 {"vocab_size", V}};
  // Named by everything but the teacher's identity: a teacher changed under the same path finds
  // the old file, which is refused as stale and replaced.
  json key = header;
  key.erase("teacher");
  const fs::path dir = teacher_stage.trained_here ? fs::path(teacher_stage.model_dir).parent_path()
                                                  : fs::path(c.stages_dir.empty() ? c.output_dir : c.stages_dir) / "teacher-targets";
  fs::create_directories(dir);
  const std::string path = (dir / ("soft-targets-" + fingerprint_hash(key) + ".bin")).string();
  auto file = TeacherTargetFile::open_or_build(path, header, [&] {
    spdlog::info("computing the teacher's top-{} soft targets of {} batches into {}", k, batches, path);
    const double per_token = TeacherTargetFile::build(path, header, teacher, data.train, start, batches, V);
    spdlog::info("wrote {} ({:.1f} MB, {:.0f} bytes per target token)", path,
                 static_cast<double>(fs::file_size(path)) / (1024.0 * 1024.0), per_token);
  });
  spdlog::info("the teacher's soft targets come from {} ({} examples)", path, file->examples());
  return std::shared_ptr<SoftTargetSource>(std::move(file));
}

}  // namespace

StageResult distill_student(const RunConfig& c, const PreparedData& data, const StageResult& teacher_stage, bool resume) {
  StageResult r;
  r.name = "student";
  const json fingerprint = student_fingerprint(c, data, teacher_stage);
  const std::string dir = stage_dir(c, r.name, fingerprint);
  r.model_dir = (fs::path(dir) / "model").string();
  const DataPosition start = student_start(teacher_stage);
  const std::string label = stage_label(c, r.name);
  const auto action = prepare_stage(label, dir, fingerprint, resume);
  r.reused = action == StageAction::kReuse;
  if (!r.reused) {
    auto teacher = load_teacher(c, teacher_stage, data.tokenizer);
    const FfnInitOptions init_options = ffn_init_options(c);
    ModelConfig sc = student_config(teacher->config(), student_d_ff(teacher->config(), c.student.d_ff, init_options),
                                    c.training.dropout);
    Seq2SeqModel student(sc);
    init_from_scratch(student, c.training.init_scale, c.seed + 3);
    std::map<std::string, at::Tensor> frequency;
    if (needs_routing_frequency(init_options.mode)) {
      auto epoch = data.train->make_epoch(0);
      std::vector<Batch> calibration;
      for (size_t i = 0; i < epoch.batches.size() && static_cast<int64_t>(i) < c.student.calibration_batches; ++i)
        calibration.push_back(data.train->collate_batch(epoch, i));
      frequency = routing_frequency(teacher, calibration);
    }
    auto init = init_student(student, teacher, init_options, c.student.copy_non_expert, frequency);
    spdlog::info("[{}] from teacher {}: {} tensors copied, {} built from experts ({}), {} widened, {} fresh; student d_ff {}; "
                 "data from epoch {} batch {}",
                 label, teacher_stage.model_dir, init.copied.size(), init.from_experts.size(), c.student.init,
                 init.widened.size(), init.fresh.size(), sc.d_ff, start.epoch, start.batch);
    const auto& x = c.distillation;
    TeacherSignal signal;
    signal.teacher = teacher;
    signal.loss = {x.hard_weight, x.soft_weight, x.temperature, parse_soft_loss(x.soft_loss), x.jsd_beta};
    signal.cache_top_k = x.teacher_cache ? x.teacher_cache_top_k : 0;
    if (x.hidden_weight > 0) {
      signal.hidden_weight = x.hidden_weight;
      signal.hidden_loss = parse_hidden_loss(x.hidden_loss);
      signal.hidden_pairs = parse_hidden_layer_map(x.hidden_layers, teacher->config().num_layers,
                                                   teacher->config().num_decoder_layers, "distillation.hidden_layers");
    }
    if (x.teacher_cache_disk) signal.targets = teacher_target_file(c, data, teacher_stage, teacher, start);
    TrainerOptions o{label, dir, c.training, c.seed, action == StageAction::kResume, data.tokenizer_files, start};
    if (c.student.schedule == "continue") o.schedule_offset = teacher_steps(c);
    Trainer(student, data.train, &data.eval, o, signal).run();
  }
  read_stage(r, dir);
  return r;
}

std::vector<StageJob> pending_stages(const RunConfig& c, const PreparedData& data, bool comparison) {
  std::vector<StageJob> jobs;
  // Adds the job unless its stage is finished under `fingerprint`; returns its index if added.
  const auto add = [&](const RunConfig& rc, const std::string& stage, const json& fingerprint,
                       std::vector<size_t> after = {}) -> std::optional<size_t> {
    const std::string dir = stage_dir(rc, stage, fingerprint);
    if (after.empty() && stage_is_done(dir, fingerprint)) return std::nullopt;
    jobs.push_back({rc.seed_index, stage, std::move(after), dir, ""});
    return jobs.size() - 1;
  };
  if (comparison) {
    require_teacher_trained_here(c);
    for (int64_t i = 0; i < c.seeds; ++i) {
      const RunConfig rc = replica_config(c, i);
      add(rc, "teacher", teacher_fingerprint(rc, data));
      add(rc, "dense", baseline_fingerprint(rc, data, teacher_steps(rc), "dense"));
    }
    return jobs;
  }
  std::vector<std::optional<size_t>> teacher_job(static_cast<size_t>(c.seeds));
  const int64_t steps = baseline_trained_here(c) ? baseline_train_steps(c, data) : 0;  // the same for every seed
  if (pretrains(c) && is_writer()) {  // what the pre-training stage processes read
    fs::create_directories(fs::path(pretrain_config_file(c)).parent_path());
    write_text_atomic(pretrain_config_file(c), run_config_yaml(pretrain_config(c)));
  }
  // A pre-training stage of seed i, if it is not finished: the fine-tuned stage waits for it.
  const auto pretraining = [&](const RunConfig& rc, const std::string& stage) -> std::vector<size_t> {
    const auto init = pretrains(c) ? init_source(rc, data.tokenizer, stage) : std::nullopt;
    if (!init || stage_is_done(init->stage_dir, init->fingerprint)) return {};
    jobs.push_back({rc.seed_index, stage, {}, init->stage_dir, pretrain_config_file(c), /*pretraining=*/true});
    return {jobs.size() - 1};
  };
  for (int64_t i = 0; i < c.seeds; ++i) {
    const RunConfig rc = replica_config(c, i);
    const bool own_teacher = trains_own_teacher(c, i);
    if (own_teacher) {
      teacher_job[static_cast<size_t>(i)] = add(rc, "teacher", teacher_fingerprint(rc, data), pretraining(rc, "teacher"));
    }
    if (baseline_trained_here(c)) add(rc, "baseline", baseline_fingerprint(rc, data, steps), pretraining(rc, "baseline"));
    // A student can only be finished if its teacher is (its fingerprint names the teacher).
    const auto& waits = teacher_job[static_cast<size_t>(own_teacher ? i : 0)];
    if (waits) {
      jobs.push_back({i, "student", {*waits}, stage_dir(rc, "student", {}), ""});
    } else {
      const StageResult teacher = find_teacher(own_teacher ? rc : replica_config(c, 0), data);
      add(rc, "student", student_fingerprint(rc, data, teacher));
    }
  }
  return jobs;
}

StageResult run_stage(const RunConfig& c, const PreparedData& data, int64_t i, const std::string& stage, bool resume) {
  const RunConfig rc = replica_config(c, i);
  if (stage == "teacher") return train_teacher(rc, data, resume);
  if (stage == "baseline") return train_baseline(rc, data, resume);
  if (stage == "dense") return train_dense_counterpart(rc, data, resume);
  if (stage == "student") {
    return distill_student(rc, data, find_teacher(trains_own_teacher(c, i) ? rc : replica_config(c, 0), data), resume);
  }
  throw Error("unknown stage \"" + stage + "\" (expected teacher, baseline, student or dense)");
}

}  // namespace distill
