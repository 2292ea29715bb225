#include "models/arch/model_config.h"

#include <unistd.h>

#include <sstream>

#include "models/errors.h"
#include "models/arch/model_stats.h"

namespace distill {

const char* to_string(CapacityMode mode) {
  return mode == CapacityMode::kFixed ? "fixed" : "factor";
}

const char* to_string(RouterLoss rule) { return rule == RouterLoss::kPaper ? "paper" : "hf"; }

std::vector<std::string> ModelConfig::problems() const {
  std::vector<std::string> out;
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) out.push_back(msg);
  };
  need(model_type == "t5" || model_type == "switch_transformers",
       "model_type must be \"t5\" or \"switch_transformers\", got \"" + model_type + "\"");
  // Bounds far past any real T5 or Switch model, so that a typo (d_model: 1e9) is an error here
  // instead of terabytes asked of the allocator, and parameter counts cannot overflow.
  auto in_range = [&](int64_t v, int64_t lo, int64_t hi, const char* name) {
    need(v >= lo && v <= hi, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                 "], got " + std::to_string(v));
    return v >= lo && v <= hi;
  };
  bool sane = in_range(vocab_size, 1, int64_t{1} << 24, "vocab_size");
  sane &= in_range(d_model, 1, 65536, "d_model");
  sane &= in_range(d_kv, 1, 65536, "d_kv");
  sane &= in_range(d_ff, 1, 262144, "d_ff");
  sane &= in_range(num_heads, 1, 1024, "num_heads");
  sane &= in_range(num_layers, 1, 512, "num_layers");
  sane &= in_range(num_decoder_layers, 1, 512, "num_decoder_layers");
  sane &= in_range(num_experts, 0, 16384, "num_experts");
  sane &= in_range(relative_attention_num_buckets, 2, 4096, "relative_attention_num_buckets");
  sane &= in_range(relative_attention_max_distance, 1, int64_t{1} << 20, "relative_attention_max_distance");
  if (sane) {
    const double gib = 4.0 * static_cast<double>(count_parameters(*this).total) / double(1 << 30);
    const double machine = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE)) / double(1 << 30);
    std::ostringstream msg;
    msg.precision(1);
    msg << std::fixed << "the model's float32 weights alone take " << gib << " GiB, more than this machine's " << machine
        << " GiB of memory";
    need(machine <= 0 || gib <= machine, msg.str());
  }
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
