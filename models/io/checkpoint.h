// Model directories in Hugging Face's layout: config.json + model.safetensors (or shards).
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/arch/seq2seq.h"

namespace distill {

// Reads DIR/config.json and the weights, builds the model and fills it. Every missing,
// unexpected or wrongly shaped tensor is reported at once, by name (CheckpointError).
Seq2SeqModel load_model(const std::string& dir);

// Copies `tensors` into `model`, converting dtypes. Tied-embedding aliases Hugging Face may store
// (encoder/decoder.embed_tokens.weight, lm_head.weight) are accepted. `source` names the files in errors.
void load_state(Seq2SeqModel& model, const std::map<std::string, at::Tensor>& tensors, const std::string& source);

// The tensors Hugging Face stores for this model: named parameters; a tied model has only
// shared.weight (no embed_tokens, no lm_head).
std::vector<std::pair<std::string, at::Tensor>> model_state(const Seq2SeqModel& model);

// Writes config.json, generation_config.json, README.md (what Hugging Face runs differently, see
// hf_differences) and the weights into `dir`, built in a sibling temporary directory and renamed
// into place; files in `copy_files` (e.g. spiece.model) are copied in.
void save_model(const Seq2SeqModel& model, const std::string& dir, const std::vector<std::string>& copy_files = {});

// Fills DIR.tmp with `fill`, then renames it to `dir` (replacing what was there); on any error
// the temporary directory is removed and `dir` is left as it was.
void write_model_dir(const std::string& dir, const std::function<void(const std::string& tmp)>& fill);

// The README.md save_model writes.
std::string model_card(const ModelConfig& config);

// Casts every parameter to `dtype`, except the routers, which stay float32.
void set_model_dtype(Seq2SeqModel& model, c10::ScalarType dtype);

}  // namespace distill
