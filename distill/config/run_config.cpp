#include "distill/config/run_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "distill/config/hidden_layer_map.h"
#include "models/io/atomic_file.h"
#include "models/errors.h"
#include "models/kernels/native_bf16.h"

namespace distill {

namespace fs = std::filesystem;

// ---- the one list of fields ----------------------------------------------------------------

template <class V>
void visit(V& v, CorpusConfig& c) {
  v.field("files", c.files);
  v.field("format", c.format);
  v.field("text_field", c.text_field);
  v.field("input_field", c.input_field);
  v.field("target_field", c.target_field);
  v.field("blank_line_documents", c.blank_line_documents);
}

template <class V>
void visit(V& v, TokenizerConfig& c) {
  v.field("path", c.path);
  v.field("vocab_size", c.vocab_size);
  v.field("sentinels", c.sentinels);
  v.field("max_sentences", c.max_sentences);
}

template <class V>
void visit(V& v, DataConfig& c) {
  v.section("tokenizer", c.tokenizer);
  v.section("train", c.train);
  v.section("validation", c.validation);
  v.field("validation_fraction", c.validation_fraction);
  v.field("objective", c.objective);
  v.field("noise_density", c.noise_density);
  v.field("mean_span_length", c.mean_span_length);
  v.field("input_length", c.input_length);
  v.field("target_length", c.target_length);
  v.field("batch_size", c.batch_size);
  v.field("max_batch_tokens", c.max_batch_tokens);
  v.field("pack", c.pack);
  v.field("static_examples", c.static_examples);
  v.field("eval_batches", c.eval_batches);
  v.field("seed", c.seed);
}

template <class V>
void visit(V& v, ArchConfig& c) {
  v.field("d_model", c.d_model);
  v.field("d_ff", c.d_ff);
  v.field("d_kv", c.d_kv);
  v.field("num_heads", c.num_heads);
  v.field("num_layers", c.num_layers);
  v.field("num_decoder_layers", c.num_decoder_layers);
  v.field("feed_forward_proj", c.feed_forward_proj);
  v.field("tie_word_embeddings", c.tie_word_embeddings);
  v.field("relative_attention_num_buckets", c.relative_attention_num_buckets);
  v.field("relative_attention_max_distance", c.relative_attention_max_distance);
  v.field("num_experts", c.num_experts);
  v.field("sparse_step", c.sparse_step);
  v.field("encoder_sparse_step", c.encoder_sparse_step);
  v.field("decoder_sparse_step", c.decoder_sparse_step);
  v.field("capacity_mode", c.capacity_mode);
  v.field("expert_capacity", c.expert_capacity);
  v.field("capacity_factor_train", c.capacity_factor_train);
  v.field("capacity_factor_eval", c.capacity_factor_eval);
  v.field("router_top_k", c.router_top_k);
  v.field("router_loss", c.router_loss);
  v.field("router_jitter_noise", c.router_jitter_noise);
  v.field("router_z_loss_coef", c.router_z_loss_coef);
  v.field("router_aux_loss_coef", c.router_aux_loss_coef);
  v.field("router_ignore_padding", c.router_ignore_padding);
}

template <class V>
void visit(V& v, OptimizerConfig& c) {
  v.field("name", c.name);
  v.field("lr", c.lr);
  v.field("beta1", c.beta1);
  v.field("beta2", c.beta2);
  v.field("eps", c.eps);
  v.field("weight_decay", c.weight_decay);
  v.field("adafactor_decay_rate", c.adafactor_decay_rate);
  v.field("adafactor_clip_threshold", c.adafactor_clip_threshold);
}

template <class V>
void visit(V& v, ScheduleConfig& c) {
  v.field("name", c.name);
  v.field("warmup_steps", c.warmup_steps);
  v.field("min_lr_ratio", c.min_lr_ratio);
}

template <class V>
void visit(V& v, TrainingConfig& c) {
  v.field("steps", c.steps);
  v.field("grad_accumulation", c.grad_accumulation);
  v.field("grad_clip", c.grad_clip);
  v.field("dropout", c.dropout);
  v.field("expert_dropout", c.expert_dropout);
  v.bf16_field("bf16", c.bf16, /*absent=*/"auto");
  v.field("init_scale", c.init_scale);
  v.field("expert_grad_scaling", c.expert_grad_scaling);
  v.section("optimizer", c.optimizer);
  v.section("schedule", c.schedule);
  v.field("log_interval", c.log_interval);
  v.field("eval_interval", c.eval_interval);
  v.field("checkpoint_interval", c.checkpoint_interval);
  v.field("keep_checkpoints", c.keep_checkpoints);
}

template <class V>
void visit(V& v, PretrainConfig& c) {
  v.field("steps", c.steps);
  v.section("data", c.data);
}

template <class V>
void visit(V& v, TaskConfig& c) {
  v.section("test", c.test);
  v.field("max_examples", c.max_examples);
  v.field("max_new_tokens", c.max_new_tokens);
  v.field("batch_size", c.batch_size);
  v.field("classification", c.classification);
  v.field("bootstrap_resamples", c.bootstrap_resamples);
}

template <class V>
void visit(V& v, TeacherConfig& c) {
  v.field("path", c.path);
  v.field("init_from", c.init_from);
  v.section("model", c.model);
  v.field("steps", c.steps);
  v.bf16_field("bf16", c.bf16, /*absent=*/"auto");
  v.bf16_field("train_bf16", c.train_bf16, /*absent=*/"auto");
  v.field("trained_tokens", c.trained_tokens);
  v.field("train_once", c.train_once);
}

template <class V>
void visit(V& v, BaselineConfig& c) {
  v.field("steps", c.steps);
  v.field("path", c.path);
  v.field("continue_steps", c.continue_steps);
  v.field("trained_tokens", c.trained_tokens);
  v.field("init_from", c.init_from);
}

template <class V>
void visit(V& v, StudentConfig& c) {
  v.field("init", c.init);
  v.field("copy_non_expert", c.copy_non_expert);
  v.field("calibration_batches", c.calibration_batches);
  v.field("d_ff", c.d_ff);
  v.field("top_k", c.top_k);
  v.field("weighting", c.weighting);
  v.field("schedule", c.schedule);
}

template <class V>
void visit(V& v, DistillationConfig& c) {
  v.field("hard_weight", c.hard_weight);
  v.field("soft_weight", c.soft_weight);
  v.field("temperature", c.temperature);
  v.field("soft_loss", c.soft_loss);
  v.field("jsd_beta", c.jsd_beta);
  v.field("hidden_weight", c.hidden_weight);
  v.field("hidden_loss", c.hidden_loss);
  v.field("hidden_layers", c.hidden_layers);
  v.field("teacher_capacity_factor", c.teacher_capacity_factor);
  v.field("teacher_cache", c.teacher_cache);
  v.field("teacher_cache_top_k", c.teacher_cache_top_k);
  v.field("teacher_cache_disk", c.teacher_cache_disk);
}

template <class V>
void visit(V& v, RunConfig& c) {
  v.field("output_dir", c.output_dir);
  v.field("seed", c.seed);
  v.field("seeds", c.seeds);
  v.field("threads", c.threads);
  v.field("parallel_stages", c.parallel_stages);
  v.field("stages_dir", c.stages_dir);
  v.section("data", c.data);
  v.section("pretrain", c.pretrain);
  v.section("task", c.task);
  v.section("teacher", c.teacher);
  v.section("baseline", c.baseline);
  v.section("student", c.student);
  v.section("distillation", c.distillation);
  v.section("training", c.training);
}

std::string closest_key(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  size_t best_d = 4;
  for (const auto& k : known) {
    if (const size_t d = edit_distance(key, k); d < best_d) {
      best_d = d;
      best = k;
    }
  }
  return best;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1] ? 1 : 0)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {

// ---- reading -------------------------------------------------------------------------------

struct ReadContext {
  std::string file;
  std::set<std::string> overridden;          // dotted paths set with --set
  std::map<std::string, std::string> where;  // dotted path -> "file:line"
  std::vector<std::string> errors;
  bool native_bf16 = false;                  // what a bf16 key left at auto becomes
  std::vector<std::string> automatic;        // the bf16 keys left at auto

  std::string locate(const std::string& path, const YAML::Node& node) {
    if (overridden.count(path)) return "--set " + path;
    const auto m = node.Mark();
    return m.line >= 0 ? file + ":" + std::to_string(m.line + 1) : file;
  }
};

template <class T> const char* type_name();
template <> const char* type_name<std::string>() { return "a string"; }
template <> const char* type_name<bool>() { return "true or false"; }
template <> const char* type_name<int64_t>() { return "an integer"; }
template <> const char* type_name<uint64_t>() { return "a non-negative integer"; }
template <> const char* type_name<int>() { return "an integer"; }
template <> const char* type_name<double>() { return "a finite number"; }

class Reader {
 public:
  Reader(const YAML::Node& node, std::string prefix, ReadContext& ctx) : node_(node), prefix_(std::move(prefix)), ctx_(ctx) {}

  template <class T>
  void field(const char* key, T& value) {
    known_.push_back(key);
    const YAML::Node n = child(key);
    if (!n) return;
    const std::string path = prefix_ + key;
    ctx_.where[path] = ctx_.locate(path, n);
    read_value(n, path, value);
  }

  // A bf16 switch: true, false or auto (whether this CPU multiplies bf16 natively, decided here
  // so the resolved config.yaml states what ran); `absent` is what a missing key means.
  void bf16_field(const char* key, bool& value, const char* absent) {
    known_.push_back(key);
    const YAML::Node n = child(key);
    const std::string path = prefix_ + key;
    if (n) ctx_.where[path] = ctx_.locate(path, n);
    const std::string text = !n ? absent : n.IsScalar() ? n.Scalar() : "";
    if (text == "auto") {
      value = ctx_.native_bf16;
      ctx_.automatic.push_back(path);
      return;
    }
    if (!n) {
      value = text == "true";
      return;
    }
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, value)) {
      const std::string got = n.IsScalar() ? ", got \"" + n.Scalar() + "\"" : "";
      ctx_.errors.push_back(ctx_.locate(path, n) + ": " + path + " must be true, false or auto" + got);
    }
  }

  template <class T>
  void section(const char* key, T& value) {
    known_.push_back(key);
    const YAML::Node n = child(key);
    const std::string path = prefix_ + key;
    if (!n || n.IsNull()) {  // every key at its default
      Reader defaults(YAML::Node(YAML::NodeType::Map), path + ".", ctx_);
      visit(defaults, value);
      return;
    }
    ctx_.where[path] = ctx_.locate(path, n);
    if (!n.IsMap()) {
      ctx_.errors.push_back(ctx_.where[path] + ": " + path + " must be a mapping of keys");
      return;
    }
    Reader sub(n, path + ".", ctx_);
    visit(sub, value);
    sub.finish();
  }

  // Every key the visitor did not ask for is an error, with the closest known key; so is a key
  // given twice (YAML would silently keep one of them).
  void finish() {
    std::map<std::string, std::string> seen;  // key -> file:line of its first occurrence
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.as<std::string>("");
      const auto mark = it->first.Mark();
      const std::string at = mark.line >= 0 ? ctx_.file + ":" + std::to_string(mark.line + 1) : ctx_.file;
      const auto [first, fresh] = seen.emplace(key, at);
      if (!fresh) {
        ctx_.errors.push_back(at + ": duplicate key \"" + prefix_ + key + "\" (first at " + first->second +
                              "); a key may be given once");
        continue;
      }
      if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
      const std::string best = closest_key(key, known_);
      std::string msg = ctx_.locate(prefix_ + key, it->first) + ": unknown key \"" + prefix_ + key + "\"";
      if (!best.empty()) msg += " (did you mean \"" + prefix_ + best + "\"?)";
      ctx_.errors.push_back(msg);
    }
  }

 private:
  template <class T> struct is_optional : std::false_type {};
  template <class T> struct is_optional<std::optional<T>> : std::true_type {};

  YAML::Node child(const char* key) const {
    for (auto it = node_.begin(); it != node_.end(); ++it)
      if (it->first.as<std::string>("") == key) return it->second;
    return YAML::Node(YAML::NodeType::Undefined);
  }

  template <class T>
  void read_value(const YAML::Node& n, const std::string& path, T& value) {
    if constexpr (is_optional<T>::value) {
      if (n.IsNull()) {
        value.reset();
        return;
      }
      typename T::value_type inner{};
      if (read_scalar(n, path, inner)) value = inner;
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      value.clear();
      if (n.IsScalar()) {
        value.push_back(n.as<std::string>());
      } else if (n.IsSequence()) {
        for (const auto& e : n) {
          std::string s;
          if (read_scalar(e, path, s)) value.push_back(s);
        }
      } else if (!n.IsNull()) {
        ctx_.errors.push_back(ctx_.where[path] + ": " + path + " must be a list of strings");
      }
    } else {
      read_scalar(n, path, value);
    }
  }

  template <class T>
  bool read_scalar(const YAML::Node& n, const std::string& path, T& value) {
    bool ok = n.IsScalar();
    if (ok) {
      try {
        if constexpr (std::is_same_v<T, uint64_t>) {
          ok = n.Scalar().find('-') == std::string::npos;
        }
        if (ok) value = n.as<T>();
        if constexpr (std::is_same_v<T, double>) ok = ok && std::isfinite(value);
      } catch (const YAML::Exception&) {
        ok = false;
      }
    }
    if (!ok) {
      std::string got = n.IsScalar() ? "\"" + n.Scalar() + "\"" : n.IsSequence() ? "a list" : n.IsMap() ? "a mapping" : "nothing";
      ctx_.errors.push_back(ctx_.locate(path, n) + ": " + path + " must be " + type_name<T>() + ", got " + got);
    }
    return ok;
  }

  YAML::Node node_;
  std::string prefix_;
  ReadContext& ctx_;
  std::vector<std::string> known_;
};

