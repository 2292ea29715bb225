// Which hidden states a student matches against its teacher's: pairs of Hugging Face
// hidden_states indices per stack, parsed from the configuration's distillation.hidden_layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace distill {

// One matched pair of hidden states, indexed as Hugging Face's hidden_states: 0 the embeddings,
// i the output of block i, num_layers the stack's final (normed) output.
struct HiddenLayerPair {
  bool decoder = false;
  int64_t student = 0;
  int64_t teacher = 0;
};

// "encoder.3" (the same index in both models) or "decoder.2:decoder.4" (student:teacher), checked
// against the stacks' depths; an empty list matches every block output of both stacks at the
// same index. Throws ConfigError naming `key` and the bad entry.
std::vector<HiddenLayerPair> parse_hidden_layer_map(const std::vector<std::string>& spec, int64_t encoder_layers,
                                                    int64_t decoder_layers, const std::string& key);

}  // namespace distill
