#include "models/arch/seq2seq.h"

#include "models/errors.h"
#include "models/kernels/embedding.h"
#include "models/kernels/projection.h"
#include "models/kernels/mixed_precision.h"

#include <torch/nn/functional/loss.h>

#include <cmath>

namespace distill {
namespace {

AttentionOptions attention_options(const ModelConfig& c, bool is_decoder, bool has_bias) {
  AttentionOptions o;
  o.d_model = c.d_model;
  o.d_kv = c.d_kv;
  o.num_heads = c.num_heads;
  o.dropout = c.dropout_rate;
  o.has_relative_bias = has_bias;
  o.bidirectional = !is_decoder;
  o.num_buckets = c.relative_attention_num_buckets;
  o.max_distance = c.relative_attention_max_distance;
  return o;
}

FfnOptions ffn_options(const ModelConfig& c, double dropout) {
  FfnOptions o;
  o.d_model = c.d_model;
  o.d_ff = c.d_ff;
  o.act = c.dense_act_fn;
  o.gated = c.is_gated_act;
  o.dropout = dropout;
  return o;
}


// (1 - mask) * min as an additive [B, 1, 1, S] term; undefined mask -> undefined.
torch::Tensor padding_bias(const torch::Tensor& mask, c10::ScalarType dtype) {
  if (!mask.defined()) return {};
  auto m = mask.to(dtype).unsqueeze(1).unsqueeze(1);  // [B, 1, 1, S]
  return (1.0 - m) * mask_min_value(dtype);
}

}  // namespace

T5LayerFFImpl::T5LayerFFImpl(const ModelConfig& c, bool sparse) {
  const std::string name = c.model_type == "switch_transformers" ? "mlp" : "DenseReluDense";
  if (sparse) {
    sparse_ = register_module(name, SwitchSparseMlp(c.d_model, routing_options(c),
                                                    ffn_options(c, c.effective_expert_dropout())));
  } else {
    dense_ = register_module(name, DenseActDense(ffn_options(c, c.dropout_rate)));
  }
  layer_norm = register_module("layer_norm", T5LayerNorm(c.d_model, c.layer_norm_epsilon));
  dropout_ = register_module("dropout", FastDropout(c.dropout_rate));
}

torch::Tensor T5LayerFFImpl::forward(const torch::Tensor& x, std::vector<RouterOutput>* routing,
                                     const torch::Tensor& mask) {
  auto h = layer_norm->forward(x);
  if (!sparse_.is_empty()) {
    auto out = sparse_->forward(h, mask);
    if (routing) routing->push_back(std::move(out.router));
    h = out.hidden;
  } else {
    h = dense_->forward(h);
  }
  return dropout_->add_to(x, h);
}

T5BlockImpl::T5BlockImpl(const ModelConfig& c, bool is_decoder, bool has_relative_bias, bool sparse) {
  layer = register_module("layer", torch::nn::ModuleList());
  self_attention = T5LayerSelfAttention(attention_options(c, is_decoder, has_relative_bias),
                                        c.layer_norm_epsilon, c.dropout_rate);
  layer->push_back(self_attention);
  if (is_decoder) {
    cross_attention = T5LayerCrossAttention(attention_options(c, is_decoder, false),
                                            c.layer_norm_epsilon, c.dropout_rate);
    layer->push_back(cross_attention);
  }
  ff = T5LayerFF(c, sparse);
  layer->push_back(ff);
}

torch::Tensor T5BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& self_bias,
                                   const torch::Tensor& memory, const torch::Tensor& cross_bias,
                                   std::vector<RouterOutput>* routing, const torch::Tensor& routing_mask) {
  auto h = self_attention->forward(x, self_bias);
  if (!cross_attention.is_empty()) h = cross_attention->forward(h, memory, cross_bias);
  return ff->forward(h, routing, routing_mask);
}

