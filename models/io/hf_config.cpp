#include "models/io/hf_config.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "models/io/atomic_file.h"
#include "models/errors.h"

namespace distill {
namespace {

using nlohmann::json;

// Reads typed keys from one JSON object, collecting every problem instead of stopping at the first.
class KeyReader {
 public:
  explicit KeyReader(const json& j) : j_(j) {}

  template <typename T>
  void get(const char* key, T& out, bool required = false) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (required) problems_.push_back(std::string("missing required key \"") + key + "\"");
      return;
    }
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) return wrong(key, "a boolean", *it);
      out = it->template get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) return wrong(key, "an integer", *it);
      out = it->template get<T>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!it->is_number()) return wrong(key, "a number", *it);
      out = it->template get<T>();
    } else {
      if (!it->is_string()) return wrong(key, "a string", *it);
      out = it->template get<std::string>();
    }
  }
  // A string key naming one of `choices`; absent keeps `out`.
  template <typename E>
  void get_choice(const char* key, E& out, const std::vector<std::pair<std::string, E>>& choices) {
    std::string name;
    get(key, name);
    if (name.empty() && !has(key)) return;
    std::string names;
    for (const auto& [n, v] : choices) {
      if (n == name) {
        out = v;
        return;
      }
      names += (names.empty() ? "\"" : " or \"") + n + "\"";
    }
    problems_.push_back(std::string("key \"") + key + "\" must be " + names + ", got \"" + name + "\"");
  }
  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  std::vector<std::string>& problems() { return problems_; }

 private:
  void wrong(const char* key, const char* expected, const json& got) {
    problems_.push_back(std::string("key \"") + key + "\" must be " + expected + ", got " +
                        got.type_name() + " " + got.dump());
  }
  const json& j_;
  std::vector<std::string> problems_;
};

}  // namespace

