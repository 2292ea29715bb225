#include "distill/experiment.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <filesystem>

#include "distill/report.h"
#include "distill/student_init.h"
#include "distill/trainer.h"
#include "models/atomic_file.h"
#include "models/checkpoint.h"
#include "models/hf_config.h"
#include "models/safetensors.h"
#include "models/errors.h"

namespace distill {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

CorpusOptions corpus_options(const CorpusConfig& c) {
  CorpusOptions o;
  o.files = c.files;
  o.format = parse_corpus_format(c.format);
  o.text_field = c.text_field;
  o.input_field = c.input_field;
  o.target_field = c.target_field;
  o.blank_line_documents = c.blank_line_documents;
  return o;
}

ObjectiveOptions run_objective_options(const RunConfig& c, const Tokenizer& t) {
  ObjectiveOptions o = objective_options(t, c.data.input_length, c.data.target_length);
  o.noise_density = c.data.noise_density;
  o.mean_span_length = c.data.mean_span_length;
  return o;
}

std::string stage_dir(const RunConfig& c, const std::string& stage) { return (fs::path(c.output_dir) / stage).string(); }

bool stage_done(const std::string& dir) {
  return fs::exists(fs::path(dir) / "DONE.json") && fs::exists(fs::path(dir) / "model" / "config.json");
}

double stage_seconds(const std::string& dir) {
  try {
    return json::parse(read_text_file((fs::path(dir) / "DONE.json").string())).value("seconds", 0.0);
  } catch (const std::exception&) {
    return 0.0;
  }
}

}  // namespace