// ---- writing -------------------------------------------------------------------------------

class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}

  template <class T>
  void field(const char* key, const T& value) {
    out_ << YAML::Key << key << YAML::Value;
    if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      out_ << YAML::Flow << YAML::BeginSeq;
      for (const auto& s : value) out_ << s;
      out_ << YAML::EndSeq;
    } else if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
      if (value) out_ << *value; else out_ << YAML::Null;
    } else {
      out_ << value;
    }
  }

  void bf16_field(const char* key, bool value, const char*) { field(key, value); }

  template <class T>
  void section(const char* key, T& value) {
    out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
    visit(*this, value);
    out_ << YAML::EndMap;
  }

 private:
  YAML::Emitter& out_;
};

class JsonWriter {
 public:
  explicit JsonWriter(nlohmann::json& out) : out_(out) {}

  template <class T>
  void field(const char* key, const T& value) {
    if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
      out_[key] = value ? nlohmann::json(*value) : nlohmann::json(nullptr);
    } else {
      out_[key] = value;
    }
  }

  void bf16_field(const char* key, bool value, const char*) { field(key, value); }

  template <class T>
  void section(const char* key, T& value) {
    nlohmann::json sub = nlohmann::json::object();
    JsonWriter w(sub);
    visit(w, value);
    out_[key] = sub;
  }

 private:
  nlohmann::json& out_;
};

