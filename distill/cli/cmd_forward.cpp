// distill forward --model DIR --inputs IN.json --output OUT.safetensors: one forward pass on
// given ids, writing the tensors a parity check needs and printing the losses as JSON.
#include <torch/torch.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "distill/cli/commands.h"
#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/errors.h"
#include "models/io/safetensors.h"

namespace distill::cli {
namespace {

using nlohmann::json;

// A rectangular integer matrix under `key`, as a [rows, cols] int64 tensor; undefined if absent.
torch::Tensor read_matrix(const json& j, const std::string& key, const std::string& file, bool required) {
  if (!j.contains(key)) {
    if (required) throw InputError(file + ": missing \"" + key + "\" (an array of integer arrays)");
    return {};
  }
  const json& rows = j[key];
  const std::string where = file + ": \"" + key + "\"";
  if (!rows.is_array() || rows.empty()) throw InputError(where + " must be a non-empty array of integer arrays");
  std::vector<int64_t> flat;
  size_t cols = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r].is_array() || rows[r].empty()) throw InputError(where + "[" + std::to_string(r) + "] must be a non-empty array");
    if (r == 0) cols = rows[r].size();
    if (rows[r].size() != cols) {
      throw InputError(where + " must be rectangular: row " + std::to_string(r) + " has " +
                       std::to_string(rows[r].size()) + " entries, row 0 has " + std::to_string(cols));
    }
    for (const auto& v : rows[r]) {
      if (!v.is_number_integer()) throw InputError(where + "[" + std::to_string(r) + "] holds " + v.dump() + ", expected integers");
      flat.push_back(v.get<int64_t>());
    }
  }
  return torch::tensor(flat, torch::kLong).view({static_cast<int64_t>(rows.size()), static_cast<int64_t>(cols)});
}

void check_range(const torch::Tensor& t, const std::string& what, int64_t lo, int64_t hi, bool allow_ignore) {
  if (!t.defined()) return;
  auto bad = (t < lo) | (t >= hi);
  if (allow_ignore) bad = bad & (t != -100);
  if (bad.any().item<bool>()) {
    auto v = t.masked_select(bad)[0].item<int64_t>();
    throw InputError(what + " holds " + std::to_string(v) + ", outside [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + ")" + (allow_ignore ? " (or -100)" : ""));
  }
}

void check_shape(const torch::Tensor& t, const torch::Tensor& like, const std::string& what, const std::string& ref) {
  if (t.defined() && like.defined() && t.sizes() != like.sizes()) {
    throw InputError(what + " must have the shape of " + ref);
  }
}

struct ForwardArgs {
  std::string model, inputs, output;
};

void run_forward(const ForwardArgs& a) {
  json j;
  try {
    j = json::parse(read_text_file(a.inputs));
  } catch (const json::exception& e) {
    throw InputError(a.inputs + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw InputError(a.inputs + ": expected a JSON object");
  Seq2SeqInputs in;
  in.input_ids = read_matrix(j, "input_ids", a.inputs, true);
  in.attention_mask = read_matrix(j, "attention_mask", a.inputs, false);
  in.decoder_input_ids = read_matrix(j, "decoder_input_ids", a.inputs, false);
  in.decoder_attention_mask = read_matrix(j, "decoder_attention_mask", a.inputs, false);
  in.labels = read_matrix(j, "labels", a.inputs, false);
  if (!in.decoder_input_ids.defined() && !in.labels.defined()) {
    throw InputError(a.inputs + ": needs \"decoder_input_ids\" or \"labels\"");
  }

  Seq2SeqModel model = load_model(a.model);
  const auto& c = model->config();
  const std::string f = a.inputs + ": ";
  check_range(in.input_ids, f + "input_ids", 0, c.vocab_size, false);
  check_range(in.decoder_input_ids, f + "decoder_input_ids", 0, c.vocab_size, false);
  check_range(in.labels, f + "labels", 0, c.vocab_size, true);
  check_range(in.attention_mask, f + "attention_mask", 0, 2, false);
  check_range(in.decoder_attention_mask, f + "decoder_attention_mask", 0, 2, false);
  check_shape(in.attention_mask, in.input_ids, f + "attention_mask", "input_ids");
  check_shape(in.labels, in.decoder_input_ids, f + "labels", "decoder_input_ids");
  const auto& dec = in.decoder_input_ids.defined() ? in.decoder_input_ids : in.labels;
  check_shape(in.decoder_attention_mask, dec, f + "decoder_attention_mask", "the decoder inputs");
  if (dec.size(0) != in.input_ids.size(0)) throw InputError(f + "encoder and decoder inputs differ in batch size");

  torch::NoGradGuard no_grad;
  auto out = model->forward(in);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"logits", out.logits}, {"encoder_last_hidden_state", out.encoder_last_hidden_state}};
  for (const auto& [prefix, r] : out.routing) {
    tensors.emplace_back(prefix + "router_logits", r.logits);
    tensors.emplace_back(prefix + "expert_choice", r.expert_choice);
    tensors.emplace_back(prefix + "kept", r.kept.to(torch::kLong));
  }
  save_safetensors(a.output, tensors, {{"generator", "distill forward"}});
  if (out.ce_loss.defined()) {
    json losses = {{"ce_loss", out.ce_loss.item<double>()},
                   {"encoder_aux_loss", out.encoder_aux_loss.item<double>()},
                   {"encoder_z_loss", out.encoder_z_loss.item<double>()},
                   {"decoder_aux_loss", out.decoder_aux_loss.item<double>()},
                   {"decoder_z_loss", out.decoder_z_loss.item<double>()},
                   {"loss", out.loss.item<double>()},
                   {"router_loss", c.is_sparse() ? to_string(c.router_loss) : "none"}};
    std::cout << losses.dump() << "\n";
  } else {
    std::cout << "{}\n";
  }
}

}  // namespace

Command add_forward(CLI::App& app) {
  auto args = std::make_shared<ForwardArgs>();
  auto* sub = app.add_subcommand("forward", "Run a model on given ids; write logits, hidden state and routing");
  sub->add_option("--model", args->model, "Model directory")->required();
  sub->add_option("--inputs", args->inputs, "JSON with input_ids, attention_mask, decoder_input_ids, labels, ...")->required();
  sub->add_option("--output", args->output, "Output .safetensors file")->required();
  return {sub, [args] { run_forward(*args); }};
}

}  // namespace distill::cli