void open_run_directory(const RunConfig& config) {
  fs::create_directories(config.output_dir);
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>((fs::path(config.output_dir) / "distill.log").string());
  auto logger = std::make_shared<spdlog::logger>("distill", spdlog::sinks_init_list{console, file});
  logger->set_pattern("%H:%M:%S %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::flush_every(std::chrono::seconds(2));
  write_text_atomic((fs::path(config.output_dir) / "config.yaml").string(), run_config_yaml(config));
}

Tokenizer resolve_tokenizer(const RunConfig& c) {
  if (!c.data.tokenizer.path.empty()) return Tokenizer::load(c.data.tokenizer.path);
  if (!c.teacher.path.empty()) {
    if (fs::exists(fs::path(c.teacher.path) / "spiece.model")) return Tokenizer::load(c.teacher.path);
    throw ConfigError("teacher " + c.teacher.path + " has no spiece.model: set data.tokenizer.path to its tokenizer");
  }
  const std::string dir = (fs::path(c.output_dir) / "tokenizer").string();
  if (!fs::exists(fs::path(dir) / "spiece.model")) {
    spdlog::info("training a {}-id SentencePiece tokenizer on {} file(s) into {}", c.data.tokenizer.vocab_size,
                 c.data.train.files.size(), dir);
    TokenizerTrainOptions o;
    o.inputs = c.data.train.files;
    o.vocab_size = c.data.tokenizer.vocab_size;
    o.num_sentinels = c.data.tokenizer.sentinels;
    o.max_sentences = c.data.tokenizer.max_sentences;
    o.threads = c.threads > 0 ? c.threads : 2;
    o.output_dir = dir;
    train_tokenizer(o);
  }
  return Tokenizer::load(dir);
}

PreparedData prepare_data(const RunConfig& c, Tokenizer tokenizer) {
  PreparedData d{std::move(tokenizer), nullptr, {}, {}, 0, 0, 0, {}};
  const auto& t = d.tokenizer;
  for (const char* f : {"spiece.model", "tokenizer_config.json"}) {
    auto p = fs::path(t.model_file()).parent_path() / f;
    if (fs::exists(p)) d.tokenizer_files.push_back(p.string());
  }
  const bool split = c.data.validation.files.empty();
  auto train = tokenize_corpus(corpus_options(c.data.train), t, split ? c.data.validation_fraction : 0.0, c.seed, 2);
  d.stats = train.stats;
  std::vector<TokenizedDoc> validation = std::move(train.validation);
  if (!split) validation = tokenize_corpus(corpus_options(c.data.validation), t).train;
  if (validation.empty()) throw InputError("the validation split is empty: raise data.validation_fraction or give data.validation.files");
  d.train_documents = static_cast<int64_t>(train.train.size());
  d.validation_documents = static_cast<int64_t>(validation.size());
  d.train_tokens = train.tokens;

  auto objective = std::shared_ptr<const Objective>(make_objective(c.data.objective, run_objective_options(c, t)));
  BatchingOptions b;
  b.batch_size = c.data.batch_size;
  b.max_batch_tokens = c.data.max_batch_tokens;
  b.pack = c.data.pack;
  b.static_examples = c.data.static_examples;
  b.seed = c.seed;
  b.pad_id = t.pad_id();
  b.decoder_start_id = t.pad_id();
  d.train = std::make_shared<Dataset>(std::move(train.train), objective, b);

  // Evaluation: one fixed epoch of the validation documents, in order, the same for every model.
  BatchingOptions eb = b;
  eb.shuffle = false;
  eb.seed = c.seed + 1;
  Dataset eval(std::move(validation), objective, eb);
  auto epoch = eval.make_epoch(0);
  const size_t n = c.data.eval_batches > 0 ? std::min<size_t>(epoch.batches.size(), static_cast<size_t>(c.data.eval_batches))
                                           : epoch.batches.size();
  for (size_t i = 0; i < n; ++i) d.eval.push_back(eval.collate_batch(epoch, i));
  spdlog::info("data: {} training documents ({} tokens, {} lines not UTF-8 skipped), {} validation documents, {} eval batches",
               d.train_documents, d.train_tokens, d.stats.skipped_invalid_utf8, d.validation_documents, d.eval.size());
  return d;
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
    m.encoder_sparse_step = m.decoder_sparse_step = a.sparse_step;
    m.capacity_mode = a.capacity_mode == "fixed" ? CapacityMode::kFixed : CapacityMode::kFactor;
    m.expert_capacity = a.expert_capacity;
    m.capacity_factor_train = a.capacity_factor_train;
    m.capacity_factor_eval = a.capacity_factor_eval;
    m.router_top_k = a.router_top_k;
    m.router_jitter_noise = a.router_jitter_noise;
    m.router_z_loss_coef = a.router_z_loss_coef;
    m.router_aux_loss_coef = a.router_aux_loss_coef;
    m.expert_dropout_rate = t.expert_dropout;
  }
  m.validate("teacher.model");
  return m;
}

StageResult train_from_scratch(const RunConfig& c, const PreparedData& data, bool dense, bool resume) {
  StageResult r{dense ? "baseline" : "teacher", "", false, 0};
  const std::string dir = stage_dir(c, r.name);
  r.model_dir = (fs::path(dir) / "model").string();
  if (stage_done(dir)) {
    spdlog::info("[{}] finished earlier: reusing {}", r.name, r.model_dir);
    r.reused = true;
    r.seconds = stage_seconds(dir);
    return r;
  }
  // The baseline has the student's shape: the teacher's, dense, at the student's FFN width.
  ModelConfig config = teacher_model_config(c, data.tokenizer.vocab_size(), dense);
  TrainingConfig training = c.training;
  if (!dense && c.teacher.steps) training.steps = *c.teacher.steps;
  if (dense) config = student_config(config, c.student.d_ff, c.training.dropout);
  torch::manual_seed(c.seed + (dense ? 2 : 1));
  Seq2SeqModel model(config);
  init_from_scratch(model, training.init_scale);
  spdlog::info("[{}] training a {} model from scratch for {} steps", r.name, config.model_type, training.steps);
  TrainerOptions o{r.name, dir, training, c.seed, resume, data.tokenizer_files};
  Trainer trainer(model, data.train, &data.eval, o);
  auto result = trainer.run();
  r.seconds = result.seconds;
  return r;
}