torch::Tensor T5BlockImpl::forward_step(const torch::Tensor& x, const torch::Tensor& self_bias,
                                        const torch::Tensor& memory, const torch::Tensor& cross_bias,
                                        AttentionCache& self_cache, AttentionCache& cross_cache, int64_t max_length) {
  auto h = self_attention->forward_step(x, self_bias, self_cache, max_length);
  h = cross_attention->forward_step(h, memory, cross_bias, cross_cache);
  return ff->forward(h, nullptr);
}

T5StackImpl::T5StackImpl(const ModelConfig& c, bool is_decoder, std::string prefix)
    : is_decoder_(is_decoder), prefix_(std::move(prefix)), num_heads_(c.num_heads) {
  block = register_module("block", torch::nn::ModuleList());
  const int64_t n = is_decoder ? c.num_decoder_layers : c.num_layers;
  for (int64_t i = 0; i < n; ++i) {
    const bool sparse = is_decoder ? c.decoder_block_is_sparse(i) : c.encoder_block_is_sparse(i);
    blocks.push_back(T5Block(c, is_decoder, /*has_relative_bias=*/i == 0, sparse));
    block->push_back(blocks.back());
  }
  final_layer_norm = register_module("final_layer_norm", T5LayerNorm(c.d_model, c.layer_norm_epsilon));
  dropout_ = register_module("dropout", FastDropout(c.dropout_rate));
}

StackOutput T5StackImpl::forward(const torch::Tensor& embeds, const torch::Tensor& mask,
                                 const torch::Tensor& memory, const torch::Tensor& memory_mask,
                                 bool keep_hidden_states, const torch::Tensor& routing_mask) {
  const auto B = embeds.size(0), T = embeds.size(1);
  const auto dtype = embeds.scalar_type();
  const auto device = embeds.device();

  // Self-attention bias: position bias (owned by block 0) plus padding / causal mask, shared by
  // every block of the stack.
  auto bias = blocks[0]->self_attention->SelfAttention->compute_bias(T, T, device).to(dtype);  // [1, H, T, T]
  if (is_decoder_) {
    auto ids = torch::arange(T, torch::TensorOptions().device(device));
    auto allowed = (ids.unsqueeze(0) <= ids.unsqueeze(1)).to(dtype).unsqueeze(0);  // [1, T, T]
    auto m = mask.defined() ? mask.to(dtype) : torch::ones({B, T}, embeds.options());
    allowed = allowed * m.unsqueeze(1);                                             // [B, T, T]
    bias = bias + ((1.0 - allowed) * mask_min_value(dtype)).unsqueeze(1);          // [B, H, T, T]
  } else if (mask.defined()) {
    bias = bias + padding_bias(mask, dtype);  // [B, H, T, T]
  }
  torch::Tensor cross_bias;
  if (is_decoder_) {
    cross_bias = memory_mask.defined() ? padding_bias(memory_mask, dtype)
                                       : torch::zeros({1, 1, 1, memory.size(1)}, embeds.options());
  }

  StackOutput out;
  std::vector<RouterOutput> routing;
  std::vector<size_t> sparse_blocks;
  auto h = dropout_->forward(embeds);
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (keep_hidden_states) out.hidden_states.push_back(h);
    const size_t before = routing.size();
    h = blocks[i]->forward(h, bias, memory, cross_bias, &routing, routing_mask.defined() ? routing_mask : mask);
    if (routing.size() > before) sparse_blocks.push_back(i);
  }
  h = dropout_->forward(final_layer_norm->forward(h));
  if (keep_hidden_states) out.hidden_states.push_back(h);
  out.last_hidden_state = h;
  for (size_t j = 0; j < routing.size(); ++j) {
    out.routing.emplace_back(prefix_ + "block." + std::to_string(sparse_blocks[j]) + ".layer." +
                                 (is_decoder_ ? "2." : "1."),
                             std::move(routing[j]));
  }
  return out;
}

