#include "models/io/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "models/io/atomic_file.h"
#include "models/errors.h"
#include "models/io/hf_config.h"
#include "models/io/safetensors.h"

namespace distill {
namespace fs = std::filesystem;

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

bool is_tied_alias(const std::string& name) {
  return name == "encoder.embed_tokens.weight" || name == "decoder.embed_tokens.weight" || name == "lm_head.weight";
}

}  // namespace

void load_state(Seq2SeqModel& model, const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  auto params = model->named_parameters(/*recurse=*/true);
  std::vector<std::string> problems;
  std::set<std::string> used;
  for (const auto& item : params) {
    const std::string& name = item.key();
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      problems.push_back("missing tensor " + name + " " + shape_str(item.value().sizes()));
      continue;
    }
    used.insert(name);
    const at::Tensor& t = it->second;
    if (t.sizes() != item.value().sizes()) {
      problems.push_back("tensor " + name + " has shape " + shape_str(t.sizes()) + ", expected " +
                         shape_str(item.value().sizes()));
    } else if (!at::isFloatingType(t.scalar_type())) {
      problems.push_back("tensor " + name + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                         ", expected a floating-point type");
    } else if (!at::isfinite(t).all().item<bool>()) {
      // One pass over the weights: a NaN would otherwise surface as null losses or a "diverged" step 1.
      problems.push_back("tensor " + name + " holds NaN or infinite values");
    }
  }
  const bool tied = model->config().tie_word_embeddings;
  for (const auto& [name, t] : tensors) {
    if (used.count(name)) continue;
    // HF may store the tied aliases of shared.weight; they carry nothing new.
    if (is_tied_alias(name) && (tied || name != "lm_head.weight")) continue;
    problems.push_back("unexpected tensor " + name + " " + shape_str(t.sizes()));
  }
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << source << ": checkpoint does not match the model in config.json (" << problems.size()
        << " problem" << (problems.size() > 1 ? "s" : "") << "):";
    for (const auto& p : problems) msg << "\n  - " << p;
    throw CheckpointError(msg.str());
  }
  torch::NoGradGuard no_grad;
  for (auto& item : params) {
    item.value().copy_(tensors.at(item.key()).to(item.value().scalar_type()));
  }
}

Seq2SeqModel load_model(const std::string& dir) {
  if (!fs::is_directory(dir)) throw CheckpointError(dir + ": not a model directory");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(config_path)) throw CheckpointError(config_path + ": missing (a model directory needs config.json)");
  ModelConfig config = read_hf_config(config_path);
  Seq2SeqModel model(config);
  load_state(model, load_model_tensors(dir), model_weights_file(dir));
  model->eval();
  return model;
}

std::vector<std::pair<std::string, at::Tensor>> model_state(const Seq2SeqModel& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model->named_parameters(true)) out.emplace_back(item.key(), item.value());
  return out;
}

void write_model_dir(const std::string& dir, const std::function<void(const std::string& tmp)>& fill) {
  const fs::path target(dir);
  const fs::path tmp = target.string() + ".tmp";
  const fs::path old = target.string() + ".old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw Error(tmp.string() + ": cannot create directory: " + ec.message());
  try {
    fill(tmp.string());
    fs::remove_all(old, ec);
    if (fs::exists(target)) fs::rename(target, old);
    fs::rename(tmp, target);
    fs::remove_all(old, ec);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error(dir + ": cannot write model: " + e.what());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

std::string model_card(const ModelConfig& c) {
  const bool sparse = c.is_sparse();
  std::ostringstream o;
  o << "# " << (sparse ? "Switch Transformer" : "T5") << " model written by distill\n\n"
    << "d_model " << c.d_model << ", d_ff " << c.d_ff << ", " << c.num_heads << " heads x " << c.d_kv << ", "
    << c.num_layers << " + " << c.num_decoder_layers << " layers, vocabulary " << c.vocab_size;
  if (sparse) {
    o << ", " << c.num_experts << " experts, top-" << c.router_top_k << " routing, capacity ";
    if (c.capacity_mode == CapacityMode::kFixed) o << c.expert_capacity << " tokens per expert and sequence";
    else o << "factor " << c.capacity_factor_eval << " per batch (evaluation)";
  }
  o << ".\n\n## In Hugging Face transformers\n\n```python\nfrom transformers import "
    << (sparse ? "SwitchTransformersForConditionalGeneration as Model" : "T5ForConditionalGeneration as Model")
    << ", T5Tokenizer\nmodel = Model.from_pretrained(DIR)\n```\n\n";
  const auto diffs = hf_differences(c);
  if (diffs.empty()) {
    o << "Hugging Face runs this model as distill does (to float32 rounding).\n";
  } else {
    o << "Hugging Face runs this model differently from distill:\n\n";
    for (const auto& d : diffs) o << "- " << d << "\n";
  }
  o << "\n`generation_config.json` holds what `distill generate` assumes: greedy decoding from the decoder "
       "start token, the pad id never generated (`suppress_tokens`), stop at `</s>`.\n";
  return o.str();
}

void save_model(const Seq2SeqModel& model, const std::string& dir, const std::vector<std::string>& copy_files) {
  write_model_dir(dir, [&](const std::string& tmp) {
    const auto& c = model->config();
    save_model_tensors(tmp, model_state(model));
    write_hf_config(c, (fs::path(tmp) / "config.json").string());
    nlohmann::json gen = {{"decoder_start_token_id", c.decoder_start_token_id},
                          {"eos_token_id", c.eos_token_id},
                          {"pad_token_id", c.pad_token_id},
                          {"suppress_tokens", nlohmann::json::array({c.pad_token_id})},
                          {"do_sample", false},
                          {"num_beams", 1}};
    write_text_atomic((fs::path(tmp) / "generation_config.json").string(), gen.dump(2) + "\n");
    write_text_atomic((fs::path(tmp) / "README.md").string(), model_card(c));
    for (const auto& f : copy_files) {
      fs::copy_file(f, fs::path(tmp) / fs::path(f).filename(), fs::copy_options::overwrite_existing);
    }
  });
}

void set_model_dtype(Seq2SeqModel& model, c10::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters(true)) {
    if (is_router_parameter(item.key())) continue;
    item.value().set_data(item.value().to(dtype));
  }
}

}  // namespace distill
