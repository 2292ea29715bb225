// config.json in Hugging Face's layout, for model_type "t5" and "switch_transformers".
#pragma once

#include <string>
#include <vector>

#include "models/arch/model_config.h"

namespace distill {

// Parses and validates a config.json. Every wrong type or value is reported at once, naming the
// file and the key (ConfigError); a missing or unparsable file is a CheckpointError.
ModelConfig read_hf_config(const std::string& path);

// The config.json text Hugging Face's T5ForConditionalGeneration or
// SwitchTransformersForConditionalGeneration loads. distill's own options (capacity mode and
// factors, top-k, expert dropout) are written as extra keys, which Hugging Face ignores.
std::string hf_config_json(const ModelConfig& config);

// How Hugging Face (transformers 4.37: T5ForConditionalGeneration or
// SwitchTransformersForConditionalGeneration) runs this config differently from distill, one
// sentence each; empty when it runs the model identically (to float32 rounding).
std::vector<std::string> hf_differences(const ModelConfig& config);

// hf_config_json written atomically.
void write_hf_config(const ModelConfig& config, const std::string& path);

}  // namespace distill
