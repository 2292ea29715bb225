// Architecture of a T5 / Switch Transformer encoder-decoder: what the model modules are built from.
// Field names and meanings follow Hugging Face's T5Config / SwitchTransformersConfig.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace distill {

// How an expert's capacity (the most tokens it processes) is set.
enum class CapacityMode {
  kFixed,   // `expert_capacity` tokens per expert and per sequence (Hugging Face's behaviour)
  kFactor,  // ceil(tokens_in_batch / num_experts * capacity_factor) per batch (the paper's)
};

const char* to_string(CapacityMode mode);

// How the router losses of a stack's sparse layers are combined.
enum class RouterLoss {
  kPaper,  // each layer's z-loss and load-balancing loss, averaged over the layers (the paper's)
  kHf,     // one loss over the layers' tokens concatenated, dropped tokens counted as expert 0
           // (Hugging Face's SwitchTransformers); the same as kPaper with one sparse layer per stack
};

const char* to_string(RouterLoss rule);

struct ModelConfig {
  std::string model_type = "t5";               // "t5" (dense) or "switch_transformers" (sparse)
  int64_t vocab_size = 32128;                  // V: rows of the shared embedding
  int64_t d_model = 512;                       // D: width of the residual stream
  int64_t d_kv = 64;                           // width of one attention head
  int64_t d_ff = 2048;                         // F: hidden width of every FFN (dense or expert)
  int64_t num_heads = 8;                       // H: attention heads per layer
  int64_t num_layers = 6;                      // encoder blocks
  int64_t num_decoder_layers = 6;              // decoder blocks
  int64_t relative_attention_num_buckets = 32; // position-bias buckets (first layer of each stack)
  int64_t relative_attention_max_distance = 128;  // distance beyond which buckets saturate
  double dropout_rate = 0.1;                   // dropout everywhere T5 has it, experts excepted
  double layer_norm_epsilon = 1e-6;            // RMS norm epsilon
  std::string dense_act_fn = "relu";           // relu | gelu | gelu_new | silu
  bool is_gated_act = false;                   // gated FFN (T5 v1.1 "gated-gelu": wi_0, wi_1, wo)
  bool tie_word_embeddings = true;             // LM head = shared embedding, output * D^-0.5
  int64_t pad_token_id = 0;                    // padding id (also masked out of losses)
  int64_t eos_token_id = 1;                    // end of sequence: generation stops here
  int64_t decoder_start_token_id = 0;          // first decoder input

  // ---- Switch (sparse) part; num_experts == 0 means a dense T5 ----
  int64_t num_experts = 0;                     // E: experts per sparse layer
  int64_t encoder_sparse_step = 0;             // HF rule: block i is sparse if i % step == 1 or step == 1
  int64_t decoder_sparse_step = 0;             // same for decoder blocks; 0 = no sparse block
  CapacityMode capacity_mode = CapacityMode::kFixed;  // how expert capacity is computed
  int64_t expert_capacity = 64;                // kFixed: tokens per expert and sequence
  double capacity_factor_train = 1.25;         // kFactor: capacity factor in training
  double capacity_factor_eval = 2.0;           // kFactor: capacity factor in evaluation
  int64_t router_top_k = 1;                    // experts per token; k > 1 renormalises the gates
  double router_jitter_noise = 0.01;           // multiplicative uniform noise on router input (train)
  bool router_bias = false;                    // router classifier has a bias
  bool router_ignore_padding_tokens = false;   // padding takes no expert, no capacity and no part in the
                                               // router losses (Mesh TensorFlow's Switch). Hugging Face
                                               // stores this key but routes padding like any token
  double router_z_loss_coef = 0.001;           // weight of the router z-loss in the model loss
  double router_aux_loss_coef = 0.001;         // weight of the load-balancing loss in the model loss
  RouterLoss router_loss = RouterLoss::kPaper; // how a stack's layers' router losses combine
  double expert_dropout_rate = -1;             // dropout inside experts; < 0 means dropout_rate

  bool is_sparse() const { return num_experts > 0; }
  bool encoder_block_is_sparse(int64_t i) const { return block_is_sparse(i, encoder_sparse_step); }
  bool decoder_block_is_sparse(int64_t i) const { return block_is_sparse(i, decoder_sparse_step); }
  double effective_expert_dropout() const {
    return expert_dropout_rate < 0 ? dropout_rate : expert_dropout_rate;
  }
  int64_t inner_dim() const { return num_heads * d_kv; }

  // Every problem found, one line each; empty when the config is usable.
  std::vector<std::string> problems() const;
  // Throws ConfigError listing every problem, prefixed with `where` (a file name or a role).
  void validate(const std::string& where) const;

  // The dense counterpart: same shape, every sparse FFN replaced by one dense FFN (model_type t5).
  ModelConfig dense_counterpart() const;

 private:
  bool block_is_sparse(int64_t i, int64_t step) const {
    if (num_experts <= 0 || step <= 0) return false;
    return step == 1 || i % step == 1;
  }
};

}  // namespace distill