// ---- validation ----------------------------------------------------------------------------

class Checker {
 public:
  explicit Checker(ReadContext& ctx) : ctx_(ctx) {}
  void need(bool ok, const std::string& path, const std::string& what) {
    if (ok) return;
    auto it = ctx_.where.find(path);
    const std::string at = it != ctx_.where.end() ? it->second : ctx_.file + " (default)";
    ctx_.errors.push_back(at + ": " + path + " " + what);
  }
  // A key naming a file or directory that must exist. Never throws: a name too long for the file
  // system or a directory without permission is reported like a missing file, with the reason.
  void existing(const fs::path& file, const std::string& path, const std::string& shown) {
    std::error_code ec;
    if (fs::exists(file, ec)) return;
    const bool missing = !ec || ec == std::errc::no_such_file_or_directory;
    need(false, path, "names " + shown + ", which " + (missing ? "does not exist" : "cannot be read (" + ec.message() + ")"));
  }
  // A key naming a model directory (config.json in it), when it is set.
  void model_dir(const std::string& dir, const std::string& path) {
    if (dir.empty()) return;
    std::error_code ec;
    const bool found = fs::exists(fs::path(dir) / "config.json", ec);  // before ec is read below
    need(found, path,
         "names " + dir + ", which is not a model directory (no config.json" + (ec ? ": " + ec.message() : "") + ")");
  }
  void one_of(const std::string& value, const std::string& path, std::initializer_list<const char*> options) {
    std::string list;
    bool ok = false;
    for (const char* o : options) {
      ok |= value == o;
      list += (list.empty() ? "" : ", ") + std::string(o);
    }
    need(ok, path, "must be one of " + list + ", got \"" + value + "\"");
  }