Seq2SeqModel load_teacher(const RunConfig& c, const Tokenizer& tokenizer, std::string* dir_out) {
  const std::string dir = !c.teacher.path.empty() ? c.teacher.path : (fs::path(stage_dir(c, "teacher")) / "model").string();
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
  if (c.teacher.bf16) set_model_dtype(teacher, torch::kBFloat16);
  teacher->eval();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  if (dir_out) *dir_out = dir;
  return teacher;
}

StageResult distill_student(const RunConfig& c, const PreparedData& data, bool resume) {
  StageResult r{"student", "", false, 0};
  const std::string dir = stage_dir(c, r.name);
  r.model_dir = (fs::path(dir) / "model").string();
  if (stage_done(dir)) {
    spdlog::info("[student] finished earlier: reusing {}", r.model_dir);
    r.reused = true;
    r.seconds = stage_seconds(dir);
    return r;
  }
  std::string teacher_dir;
  auto teacher = load_teacher(c, data.tokenizer, &teacher_dir);
  ModelConfig sc = student_config(teacher->config(), c.student.d_ff, c.training.dropout);
  torch::manual_seed(c.seed + 3);
  Seq2SeqModel student(sc);
  init_from_scratch(student, c.training.init_scale);
  const FfnInit mode = parse_ffn_init(c.student.init);
  std::map<std::string, at::Tensor> frequency;
  if (mode == FfnInit::kRouterWeighted || mode == FfnInit::kTopExpert) {
    auto epoch = data.train->make_epoch(0);
    std::vector<Batch> calibration;
    for (size_t i = 0; i < epoch.batches.size() && static_cast<int64_t>(i) < c.student.calibration_batches; ++i)
      calibration.push_back(data.train->collate_batch(epoch, i));
    frequency = routing_frequency(teacher, calibration);
  }
  auto init = init_student(student, teacher, mode, c.student.copy_non_expert, frequency);
  spdlog::info("[student] from teacher {}: {} tensors copied, {} built from experts ({}), {} fresh", teacher_dir,
               init.copied.size(), init.from_experts.size(), c.student.init, init.fresh.size());
  TeacherSignal signal{teacher, {c.distillation.hard_weight, c.distillation.soft_weight, c.distillation.temperature,
                                 c.distillation.soft_loss == "kl"},
                        c.distillation.teacher_cache ? c.distillation.teacher_cache_top_k : 0};
  TrainerOptions o{"student", dir, c.training, c.seed, resume, data.tokenizer_files};
  Trainer trainer(student, data.train, &data.eval, o, signal);
  r.seconds = trainer.run().seconds;
  return r;
}

json run_experiment(const RunConfig& c, bool resume) {
  auto tokenizer = resolve_tokenizer(c);
  auto data = prepare_data(c, tokenizer);
  StageResult teacher_stage{"teacher", c.teacher.path, true, 0};
  if (c.teacher.path.empty()) teacher_stage = train_from_scratch(c, data, /*dense=*/false, resume);
  auto baseline_stage = train_from_scratch(c, data, /*dense=*/true, resume);
  auto student_stage = distill_student(c, data, resume);

  spdlog::info("evaluating teacher, baseline and student on {} held-out batches", data.eval.size());
  auto teacher = load_teacher(c, data.tokenizer);
  auto baseline = load_model(baseline_stage.model_dir);
  auto student = load_model(student_stage.model_dir);
  ReportInputs in;
  in.teacher = teacher->config();
  in.student = student->config();
  in.teacher_eval = evaluate(teacher, data.eval);
  in.baseline_eval = evaluate(baseline, data.eval);
  in.student_eval = evaluate(student, data.eval);
  in.src_len = c.data.input_length;
  in.tgt_len = c.data.target_length;
  in.config = c;
  in.teacher_seconds = teacher_stage.seconds;
  in.baseline_seconds = baseline_stage.seconds;
  in.student_seconds = student_stage.seconds;
  auto report = build_report(in);
  write_text_atomic((fs::path(c.output_dir) / "report.json").string(), report.dump(2) + "\n");
  write_text_atomic((fs::path(c.output_dir) / "report.md").string(), report_markdown(report));
  return report;
}

}  // namespace distill
