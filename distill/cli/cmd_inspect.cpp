// distill inspect DIR [--json]: architecture and the counts that matter for compression.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "distill/cli/commands.h"
#include "models/errors.h"
#include "models/io/hf_config.h"
#include "models/io/safetensors.h"
#include "models/arch/model_stats.h"

namespace distill::cli {

namespace {

struct InspectArgs {
  std::string dir;
  bool json = false;
  int64_t src_len = 512;
  int64_t tgt_len = 128;
};

nlohmann::json inspect_json(const ModelConfig& c, const InspectArgs& a) {
  const ParamCounts p = count_parameters(c);
  const double flops = forward_flops(c, a.src_len, a.tgt_len);
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : sparse_layers(c)) layers.push_back(l.name);
  nlohmann::json j = {
      {"model_type", c.model_type},
      {"architecture",
       {{"d_model", c.d_model}, {"d_ff", c.d_ff}, {"d_kv", c.d_kv}, {"num_heads", c.num_heads},
        {"num_layers", c.num_layers}, {"num_decoder_layers", c.num_decoder_layers},
        {"vocab_size", c.vocab_size}, {"ffn", (c.is_gated_act ? "gated-" : "") + c.dense_act_fn},
        {"tie_word_embeddings", c.tie_word_embeddings}}},
      {"parameters",
       {{"total", p.total}, {"embedding", p.embedding}, {"non_embedding", p.non_embedding},
        {"expert", p.expert}, {"router", p.router}, {"non_expert", p.non_expert},
        {"per_expert", p.per_expert}, {"active_per_token", p.active_per_token}}},
      {"flops",
       {{"src_len", a.src_len}, {"tgt_len", a.tgt_len}, {"forward_per_example", flops},
        {"forward_per_token", flops / static_cast<double>(a.src_len + a.tgt_len)}}},
      {"sparse_layers", layers},
  };
  const auto diffs = hf_differences(c);
  j["hugging_face"] = {{"identical", diffs.empty()}, {"differences", diffs}};
  if (c.is_sparse()) {
    j["experts"] = c.num_experts;
    j["routing"] = {{"top_k", c.router_top_k},
                    {"capacity_mode", to_string(c.capacity_mode)},
                    {"expert_capacity", c.expert_capacity},
                    {"capacity_factor_train", c.capacity_factor_train},
                    {"capacity_factor_eval", c.capacity_factor_eval},
                    {"router_jitter_noise", c.router_jitter_noise},
                    {"router_z_loss_coef", c.router_z_loss_coef},
                    {"router_aux_loss_coef", c.router_aux_loss_coef},
                    {"router_ignore_padding_tokens", c.router_ignore_padding_tokens}};
  }
  return j;
}

std::string human(int64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1'000) return fmt::format("{:.1f}K", n / 1e3);
  return std::to_string(n);
}

void print_text(const ModelConfig& c, const InspectArgs& a) {
  const ParamCounts p = count_parameters(c);
  const double flops = forward_flops(c, a.src_len, a.tgt_len);
  std::cout << fmt::format("{} ({})\n", a.dir, c.model_type)
            << fmt::format("  d_model {}  d_ff {}  heads {} x {}  layers {} + {}  vocab {}  ffn {}{}  {}\n",
                           c.d_model, c.d_ff, c.num_heads, c.d_kv, c.num_layers, c.num_decoder_layers,
                           c.vocab_size, c.is_gated_act ? "gated-" : "", c.dense_act_fn,
                           c.tie_word_embeddings ? "tied embeddings" : "untied LM head");
  auto row = [](const char* name, int64_t v, int64_t total) {
    std::cout << fmt::format("  {:<18} {:>14} {:>9} {:>6.1f}%\n", name, v, human(v), 100.0 * v / total);
  };
  std::cout << "parameters\n";
  row("total", p.total, p.total);
  row("embedding", p.embedding, p.total);
  row("non-embedding", p.non_embedding, p.total);
  row("expert", p.expert, p.total);
  row("router", p.router, p.total);
  row("non-expert", p.non_expert, p.total);
  row("active per token", p.active_per_token, p.total);
  std::cout << fmt::format("FLOPs (forward, {} source + {} target tokens)\n", a.src_len, a.tgt_len)
            << fmt::format("  per example {:.4g}   per token {:.4g}\n", flops, flops / (a.src_len + a.tgt_len));
  if (c.is_sparse()) {
    std::cout << fmt::format("experts {} per sparse layer, top-{} routing, capacity {}", c.num_experts,
                             c.router_top_k,
                             c.capacity_mode == CapacityMode::kFixed
                                 ? fmt::format("fixed {} tokens per expert and sequence", c.expert_capacity)
                                 : fmt::format("factor {} (train) / {} (eval) per batch",
                                               c.capacity_factor_train, c.capacity_factor_eval))
              << (c.router_ignore_padding_tokens ? ", padding not routed\n" : ", padding routed like any token\n");
    std::cout << "sparse layers:";
    for (const auto& l : sparse_layers(c)) std::cout << " " << l.name;
    std::cout << "\n";
  } else {
    std::cout << "dense model: no sparse layers\n";
  }
  const auto diffs = hf_differences(c);
  if (diffs.empty()) {
    std::cout << "Hugging Face runs it as distill does\n";
  } else {
    std::cout << "Hugging Face runs it differently:\n";
    for (const auto& d : diffs) std::cout << "  - " << d << "\n";
  }
}

}  // namespace

Command add_inspect(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  auto* sub = app.add_subcommand("inspect", "Architecture, parameter and FLOP counts of a model directory");
  sub->add_option("dir", args->dir, "Model directory (config.json + safetensors or pytorch_model.bin)")->required();
  sub->add_flag("--json", args->json, "Print one JSON object");
  sub->add_option("--src-len", args->src_len, "Encoder tokens per example for FLOP counts")->check(CLI::PositiveNumber);
  sub->add_option("--tgt-len", args->tgt_len, "Decoder tokens per example for FLOP counts")->check(CLI::PositiveNumber);
  return {sub, [args] {
            const auto path = (std::filesystem::path(args->dir) / "config.json").string();
            if (!std::filesystem::exists(path)) throw CheckpointError(path + ": missing (is " + args->dir + " a model directory?)");
            ModelConfig c = read_hf_config(path);
            const std::string weights = model_weights_file(args->dir);
            if (args->json) {
              auto j = inspect_json(c, *args);
              j["weights"] = weights;
              std::cout << j.dump(2) << "\n";
            } else {
              print_text(c, *args);
              std::cout << "weights: " << weights << "\n";
            }
          }};
}

}  // namespace distill::cli