 private:
  ReadContext& ctx_;
};

void check_training(Checker& c, const TrainingConfig& t, const std::string& p) {
  c.need(t.steps >= 1, p + ".steps", "must be >= 1");
  c.need(t.grad_accumulation >= 1, p + ".grad_accumulation", "must be >= 1");
  c.need(t.grad_clip >= 0, p + ".grad_clip", "must be >= 0 (0 turns clipping off)");
  c.need(t.dropout >= 0 && t.dropout < 1, p + ".dropout", "must be in [0, 1)");
  c.need(t.expert_dropout >= 0 && t.expert_dropout < 1, p + ".expert_dropout", "must be in [0, 1)");
  c.need(t.init_scale > 0, p + ".init_scale", "must be > 0");
  c.one_of(t.optimizer.name, p + ".optimizer.name", {"adamw", "adafactor"});
  c.need(t.optimizer.lr > 0, p + ".optimizer.lr", "must be > 0");
  c.need(t.optimizer.beta1 >= 0 && t.optimizer.beta1 < 1, p + ".optimizer.beta1", "must be in [0, 1)");
  c.need(t.optimizer.beta2 >= 0 && t.optimizer.beta2 < 1, p + ".optimizer.beta2", "must be in [0, 1)");
  c.need(t.optimizer.eps > 0, p + ".optimizer.eps", "must be > 0");
  c.need(t.optimizer.weight_decay >= 0, p + ".optimizer.weight_decay", "must be >= 0");
  c.need(t.optimizer.adafactor_decay_rate > 0 && t.optimizer.adafactor_decay_rate <= 1, p + ".optimizer.adafactor_decay_rate", "must be in (0, 1]");
  c.need(t.optimizer.adafactor_clip_threshold > 0, p + ".optimizer.adafactor_clip_threshold", "must be > 0");
  c.one_of(t.schedule.name, p + ".schedule.name", {"constant", "linear_warmup", "inverse_sqrt", "cosine"});
  c.need(t.schedule.warmup_steps >= 0, p + ".schedule.warmup_steps", "must be >= 0");
  c.need(t.schedule.min_lr_ratio >= 0 && t.schedule.min_lr_ratio <= 1, p + ".schedule.min_lr_ratio", "must be in [0, 1]");
  c.need(t.log_interval >= 1, p + ".log_interval", "must be >= 1");
  c.need(t.eval_interval >= 0, p + ".eval_interval", "must be >= 0");
  c.need(t.checkpoint_interval >= 0, p + ".checkpoint_interval", "must be >= 0");
  c.need(t.keep_checkpoints >= 1, p + ".keep_checkpoints", "must be >= 1");
}

