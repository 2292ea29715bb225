#include "models/model_config.h"

#include <sstream>

#include "models/errors.h"

namespace distill {

const char* to_string(CapacityMode mode) {
  return mode == CapacityMode::kFixed ? "fixed" : "factor";
}

std::vector<std::string> ModelConfig::problems() const {
  std::vector<std::string> out;
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) out.push_back(msg);
  };
  need(model_type == "t5" || model_type == "switch_transformers",
       "model_type must be \"t5\" or \"switch_transformers\", got \"" + model_type + "\"");
  need(vocab_size > 0, "vocab_size must be > 0");
  need(d_model > 0, "d_model must be > 0");
  need(d_kv > 0, "d_kv must be > 0");
  need(d_ff > 0, "d_ff must be > 0");
  need(num_heads > 0, "num_heads must be > 0");
  need(num_layers > 0, "num_layers must be > 0");
  need(num_decoder_layers > 0, "num_decoder_layers must be > 0");
  need(relative_attention_num_buckets >= 2, "relative_attention_num_buckets must be >= 2");
  need(relative_attention_max_distance > relative_attention_num_buckets / 2,
       "relative_attention_max_distance must exceed relative_attention_num_buckets / 2");
  need(dropout_rate >= 0 && dropout_rate < 1, "dropout_rate must be in [0, 1)");
  need(layer_norm_epsilon > 0, "layer_norm_epsilon must be > 0");
  need(dense_act_fn == "relu" || dense_act_fn == "gelu" || dense_act_fn == "gelu_new" ||
           dense_act_fn == "silu",
       "dense_act_fn must be one of relu, gelu, gelu_new, silu; got \"" + dense_act_fn + "\"");
  for (auto [name, id] : {std::pair<const char*, int64_t>{"pad_token_id", pad_token_id},
                          {"eos_token_id", eos_token_id},
                          {"decoder_start_token_id", decoder_start_token_id}}) {
    need(id >= 0 && id < vocab_size, std::string(name) + " must be in [0, vocab_size)");
  }
  if (model_type == "switch_transformers") {
    need(num_experts >= 1, "num_experts must be >= 1 for a switch_transformers model");
    need(encoder_sparse_step >= 0 && decoder_sparse_step >= 0, "sparse steps must be >= 0");
    need(router_top_k >= 1 && router_top_k <= std::max<int64_t>(num_experts, 1),
         "router_top_k must be in [1, num_experts]");
    need(expert_capacity >= 1, "expert_capacity must be >= 1");
    need(capacity_factor_train > 0 && capacity_factor_eval > 0, "capacity factors must be > 0");
    need(router_jitter_noise >= 0 && router_jitter_noise < 1, "router_jitter_noise must be in [0, 1)");
    need(router_z_loss_coef >= 0 && router_aux_loss_coef >= 0, "router loss coefficients must be >= 0");
    need(expert_dropout_rate < 1, "expert_dropout_rate must be < 1");
  } else {
    need(num_experts == 0, "num_experts must be 0 for a dense t5 model");
  }
  return out;
}

void ModelConfig::validate(const std::string& where) const {
  auto list = problems();
  if (list.empty()) return;
  std::ostringstream msg;
  msg << where << ": invalid model configuration:";
  for (const auto& p : list) msg << "\n  - " << p;
  throw ConfigError(msg.str());
}

ModelConfig ModelConfig::dense_counterpart() const {
  ModelConfig dense = *this;
  dense.model_type = "t5";
  dense.num_experts = 0;
  dense.encoder_sparse_step = 0;
  dense.decoder_sparse_step = 0;
  return dense;
}

}  // namespace distill
