// The T5 / Switch Transformer encoder-decoder, with Hugging Face's parameter names: a model built
// from a switch_transformers config is SwitchTransformersForConditionalGeneration, from a t5
// config T5ForConditionalGeneration, so checkpoint import and export are name lookups.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/arch/model_config.h"
#include "models/arch/switch_moe.h"
#include "models/arch/t5_layers.h"

namespace distill {

// Pre-norm residual FFN sub-layer. Its FFN is registered as "DenseReluDense" in a t5 model and
// as "mlp" in a switch_transformers model (dense or sparse), matching each HF class.
class T5LayerFFImpl : public torch::nn::Module {
 public:
  T5LayerFFImpl(const ModelConfig& config, bool sparse);
  // x [B, S, D] -> [B, S, D]; appends this layer's routing to `routing` when sparse. mask [B, S]
  // (1 = real token) tells a sparse layer that ignores padding what to route.
  torch::Tensor forward(const torch::Tensor& x, std::vector<RouterOutput>* routing, const torch::Tensor& mask = {});

  bool is_sparse() const { return !sparse_.is_empty(); }
  DenseActDense dense() const { return dense_; }
  SwitchSparseMlp sparse() const { return sparse_; }

  T5LayerNorm layer_norm{nullptr};

 private:
  DenseActDense dense_{nullptr};
  SwitchSparseMlp sparse_{nullptr};
  FastDropout dropout_{nullptr};
};
TORCH_MODULE(T5LayerFF);

class T5BlockImpl : public torch::nn::Module {
 public:
  T5BlockImpl(const ModelConfig& config, bool is_decoder, bool has_relative_bias, bool sparse);
  // x [B, T, D]; self_bias [.., H, T, T]; memory [B, S, D] and cross_bias [B, 1, 1, S] in the decoder.
  // routing_mask [B, T]: the real tokens, for sparse layers that ignore padding.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& self_bias, const torch::Tensor& memory,
                        const torch::Tensor& cross_bias, std::vector<RouterOutput>* routing,
                        const torch::Tensor& routing_mask = {});

  // One decoding step of a decoder block (eval only): x [B, T, D] the next positions.
  torch::Tensor forward_step(const torch::Tensor& x, const torch::Tensor& self_bias, const torch::Tensor& memory,
                             const torch::Tensor& cross_bias, AttentionCache& self_cache,
                             AttentionCache& cross_cache, int64_t max_length);

  torch::nn::ModuleList layer;  // [self-attention, (cross-attention,) FFN], HF's "layer.N"
  T5LayerSelfAttention self_attention{nullptr};
  T5LayerCrossAttention cross_attention{nullptr};
  T5LayerFF ff{nullptr};
};
TORCH_MODULE(T5Block);

struct StackOutput {
  torch::Tensor last_hidden_state;            // [B, T, D] after the final norm (and dropout)
  std::vector<torch::Tensor> hidden_states;   // embeddings, input of each block, final output
  std::vector<std::pair<std::string, RouterOutput>> routing;  // HF prefix -> routing, per sparse layer
};

// What incremental decoding keeps between steps: every decoder block's self-attention keys and
// values so far and its cross-attention keys and values of the encoder output.
struct DecoderCache {
  std::vector<AttentionCache> self, cross;  // one per decoder block
  int64_t length = 0;                       // decoder positions done
  int64_t max_length = 0;                   // positions at most (the longest decode); the keys and
                                            // values grow by doubling up to it
};

class T5StackImpl : public torch::nn::Module {
 public:
  T5StackImpl(const ModelConfig& config, bool is_decoder, std::string prefix);
  // embeds [B, T, D]; mask [B, T] (1 = real token) or undefined; memory/memory_mask for the decoder.
  // routing_mask [B, T]: the real tokens for sparse layers that ignore padding; undefined: `mask`.
  StackOutput forward(const torch::Tensor& embeds, const torch::Tensor& mask, const torch::Tensor& memory,
                      const torch::Tensor& memory_mask, bool keep_hidden_states,
                      const torch::Tensor& routing_mask = {});

  // Decoder only, eval only: embeds [B, T, D] of the next T positions after the cache's -> the
  // final-norm output [B, T, D]; the cache grows by T. A sparse layer routes each step's B x T
  // tokens as one batch (its capacity is over them, unless a DroplessRouting scope is open, as
  // greedy_generate's is).
  torch::Tensor forward_step(const torch::Tensor& embeds, const torch::Tensor& memory, const torch::Tensor& memory_mask,
                             DecoderCache& cache);