void check_corpus(Checker& c, const CorpusConfig& k, const std::string& p, bool required) {
  if (required) c.need(!k.files.empty(), p + ".files", "must list at least one file");
  c.one_of(k.format, p + ".format", {"text", "jsonl", "tsv", "jsonl_pairs"});
  for (const auto& f : k.files) c.existing(f, p + ".files", f);
}

void check_data(Checker& c, const DataConfig& d, const std::string& p) {
  check_corpus(c, d.train, p + ".train", true);
  check_corpus(c, d.validation, p + ".validation", false);
  c.need(d.validation_fraction >= 0 && d.validation_fraction < 1, p + ".validation_fraction", "must be in [0, 1)");
  c.need(!d.validation.files.empty() || d.validation_fraction > 0, p + ".validation_fraction",
         "must be > 0 when " + p + ".validation has no files (the evaluation needs held-out data)");
  c.one_of(d.objective, p + ".objective", {"span_corruption", "seq2seq", "prefix_lm"});
  c.need(d.noise_density > 0 && d.noise_density < 1, p + ".noise_density", "must be in (0, 1)");
  c.need(d.mean_span_length >= 1, p + ".mean_span_length", "must be >= 1");
  c.need(d.input_length >= 4, p + ".input_length", "must be >= 4");
  c.need(d.target_length >= 2, p + ".target_length", "must be >= 2");
  c.need(d.batch_size >= 1, p + ".batch_size", "must be >= 1");
  c.need(d.max_batch_tokens >= 0, p + ".max_batch_tokens", "must be >= 0");
  c.need(d.eval_batches >= 0, p + ".eval_batches", "must be >= 0 (0 = all)");
  if (d.seed) c.need(*d.seed >= 0, p + ".seed", "must be >= 0");
  if (!d.tokenizer.path.empty()) {
    c.existing(d.tokenizer.path, p + ".tokenizer.path", d.tokenizer.path);
  }
  c.need(d.tokenizer.sentinels >= 0, p + ".tokenizer.sentinels", "must be >= 0");
  c.need(d.tokenizer.vocab_size >= d.tokenizer.sentinels + 16, p + ".tokenizer.vocab_size", "must be at least sentinels + 16");
  c.need(d.tokenizer.max_sentences >= 1, p + ".tokenizer.max_sentences", "must be >= 1");
}

