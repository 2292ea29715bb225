// Parameter and FLOP counts a user of a compression tool wants to see.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/arch/model_config.h"

namespace distill {

struct ParamCounts {
  int64_t total = 0;             // every stored parameter (tied embedding counted once)
  int64_t embedding = 0;         // shared embedding, plus lm_head when untied
  int64_t expert = 0;            // all expert FFN weights
  int64_t router = 0;            // router classifiers
  int64_t non_expert = 0;        // total - expert (what a dense student can inherit, routers aside)
  int64_t non_embedding = 0;     // total - embedding
  int64_t active_per_token = 0;  // parameters a token meets: non-expert + top_k experts per sparse layer
  int64_t per_expert = 0;        // one expert's FFN
};

// Counted from the configuration alone (equal to the module's parameters; a test checks it).
ParamCounts count_parameters(const ModelConfig& config);

// Forward-pass FLOPs (multiply-add = 2) of one example with `src_len` encoder and `tgt_len`
// decoder tokens: matrix products incl. attention scores and the LM head; norms and softmax ignored.
double forward_flops(const ModelConfig& config, int64_t src_len, int64_t tgt_len);

struct SparseLayerInfo {
  std::string name;   // Hugging Face prefix of the FFN sub-layer, e.g. encoder.block.1.layer.1
  int64_t experts = 0;
};
std::vector<SparseLayerInfo> sparse_layers(const ModelConfig& config);

}  // namespace distill
