#include "models/arch/model_stats.h"

namespace distill {

namespace {
int64_t ffn_params(const ModelConfig& c) { return (c.is_gated_act ? 3 : 2) * c.d_model * c.d_ff; }
int64_t attention_params(const ModelConfig& c) { return 4 * c.d_model * c.inner_dim(); }
}  // namespace

ParamCounts count_parameters(const ModelConfig& c) {
  ParamCounts p;
  p.per_expert = c.is_sparse() ? ffn_params(c) : 0;
  const int64_t D = c.d_model;
  const int64_t bias_table = c.relative_attention_num_buckets * c.num_heads;
  const int64_t router = c.num_experts * D + (c.router_bias ? c.num_experts : 0);
  p.embedding = c.vocab_size * D * (c.tie_word_embeddings ? 1 : 2);
  int64_t other = 2 * bias_table + 2 * D;  // position biases of both stacks, final norms
  auto add_ffn = [&](bool sparse) {
    other += D;  // FFN layer norm
    if (sparse) {
      p.expert += c.num_experts * ffn_params(c);
      p.router += router;
    } else {
      other += ffn_params(c);
    }
  };
  for (int64_t i = 0; i < c.num_layers; ++i) {
    other += attention_params(c) + D;
    add_ffn(c.encoder_block_is_sparse(i));
  }
  for (int64_t i = 0; i < c.num_decoder_layers; ++i) {
    other += 2 * (attention_params(c) + D);
    add_ffn(c.decoder_block_is_sparse(i));
  }
  p.total = p.embedding + other + p.expert + p.router;
  p.non_expert = p.total - p.expert;
  p.non_embedding = p.total - p.embedding;
  p.active_per_token = p.non_expert + static_cast<int64_t>(sparse_layers(c).size()) * c.router_top_k * p.per_expert;
  return p;
}

double forward_flops(const ModelConfig& c, int64_t S, int64_t T) {
  const double D = c.d_model, I = c.inner_dim(), F = c.d_ff, E = c.num_experts, V = c.vocab_size;
  const double ffn = 2.0 * (c.is_gated_act ? 3 : 2) * D * F;  // per token
  double f = 0;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    f += S * (2 * 4 * D * I + 2 * 2 * S * I);  // projections, scores and context
    f += S * (c.encoder_block_is_sparse(i) ? c.router_top_k * ffn + 2 * D * E : ffn);
  }
  for (int64_t i = 0; i < c.num_decoder_layers; ++i) {
    f += T * (2 * 4 * D * I + 2 * 2 * T * I);              // self-attention
    f += T * (2 * 2 * D * I + 2 * 2 * S * I) + S * 2 * 2 * D * I;  // cross: q, o; k, v on the memory
    f += T * (c.decoder_block_is_sparse(i) ? c.router_top_k * ffn + 2 * D * E : ffn);
  }
  f += T * 2 * D * V;  // LM head
  return f;
}

std::vector<SparseLayerInfo> sparse_layers(const ModelConfig& c) {
  std::vector<SparseLayerInfo> out;
  for (int64_t i = 0; i < c.num_layers; ++i)
    if (c.encoder_block_is_sparse(i)) out.push_back({"encoder.block." + std::to_string(i) + ".layer.1", c.num_experts});
  for (int64_t i = 0; i < c.num_decoder_layers; ++i)
    if (c.decoder_block_is_sparse(i)) out.push_back({"decoder.block." + std::to_string(i) + ".layer.2", c.num_experts});
  return out;
}

}  // namespace distill