void check(ReadContext& ctx, const RunConfig& r) {
  Checker c(ctx);
  c.need(!r.output_dir.empty(), "output_dir", "must not be empty");
  c.need(r.threads >= 0, "threads", "must be >= 0 (0 = cores available)");
  c.need(r.seeds >= 1 && r.seeds <= 100, "seeds", "must be in [1, 100]");
  c.need(r.parallel_stages >= 0 && r.parallel_stages <= 64, "parallel_stages", "must be in [0, 64] (0 = one per thread)");
  check_data(c, r.data, "data");
  if (r.pretrain.steps > 0) {
    check_data(c, r.pretrain.data, "pretrain.data");
    c.need(r.teacher.path.empty() && r.teacher.init_from.empty(), "pretrain.steps",
           "pre-trains the teacher here: unset teacher.path and teacher.init_from");
    c.need(r.baseline.path.empty() && r.baseline.init_from.empty(), "pretrain.steps",
           "pre-trains the baseline here: unset baseline.path and baseline.init_from");
  }
  c.need(r.pretrain.steps >= 0, "pretrain.steps", "must be >= 0 (0 = no pre-training)");
  const auto& k = r.task;
  check_corpus(c, k.test, "task.test", false);
  if (!k.test.files.empty()) c.one_of(k.test.format, "task.test.format", {"tsv", "jsonl_pairs"});
  c.need(k.max_examples >= 0, "task.max_examples", "must be >= 0 (0 = all)");
  c.need(k.max_new_tokens >= 1 && k.max_new_tokens <= 4096, "task.max_new_tokens", "must be in [1, 4096]");
  c.need(k.batch_size >= 1 && k.batch_size <= 8192, "task.batch_size", "must be in [1, 8192]");
  c.need(k.bootstrap_resamples >= 0 && k.bootstrap_resamples <= 100000, "task.bootstrap_resamples", "must be in [0, 100000]");
  c.model_dir(r.teacher.init_from, "teacher.init_from");
  c.model_dir(r.baseline.init_from, "baseline.init_from");
  if (!r.teacher.init_from.empty()) c.need(r.teacher.path.empty(), "teacher.init_from", "and teacher.path exclude each other");
  if (!r.baseline.init_from.empty()) c.need(r.baseline.path.empty(), "baseline.init_from", "and baseline.path exclude each other");

  const auto& t = r.teacher;
  c.model_dir(t.path, "teacher.path");
  const auto& a = t.model;
  for (auto [name, v] : {std::pair<const char*, int64_t>{"d_model", a.d_model}, {"d_ff", a.d_ff}, {"d_kv", a.d_kv},
                         {"num_heads", a.num_heads}, {"num_layers", a.num_layers},
                         {"num_decoder_layers", a.num_decoder_layers}, {"relative_attention_num_buckets", a.relative_attention_num_buckets},
                         {"relative_attention_max_distance", a.relative_attention_max_distance}, {"expert_capacity", a.expert_capacity}}) {
    c.need(v >= 1, std::string("teacher.model.") + name, "must be >= 1");
  }
  c.one_of(a.feed_forward_proj, "teacher.model.feed_forward_proj", {"relu", "gated-gelu"});
  c.one_of(a.capacity_mode, "teacher.model.capacity_mode", {"factor", "fixed"});
  c.one_of(a.router_loss, "teacher.model.router_loss", {"paper", "hf"});
  c.need(a.num_experts >= 0, "teacher.model.num_experts", "must be >= 0 (0 = dense)");
  c.need(a.sparse_step >= 0, "teacher.model.sparse_step", "must be >= 0");
  if (a.encoder_sparse_step) c.need(*a.encoder_sparse_step >= 0, "teacher.model.encoder_sparse_step", "must be >= 0 (0 = dense encoder)");
  if (a.decoder_sparse_step) c.need(*a.decoder_sparse_step >= 0, "teacher.model.decoder_sparse_step", "must be >= 0 (0 = dense decoder)");
  c.need(a.router_top_k >= 1 && a.router_top_k <= std::max<int64_t>(1, a.num_experts), "teacher.model.router_top_k", "must be in [1, num_experts]");
  c.need(a.capacity_factor_train > 0, "teacher.model.capacity_factor_train", "must be > 0");
  c.need(a.capacity_factor_eval > 0, "teacher.model.capacity_factor_eval", "must be > 0");
  c.need(a.router_jitter_noise >= 0 && a.router_jitter_noise < 1, "teacher.model.router_jitter_noise", "must be in [0, 1)");
  c.need(a.router_z_loss_coef >= 0, "teacher.model.router_z_loss_coef", "must be >= 0");
  c.need(a.router_aux_loss_coef >= 0, "teacher.model.router_aux_loss_coef", "must be >= 0");
  if (t.steps) c.need(*t.steps >= 1, "teacher.steps", "must be >= 1");
  if (t.trained_tokens) {
    c.need(*t.trained_tokens >= 1, "teacher.trained_tokens", "must be >= 1");
    c.need(!t.path.empty() || !t.init_from.empty(), "teacher.trained_tokens",
           "states the budget of a teacher from teacher.path or teacher.init_from; a teacher trained here is counted");
  }
  if (t.train_once) c.need(t.path.empty(), "teacher.train_once", "needs a teacher trained here (teacher.path is one teacher already)");

  const auto& bl = r.baseline;
  if (bl.steps) c.need(*bl.steps >= 1, "baseline.steps", "must be >= 1");
  c.need(bl.continue_steps >= 0, "baseline.continue_steps", "must be >= 0");
  c.model_dir(bl.path, "baseline.path");
  if (!bl.path.empty()) {
    c.need(!bl.steps, "baseline.steps", "and baseline.path exclude each other: with a path, train on with baseline.continue_steps");
  } else {
    c.need(bl.continue_steps == 0, "baseline.continue_steps", "needs baseline.path (a baseline trained here takes baseline.steps)");
    c.need(!bl.trained_tokens || !bl.init_from.empty(), "baseline.trained_tokens",
           "states the budget of a baseline from baseline.path or baseline.init_from; one trained here is counted");
  }
  if (bl.trained_tokens) c.need(*bl.trained_tokens >= 1, "baseline.trained_tokens", "must be >= 1");

  const auto& s = r.student;
  c.one_of(s.init, "student.init", {"fresh", "mean", "router_weighted", "top_expert", "concat_top_k", "merge_aligned"});
  c.need(s.top_k >= 1 && s.top_k <= 4096, "student.top_k", "must be in [1, 4096]");
  c.one_of(s.weighting, "student.weighting", {"frequency", "plain"});
  c.one_of(s.schedule, "student.schedule", {"restart", "continue"});
  if (s.schedule == "continue")
    c.need(t.path.empty(), "student.schedule",
           "= continue needs a teacher trained or fine-tuned here (teacher.path's schedule is unknown); use restart");
  if (s.init == "concat_top_k" && t.path.empty() && a.num_experts > 0) {
    c.need(s.top_k <= a.num_experts, "student.top_k", "must be <= teacher.model.num_experts");
    if (s.d_ff) {
      c.need(*s.d_ff == s.top_k * a.d_ff, "student.d_ff",
             "must be student.top_k x teacher.model.d_ff (" + std::to_string(s.top_k * a.d_ff) + ") with init concat_top_k, or unset");
    }
  }
  c.need(s.calibration_batches >= 1, "student.calibration_batches", "must be >= 1");
  if (s.d_ff) c.need(*s.d_ff >= 1, "student.d_ff", "must be >= 1");

  const auto& x = r.distillation;
  c.need(x.hard_weight >= 0 && x.hard_weight <= 1000, "distillation.hard_weight", "must be in [0, 1000]");
  c.need(x.soft_weight >= 0 && x.soft_weight <= 1000, "distillation.soft_weight", "must be in [0, 1000]");
  if (x.hard_weight >= 0 && x.soft_weight >= 0) {
    c.need(x.hard_weight + x.soft_weight > 0, "distillation.soft_weight", "and hard_weight must not both be 0");
  }
  // Beyond these, logits / T or the T^2 factor overflow float32.
  c.need(x.temperature >= 0.01 && x.temperature <= 100, "distillation.temperature", "must be in [0.01, 100]");
  c.one_of(x.soft_loss, "distillation.soft_loss", {"ce", "kl", "reverse_kl", "jsd"});
  c.need(x.jsd_beta >= 0 && x.jsd_beta <= 1, "distillation.jsd_beta", "must be in [0, 1]");
  c.need(x.hidden_weight >= 0 && x.hidden_weight <= 1000, "distillation.hidden_weight", "must be in [0, 1000]");
  c.one_of(x.hidden_loss, "distillation.hidden_loss", {"mse", "cosine"});
  if (x.hidden_weight > 0) {
    c.need(!x.teacher_cache && !x.teacher_cache_disk, "distillation.hidden_weight",
           "needs the teacher run at every step; the teacher caches keep only its soft targets");
    try {
      const bool here = t.path.empty();  // a given teacher's depths are checked when it is loaded
      parse_hidden_layer_map(x.hidden_layers, here ? a.num_layers : 9999, here ? a.num_decoder_layers : 9999, "");
    } catch (const ConfigError& e) {
      c.need(false, "distillation.hidden_layers", std::string(e.what()).substr(2));
    }
  }
  if (x.teacher_capacity_factor) c.need(*x.teacher_capacity_factor > 0, "distillation.teacher_capacity_factor", "must be > 0");
  c.need(x.teacher_cache_top_k >= 1, "distillation.teacher_cache_top_k", "must be >= 1");
  if (x.teacher_cache) {
    c.need(r.data.static_examples, "distillation.teacher_cache",
           "needs data.static_examples: true (otherwise every epoch draws new examples and the cache never hits)");
  }
  if (x.teacher_cache_disk) {
    c.need(r.data.static_examples, "distillation.teacher_cache_disk",
           "needs data.static_examples: true (the stored targets are looked up by example)");
    c.need(!x.teacher_cache, "distillation.teacher_cache_disk", "and distillation.teacher_cache exclude each other: choose one");
  }
  check_training(c, r.training, "training");
}

