#include "models/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "models/atomic_file.h"
#include "models/errors.h"
#include "models/hf_config.h"
#include "models/safetensors.h"

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
  auto tensors = load_model_tensors(dir);
  const fs::path single = fs::path(dir) / "model.safetensors";
  load_state(model, tensors, fs::exists(single) ? single.string() : dir);
  model->eval();
  return model;
}

std::vector<std::pair<std::string, at::Tensor>> model_state(const Seq2SeqModel& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model->named_parameters(true)) out.emplace_back(item.key(), item.value());
  return out;
}

void save_model(const Seq2SeqModel& model, const std::string& dir, const std::vector<std::string>& copy_files) {
  const fs::path target(dir);
  const fs::path tmp = target.string() + ".tmp";
  const fs::path old = target.string() + ".old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw Error(tmp.string() + ": cannot create directory: " + ec.message());
  try {
    save_model_tensors(tmp.string(), model_state(model));
    write_hf_config(model->config(), (tmp / "config.json").string());
    const auto& c = model->config();
    nlohmann::json gen = {{"decoder_start_token_id", c.decoder_start_token_id},
                          {"eos_token_id", c.eos_token_id},
                          {"pad_token_id", c.pad_token_id}};
    write_text_atomic((tmp / "generation_config.json").string(), gen.dump(2) + "\n");
    for (const auto& f : copy_files) {
      fs::copy_file(f, tmp / fs::path(f).filename(), fs::copy_options::overwrite_existing);
    }
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

void set_model_dtype(Seq2SeqModel& model, c10::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters(true)) {
    if (is_router_parameter(item.key())) continue;
    item.value().set_data(item.value().to(dtype));
  }
}

}  // namespace distill