torch::Tensor T5StackImpl::forward_step(const torch::Tensor& embeds, const torch::Tensor& memory,
                                        const torch::Tensor& memory_mask, DecoderCache& cache) {
  if (!is_decoder_) throw Error("forward_step: incremental decoding is for the decoder stack");
  const auto T = embeds.size(1);
  const auto dtype = embeds.scalar_type();
  if (cache.self.empty()) {
    cache.self.resize(blocks.size());
    cache.cross.resize(blocks.size());
  }
  // Queries at positions length.. over keys 0..length+T-1: causal within the new positions only.
  auto bias = blocks[0]->self_attention->SelfAttention->compute_bias(T, cache.length + T, embeds.device(),
                                                                     cache.length).to(dtype);  // [1, H, T, L]
  if (T > 1) {
    auto q = torch::arange(cache.length, cache.length + T, torch::TensorOptions().device(embeds.device()));
    auto k = torch::arange(cache.length + T, torch::TensorOptions().device(embeds.device()));
    auto allowed = (k.unsqueeze(0) <= q.unsqueeze(1)).to(dtype);  // [T, L]
    bias = bias + (1.0 - allowed) * mask_min_value(dtype);
  }
  auto cross_bias = memory_mask.defined() ? padding_bias(memory_mask, dtype)
                                          : torch::zeros({1, 1, 1, memory.size(1)}, embeds.options());
  auto h = embeds;  // [B, T, D]
  for (size_t i = 0; i < blocks.size(); ++i) {
    h = blocks[i]->forward_step(h, bias, memory, cross_bias, cache.self[i], cache.cross[i], cache.max_length);
  }
  cache.length += T;
  return final_layer_norm->forward(h);
}

Seq2SeqModelImpl::Seq2SeqModelImpl(ModelConfig config) : config_(std::move(config)) {
  config_.validate("model");
  shared = register_module("shared", torch::nn::Embedding(config_.vocab_size, config_.d_model));
  encoder = register_module("encoder", T5Stack(config_, false, "encoder."));
  decoder = register_module("decoder", T5Stack(config_, true, "decoder."));
  if (!config_.tie_word_embeddings) {
    lm_head = register_module(
        "lm_head", torch::nn::Linear(torch::nn::LinearOptions(config_.d_model, config_.vocab_size).bias(false)));
  }
}

StackOutput Seq2SeqModelImpl::encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     bool keep_hidden_states) {
  Bf16Products amp(bf16_products_);
  return encoder->forward(embedding_lookup(shared->weight, input_ids), attention_mask, {}, {}, keep_hidden_states);
}

StackOutput Seq2SeqModelImpl::decode(const torch::Tensor& decoder_input_ids,
                                     const torch::Tensor& decoder_attention_mask, const torch::Tensor& memory,
                                     const torch::Tensor& memory_mask, bool keep_hidden_states,
                                     const torch::Tensor& routing_mask) {
  Bf16Products amp(bf16_products_);
  return decoder->forward(embedding_lookup(shared->weight, decoder_input_ids), decoder_attention_mask, memory, memory_mask,
                          keep_hidden_states, routing_mask);
}

torch::Tensor Seq2SeqModelImpl::decode_step(const torch::Tensor& decoder_input_ids, const torch::Tensor& memory,
                                            const torch::Tensor& memory_mask, DecoderCache& cache) {
  Bf16Products amp(bf16_products_);
  return decoder->forward_step(embedding_lookup(shared->weight, decoder_input_ids), memory, memory_mask, cache);
}

torch::Tensor Seq2SeqModelImpl::lm_logits(const torch::Tensor& hidden) {
  Fp32Products fp32;  // the LM head stays float32: the soft labels and the loss read these logits
  if (!lm_head.is_empty()) return project(hidden, lm_head->weight);
  // Tied head: T5 rescales the decoder output by D^-0.5 before projecting on the embedding.
  return project(hidden * std::pow(static_cast<double>(config_.d_model), -0.5), shared->weight);
}