// Sets `path` (a.b.c) in `root` to the YAML value `text`, creating mappings on the way.
void apply_override(YAML::Node root, const std::string& assignment, ReadContext& ctx) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    ctx.errors.push_back("--set " + assignment + ": expected KEY=VALUE, e.g. training.steps=100");
    return;
  }
  const std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    ctx.errors.push_back("--set " + assignment + ": value is not valid YAML: " + e.msg);
    return;
  }
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    if (!next.IsMap()) {
      ctx.errors.push_back("--set " + assignment + ": " + parts[i] + " is not a mapping");
      return;
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
  ctx.overridden.insert(path);
}

}  // namespace

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides,
                          const std::vector<std::string>& foreign_keys) {
  ReadContext ctx;
  ctx.file = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw ConfigError(path + ": no such config file");
  if (const auto kind = non_regular_kind(path); !kind.empty()) throw ConfigError(path + ": is " + kind + ", not a config file");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw ConfigError(path + ": cannot open config file");
  } catch (const YAML::ParserException& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(path + ": expected a mapping of keys at the top level");
  for (const auto& k : foreign_keys) root.remove(k);
  for (const auto& o : overrides) apply_override(root, o, ctx);

  ctx.native_bf16 = native_bf16_products();
  RunConfig config;
  Reader reader(root, "", ctx);
  visit(reader, config);
  reader.finish();
  check(ctx, config);  // also after type errors: every problem is reported in one go
  if (!ctx.errors.empty()) {
    std::ostringstream msg;
    msg << path << ": " << ctx.errors.size() << " problem" << (ctx.errors.size() > 1 ? "s" : "") << " in the configuration:";
    for (const auto& e : ctx.errors) msg << "\n  " << e;
    throw ConfigError(msg.str());
  }
  config.bf16_auto = ctx.automatic;
  // Pre-training stages are found by the hash of their settings from every seed's process, so
  // they need a stages directory; the resolved config.yaml names it.
  if (config.pretrain.steps > 0 && config.stages_dir.empty()) {
    config.stages_dir = (fs::path(config.output_dir) / "stages").string();
  }
  return config;
}

nlohmann::json run_config_json(const RunConfig& config) {
  nlohmann::json out = nlohmann::json::object();
  RunConfig copy = config;
  JsonWriter w(out);
  visit(w, copy);
  return out;
}

std::string run_config_yaml(const RunConfig& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  RunConfig copy = config;
  Writer w(out);
  visit(w, copy);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace distill