  torch::nn::ModuleList block;
  std::vector<T5Block> blocks;
  T5LayerNorm final_layer_norm{nullptr};

 private:
  bool is_decoder_;
  std::string prefix_;  // "encoder." or "decoder."
  int64_t num_heads_;
  FastDropout dropout_{nullptr};
};
TORCH_MODULE(T5Stack);

// Model inputs, as Hugging Face names them. Undefined optional tensors mean "not given".
struct Seq2SeqInputs {
  torch::Tensor input_ids;               // [B, S] int64
  torch::Tensor attention_mask;          // [B, S] 1 = token, 0 = padding (optional)
  torch::Tensor decoder_input_ids;       // [B, T] int64; derived from labels when undefined
  torch::Tensor decoder_attention_mask;  // [B, T] (optional; causal masking is always applied)
  torch::Tensor labels;                  // [B, T] int64, -100 = ignored (optional)
};

struct Seq2SeqOutput {
  torch::Tensor logits;                     // [B, T, V]
  torch::Tensor encoder_last_hidden_state;  // [B, S, D]
  std::vector<torch::Tensor> encoder_hidden_states;  // filled when asked for
  std::vector<torch::Tensor> decoder_hidden_states;
  std::vector<std::pair<std::string, RouterOutput>> routing;  // encoder layers first
  // Losses, defined when labels were given (router losses are zero for a dense model).
  torch::Tensor ce_loss;           // mean token cross-entropy over labels != -100
  torch::Tensor encoder_z_loss, encoder_aux_loss, decoder_z_loss, decoder_aux_loss;
  torch::Tensor loss;              // ce + z_coef * (z_enc + z_dec) + aux_coef * (aux_enc + aux_dec)
  std::vector<torch::Tensor> layer_aux_loss;  // each sparse layer's load balancing, detached, as `routing`
};

class Seq2SeqModelImpl : public torch::nn::Module {
 public:
  explicit Seq2SeqModelImpl(ModelConfig config);

  Seq2SeqOutput forward(const Seq2SeqInputs& inputs, bool keep_hidden_states = false);

  StackOutput encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                     bool keep_hidden_states = false);
  StackOutput decode(const torch::Tensor& decoder_input_ids, const torch::Tensor& decoder_attention_mask,
                     const torch::Tensor& memory, const torch::Tensor& memory_mask,
                     bool keep_hidden_states = false, const torch::Tensor& routing_mask = {});
  // Incremental decoding: the next positions' ids [B, T] -> decoder output [B, T, D], keys and values
  // of earlier positions read from `cache` (start with an empty one whose max_length is the longest
  // decode). Equal to `decode` on the whole prefix, without recomputing it.
  torch::Tensor decode_step(const torch::Tensor& decoder_input_ids, const torch::Tensor& memory,
                            const torch::Tensor& memory_mask, DecoderCache& cache);
  // Decoder hidden state [B, T, D] -> logits [B, T, V] (tied: rescaled by D^-0.5 first).
  torch::Tensor lm_logits(const torch::Tensor& hidden);

  const ModelConfig& config() const { return config_; }
  // Matrix products in bf16 (float32 accumulation, weights' bf16 copies cast once per version) in
  // every pass of this model: a frozen teacher's precision. Norms, softmaxes and routers stay float32.
  void set_bf16_products(bool on) { bf16_products_ = on; }

  torch::nn::Embedding shared{nullptr};
  T5Stack encoder{nullptr}, decoder{nullptr};
  torch::nn::Linear lm_head{nullptr};  // only when embeddings are untied

 private:
  ModelConfig config_;
  bool bf16_products_ = false;
};
TORCH_MODULE(Seq2SeqModel);

// The routing rule of a model's sparse layers (experts, top-k, capacity, jitter, padding).
RoutingOptions routing_options(const ModelConfig& config);

// Mean token cross-entropy over labels != -100, in float32: logits [B, T, V], labels [B, T].
torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels);

// HF's shift_right: [decoder_start, labels[:-1]] with -100 replaced by the pad id.
torch::Tensor shift_right(const torch::Tensor& labels, int64_t decoder_start_token_id, int64_t pad_token_id);

// True for parameters that belong to a Switch expert or router (not copied to a dense student).
bool is_expert_parameter(const std::string& name);
bool is_router_parameter(const std::string& name);

}  // namespace distill
