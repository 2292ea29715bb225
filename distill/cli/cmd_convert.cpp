// distill convert DIR OUT: a model directory's weights as safetensors (from pytorch_model.bin).
// distill export DIR OUT: a copy Hugging Face runs as distill does (fixed per-sequence capacity).
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "distill/cli/commands.h"
#include "models/errors.h"
#include "models/io/checkpoint.h"
#include "models/io/hf_config.h"
#include "models/io/safetensors.h"

namespace distill::cli {
namespace {
namespace fs = std::filesystem;

struct ConvertArgs {
  std::string dir, out;
  int64_t expert_capacity = 0;
  bool allow_differences = false;
};

void refuse_same_directory(const ConvertArgs& a) {
  std::error_code ec;
  if (fs::exists(a.out) && fs::equivalent(a.dir, a.out, ec)) {
    throw InputError(a.out + ": is the source directory; write the copy elsewhere");
  }
}

bool is_weights_file(const std::string& name) {
  auto ends = [&](const std::string& s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
  return ends(".bin") || ends(".safetensors") || name == "model.safetensors.index.json" || name == "pytorch_model.bin.index.json";
}

void run_convert(const ConvertArgs& a) {
  refuse_same_directory(a);
  const std::string weights = model_weights_file(a.dir);
  auto tensors = load_model_tensors(a.dir);
  // The copy must load: the config builds a model and every tensor fits it.
  Seq2SeqModel check(read_hf_config((fs::path(a.dir) / "config.json").string()));
  load_state(check, tensors, weights);
  write_model_dir(a.out, [&](const std::string& tmp) {
    save_model_tensors(tmp, {tensors.begin(), tensors.end()});
    for (const auto& e : fs::directory_iterator(a.dir)) {
      const std::string name = e.path().filename().string();
      if (e.is_regular_file() && !is_weights_file(name)) fs::copy_file(e.path(), fs::path(tmp) / name);
    }
  });
  std::cout << a.out << ": " << tensors.size() << " tensors from " << weights << " written as safetensors\n";
}

void run_export(const ConvertArgs& a) {
  refuse_same_directory(a);
  Seq2SeqModel source = load_model(a.dir);
  ModelConfig c = source->config();
  if (c.is_sparse()) {
    if (c.router_top_k > 1 && !a.allow_differences) {
      throw ConfigError(a.dir + ": routes every token to its top-" + std::to_string(c.router_top_k) +
                        " experts, and Hugging Face's Switch routes top-1 only: no copy runs there as it does here "
                        "(--allow-differences writes one anyway, its README saying so)");
    }
    c.capacity_mode = CapacityMode::kFixed;  // the rule Hugging Face applies
    if (a.expert_capacity > 0) c.expert_capacity = a.expert_capacity;
  }
  Seq2SeqModel exported(c);
  std::map<std::string, at::Tensor> state;
  for (const auto& [name, t] : model_state(source)) state.emplace(name, t);
  load_state(exported, state, a.dir);
  std::vector<std::string> copy;
  for (const char* f : {"spiece.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    if (fs::exists(fs::path(a.dir) / f)) copy.push_back((fs::path(a.dir) / f).string());
  }
  save_model(exported, a.out, copy);
  const auto diffs = hf_differences(c);
  std::cout << a.out << ": " << (c.is_sparse() ? "capacity " + std::to_string(c.expert_capacity) + " tokens per expert and sequence, " : std::string())
            << (diffs.empty() ? "Hugging Face runs it as distill does\n" : "Hugging Face runs it as distill does except:\n");
  for (const auto& d : diffs) std::cout << "  - " << d << "\n";
}

}  // namespace

Command add_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  auto* sub = app.add_subcommand("convert", "Write a model directory's weights as safetensors (e.g. from pytorch_model.bin)");
  sub->add_option("dir", args->dir, "Model directory (config.json + pytorch_model.bin, a .bin index, or safetensors)")->required();
  sub->add_option("out", args->out, "Output directory (replaced atomically)")->required();
  return {sub, [args] { run_convert(*args); }};
}

Command add_export(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  auto* sub = app.add_subcommand("export", "Write a copy Hugging Face runs as distill does: a fixed per-sequence expert capacity");
  sub->add_option("dir", args->dir, "Model directory")->required();
  sub->add_option("out", args->out, "Output directory (replaced atomically)")->required();
  sub->add_option("--expert-capacity", args->expert_capacity,
                  "Tokens per expert and sequence (default: the model's expert_capacity)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--allow-differences", args->allow_differences, "Write a top-k (k > 1) model too; its README says what differs");
  return {sub, [args] { run_export(*args); }};
}

}  // namespace distill::cli