Seq2SeqOutput Seq2SeqModelImpl::forward(const Seq2SeqInputs& in, bool keep_hidden_states) {
  Seq2SeqOutput out;
  auto enc = encode(in.input_ids, in.attention_mask, keep_hidden_states);
  auto dec_ids = in.decoder_input_ids.defined()
                     ? in.decoder_input_ids
                     : shift_right(in.labels, config_.decoder_start_token_id, config_.pad_token_id);
  // The decoder's real tokens, for routers that ignore padding: its mask, else the labels'.
  torch::Tensor dec_routing_mask = in.decoder_attention_mask;
  if (!dec_routing_mask.defined() && in.labels.defined() && config_.router_ignore_padding_tokens) {
    dec_routing_mask = in.labels != -100;
  }
  auto dec = decode(dec_ids, in.decoder_attention_mask, enc.last_hidden_state, in.attention_mask,
                    keep_hidden_states, dec_routing_mask);
  out.logits = lm_logits(dec.last_hidden_state);  // [B, T, V]
  out.encoder_last_hidden_state = enc.last_hidden_state;
  out.encoder_hidden_states = std::move(enc.hidden_states);
  out.decoder_hidden_states = std::move(dec.hidden_states);

  std::vector<RouterOutput> enc_routing, dec_routing;
  for (auto& [name, r] : enc.routing) enc_routing.push_back(r);
  for (auto& [name, r] : dec.routing) dec_routing.push_back(r);
  out.routing = std::move(enc.routing);
  for (auto& r : dec.routing) out.routing.push_back(std::move(r));

  if (in.labels.defined()) {
    out.ce_loss = token_cross_entropy(out.logits, in.labels);
    auto el = router_losses(enc_routing, out.logits.device(), config_.router_loss);
    auto dl = router_losses(dec_routing, out.logits.device(), config_.router_loss);
    out.encoder_z_loss = el.z_loss;
    out.encoder_aux_loss = el.aux_loss;
    out.decoder_z_loss = dl.z_loss;
    out.decoder_aux_loss = dl.aux_loss;
    out.layer_aux_loss = el.layer_aux;
    out.layer_aux_loss.insert(out.layer_aux_loss.end(), dl.layer_aux.begin(), dl.layer_aux.end());
    out.loss = out.ce_loss + config_.router_z_loss_coef * (el.z_loss + dl.z_loss) +
               config_.router_aux_loss_coef * (el.aux_loss + dl.aux_loss);
  }
  return out;
}

torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  const auto V = logits.size(-1);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, V}).to(torch::kFloat32), labels.reshape({-1}),
                                              torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

torch::Tensor shift_right(const torch::Tensor& labels, int64_t decoder_start_token_id, int64_t pad_token_id) {
  auto shifted = torch::empty_like(labels);
  shifted.select(1, 0).fill_(decoder_start_token_id);
  shifted.narrow(1, 1, labels.size(1) - 1).copy_(labels.narrow(1, 0, labels.size(1) - 1));
  return shifted.masked_fill(shifted == -100, pad_token_id);
}

RoutingOptions routing_options(const ModelConfig& c) {
  RoutingOptions o;
  o.num_experts = c.num_experts;
  o.top_k = c.router_top_k;
  o.capacity_mode = c.capacity_mode;
  o.expert_capacity = c.expert_capacity;
  o.capacity_factor_train = c.capacity_factor_train;
  o.capacity_factor_eval = c.capacity_factor_eval;
  o.jitter_noise = c.router_jitter_noise;
  o.router_bias = c.router_bias;
  o.ignore_padding = c.router_ignore_padding_tokens;
  return o;
}

bool is_expert_parameter(const std::string& name) { return name.find(".mlp.experts.") != std::string::npos; }
bool is_router_parameter(const std::string& name) { return name.find(".mlp.router.") != std::string::npos; }

}  // namespace distill