ModelConfig read_hf_config(const std::string& path) {
  std::string text;
  try {
    text = read_text_file(path);
  } catch (const InputError& e) {
    throw CheckpointError(e.what());
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // a parse_error, or out_of_range for a number past a double
    throw CheckpointError(path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw CheckpointError(path + ": expected a JSON object");

  ModelConfig c;
  KeyReader r(j);
  r.get("model_type", c.model_type, true);
  r.get("vocab_size", c.vocab_size, true);
  r.get("d_model", c.d_model, true);
  r.get("d_kv", c.d_kv, true);
  r.get("d_ff", c.d_ff, true);
  r.get("num_heads", c.num_heads, true);
  r.get("num_layers", c.num_layers, true);
  c.num_decoder_layers = c.num_layers;
  r.get("num_decoder_layers", c.num_decoder_layers);
  r.get("relative_attention_num_buckets", c.relative_attention_num_buckets);
  r.get("relative_attention_max_distance", c.relative_attention_max_distance);
  r.get("dropout_rate", c.dropout_rate);
  r.get("layer_norm_epsilon", c.layer_norm_epsilon);
  r.get("tie_word_embeddings", c.tie_word_embeddings);  // absent means true, as in Hugging Face
  r.get("pad_token_id", c.pad_token_id);
  r.get("eos_token_id", c.eos_token_id);
  r.get("decoder_start_token_id", c.decoder_start_token_id);

  if (c.model_type == "t5") {
    std::string proj = "relu";
    r.get("feed_forward_proj", proj);
    // T5Config: "gated-gelu" means a gated FFN with gelu_new; "relu", "gated-silu", ... likewise.
    auto dash = proj.find('-');
    if (dash != std::string::npos && proj.substr(0, dash) == "gated") {
      c.is_gated_act = true;
      c.dense_act_fn = proj.substr(dash + 1);
    } else if (dash == std::string::npos) {
      c.is_gated_act = false;
      c.dense_act_fn = proj;
    } else {
      r.problems().push_back("key \"feed_forward_proj\" must be ACT or gated-ACT, got \"" + proj + "\"");
    }
    if (proj == "gated-gelu") c.dense_act_fn = "gelu_new";  // T5Config's backward-compatible mapping
  } else if (c.model_type == "switch_transformers") {
    r.get("dense_act_fn", c.dense_act_fn);
    r.get("num_experts", c.num_experts, true);
    r.get("expert_capacity", c.expert_capacity);
    r.get("router_bias", c.router_bias);
    r.get("router_ignore_padding_tokens", c.router_ignore_padding_tokens);
    r.get("router_jitter_noise", c.router_jitter_noise);
    r.get("router_z_loss_coef", c.router_z_loss_coef);
    r.get("router_aux_loss_coef", c.router_aux_loss_coef);
    // SwitchTransformersConfig derives the steps from the sparse-layer counts; saved configs
    // carry both, and the steps are what the model uses.
    int64_t n_sparse_enc = 3, n_sparse_dec = 3;
    r.get("num_sparse_encoder_layers", n_sparse_enc);
    r.get("num_sparse_decoder_layers", n_sparse_dec);
    c.encoder_sparse_step = n_sparse_enc > 0 ? c.num_layers / n_sparse_enc : c.num_layers;
    c.decoder_sparse_step = n_sparse_dec > 0 ? c.num_decoder_layers / n_sparse_dec : c.num_decoder_layers;
    r.get("encoder_sparse_step", c.encoder_sparse_step);
    r.get("decoder_sparse_step", c.decoder_sparse_step);
    std::string router_dtype = "float32";
    r.get("router_dtype", router_dtype);
    if (router_dtype != "float32") {
      r.problems().push_back("key \"router_dtype\" must be \"float32\" (the router always runs in "
                             "float32), got \"" + router_dtype + "\"");
    }
    // distill's own keys.
    r.get_choice("capacity_mode", c.capacity_mode, {{"fixed", CapacityMode::kFixed}, {"factor", CapacityMode::kFactor}});
    r.get("capacity_factor_train", c.capacity_factor_train);
    r.get("capacity_factor_eval", c.capacity_factor_eval);
    r.get("router_top_k", c.router_top_k);
    r.get_choice("router_loss", c.router_loss, {{"paper", RouterLoss::kPaper}, {"hf", RouterLoss::kHf}});
  }
  r.get("expert_dropout_rate", c.expert_dropout_rate);

  auto problems = r.problems();
  if (problems.empty()) problems = c.problems();
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << path << ": invalid model configuration:";
    for (const auto& p : problems) msg << "\n  - " << p;
    throw ConfigError(msg.str());
  }
  return c;
}

std::string hf_config_json(const ModelConfig& c) {
  json j;
  const bool sparse = c.model_type == "switch_transformers";
  j["architectures"] = {sparse ? "SwitchTransformersForConditionalGeneration" : "T5ForConditionalGeneration"};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["d_model"] = c.d_model;
  j["d_kv"] = c.d_kv;
  j["d_ff"] = c.d_ff;
  j["num_heads"] = c.num_heads;
  j["num_layers"] = c.num_layers;
  j["num_decoder_layers"] = c.num_decoder_layers;
  j["relative_attention_num_buckets"] = c.relative_attention_num_buckets;
  j["relative_attention_max_distance"] = c.relative_attention_max_distance;
  j["dropout_rate"] = c.dropout_rate;
  j["layer_norm_epsilon"] = c.layer_norm_epsilon;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["pad_token_id"] = c.pad_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["decoder_start_token_id"] = c.decoder_start_token_id;
  j["is_encoder_decoder"] = true;
  j["initializer_factor"] = 1.0;
  j["use_cache"] = true;
  j["torch_dtype"] = "float32";
  j["dense_act_fn"] = c.dense_act_fn;
  j["is_gated_act"] = c.is_gated_act;
  if (!sparse) {
    const bool v11 = c.is_gated_act && c.dense_act_fn == "gelu_new";  // read back as gelu_new
    j["feed_forward_proj"] = v11 ? "gated-gelu" : (c.is_gated_act ? "gated-" : "") + c.dense_act_fn;
  } else {
    int64_t n_enc = 0, n_dec = 0;
    for (int64_t i = 0; i < c.num_layers; ++i) n_enc += c.encoder_block_is_sparse(i);
    for (int64_t i = 0; i < c.num_decoder_layers; ++i) n_dec += c.decoder_block_is_sparse(i);
    j["num_experts"] = c.num_experts;
    j["num_sparse_encoder_layers"] = n_enc;
    j["num_sparse_decoder_layers"] = n_dec;
    j["encoder_sparse_step"] = c.encoder_sparse_step;
    j["decoder_sparse_step"] = c.decoder_sparse_step;
    j["expert_capacity"] = c.expert_capacity;
    j["router_bias"] = c.router_bias;
    j["router_jitter_noise"] = c.router_jitter_noise;
    j["router_dtype"] = "float32";
    j["router_ignore_padding_tokens"] = c.router_ignore_padding_tokens;
    j["router_z_loss_coef"] = c.router_z_loss_coef;
    j["router_aux_loss_coef"] = c.router_aux_loss_coef;
    j["add_router_probs"] = false;
    j["capacity_mode"] = to_string(c.capacity_mode);
    j["capacity_factor_train"] = c.capacity_factor_train;
    j["capacity_factor_eval"] = c.capacity_factor_eval;
    j["router_top_k"] = c.router_top_k;
    j["router_loss"] = to_string(c.router_loss);
  }
  if (c.expert_dropout_rate >= 0) j["expert_dropout_rate"] = c.expert_dropout_rate;
  return j.dump(2) + "\n";
}

std::vector<std::string> hf_differences(const ModelConfig& c) {
  std::vector<std::string> out;
  if (!c.is_sparse()) return out;
  if (c.router_top_k > 1) {
    out.push_back("it routes every token to its top-1 expert (its Switch has no top-k), but this model routes top-" +
                  std::to_string(c.router_top_k) + ": its outputs differ");
  }
  if (c.capacity_mode == CapacityMode::kFactor) {
    std::ostringstream cf;
    cf << c.capacity_factor_eval;
    out.push_back("it allows expert_capacity = " + std::to_string(c.expert_capacity) +
                  " tokens per expert in each sequence, where distill allows capacity factor " + cf.str() +
                  " (in evaluation) over the whole batch: routing differs wherever an expert overflows under one rule "
                  "and not the other (distill export writes a copy with a fixed capacity, which both apply alike)");
  }
  out.push_back("a token over its expert's capacity gets its normed input scaled by its gate from Hugging Face, and "
                "zero (it rides the residual, the paper's rule) from distill: outputs match while no expert overflows");
  if (c.router_ignore_padding_tokens) {
    out.push_back("it stores router_ignore_padding_tokens but routes padding like any token: with right-padded batches "
                  "real tokens route the same (padding comes last in each sequence), the router losses differ");
  }
  if (c.expert_dropout_rate >= 0 && c.expert_dropout_rate != c.dropout_rate) {
    out.push_back("in training it applies dropout_rate inside the experts, not expert_dropout_rate");
  }
  return out;
}

void write_hf_config(const ModelConfig& config, const std::string& path) {
  write_text_atomic(path, hf_config_json(config));
}

}  // namespace distill
