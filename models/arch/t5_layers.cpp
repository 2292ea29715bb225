#include "models/arch/t5_layers.h"

#include <torch/nn/functional/activation.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "models/kernels/attention_core.h"
#include "models/errors.h"
#include "models/kernels/embedding.h"
#include "models/kernels/projection.h"
#include "models/kernels/rms_norm.h"

namespace distill {
namespace {

// The parts of an attention projection that stay float32 under bf16 products, leading the list:
// the scores' operands q and k (projection.h says why); v and o are bf16.
constexpr size_t kExactQk = 2;  // of q, k, v
constexpr size_t kExactQ = 1;   // q alone
constexpr size_t kExactK = 1;   // of k, v

}  // namespace

T5LayerNormImpl::T5LayerNormImpl(int64_t d_model, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({d_model}));
}

torch::Tensor T5LayerNormImpl::forward(const torch::Tensor& x) {
  return rms_norm(x, weight, eps_);
}

torch::Tensor relative_position_bucket(const torch::Tensor& relative_position, bool bidirectional,
                                       int64_t num_buckets, int64_t max_distance) {
  auto buckets = torch::zeros_like(relative_position);
  auto rel = relative_position;
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + (rel > 0).to(torch::kLong) * num_buckets;
    rel = rel.abs();
  } else {
    rel = -torch::clamp_max(rel, 0);
  }
  const int64_t max_exact = num_buckets / 2;
  auto is_small = rel < max_exact;
  // Same operations and scalar types as HF (float32 tensor, double scalars), so bucket boundaries
  // match to the token.
  auto large = max_exact + (torch::log(rel.to(torch::kFloat32) / max_exact) /
                            std::log(static_cast<double>(max_distance) / max_exact) *
                            (num_buckets - max_exact))
                               .to(torch::kLong);
  large = torch::clamp_max(large, num_buckets - 1);
  return buckets + torch::where(is_small, rel, large);
}

double mask_min_value(c10::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return std::numeric_limits<float>::lowest();
    case torch::kBFloat16: return static_cast<float>(std::numeric_limits<c10::BFloat16>::lowest());
    case torch::kFloat16: return static_cast<float>(std::numeric_limits<c10::Half>::lowest());
    case torch::kFloat64: return std::numeric_limits<double>::lowest();
    default: throw Error("mask_min_value: unsupported dtype " + std::string(c10::toString(dtype)));
  }
}

T5AttentionImpl::T5AttentionImpl(const AttentionOptions& options) : options_(options) {
  const int64_t inner = options.num_heads * options.d_kv;
  auto projection = [](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  q = register_module("q", projection(options.d_model, inner));
  k = register_module("k", projection(options.d_model, inner));
  v = register_module("v", projection(options.d_model, inner));
  o = register_module("o", projection(inner, options.d_model));
  // q, k and v share one allocation, back to back, so the fused projections (q, k, v for self-
  // attention; k, v for cross-attention) read them as one weight instead of concatenating them on
  // every call. Each stays its own parameter; weights moved apart later (set_data to another dtype
  // or device) are concatenated again.
  {
    torch::NoGradGuard no_grad;
    auto packed = torch::cat({q->weight, k->weight, v->weight}, 0);  // [3I, D]
    q->weight.set_data(packed.narrow(0, 0, inner));
    k->weight.set_data(packed.narrow(0, inner, inner));
    v->weight.set_data(packed.narrow(0, 2 * inner, inner));
  }
  if (options.has_relative_bias) {
    relative_attention_bias = register_module(
        "relative_attention_bias", torch::nn::Embedding(options.num_buckets, options.num_heads));
  }
  dropout_ = register_module("dropout", FastDropout(options.dropout));
}

torch::Tensor T5AttentionImpl::compute_bias(int64_t query_len, int64_t key_len, const torch::Device& device,
                                            int64_t query_offset) {
  auto& c = buckets_;
  if (c.query_len != query_len || c.key_len != key_len || c.query_offset != query_offset || c.table.device() != device) {
    auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
    auto context = torch::arange(query_offset, query_offset + query_len, opts).unsqueeze(1);  // [T, 1]
    auto memory = torch::arange(key_len, opts).unsqueeze(0);                                   // [1, S]
    c.table = relative_position_bucket(memory - context, options_.bidirectional, options_.num_buckets,
                                       options_.max_distance);  // [T, S]
    c.query_len = query_len, c.key_len = key_len, c.query_offset = query_offset;
  }
  auto values = embedding_lookup(relative_attention_bias->weight, c.table);  // [T, S, H]
  // Contiguous once here, not in every layer: the masks added to it and the attention core's rows
  // then all read [.., T, S] with unit stride.
  return values.permute({2, 0, 1}).contiguous().unsqueeze(0);  // [1, H, T, S]
}

torch::Tensor T5AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& kv,
                                       const torch::Tensor& bias) {
  const auto H = options_.num_heads;
  // One matmul for q, k and v (self) or k and v (cross): fewer, larger products run faster here. The
  // core reads the heads in place and returns the gradients in the same layout.
  const double p = is_training() ? dropout_->p() : 0.0;
  torch::Tensor ctx;  // [B, T, H*Dk]
  if (!kv.defined()) {
    auto qkv = project(x, std::vector<torch::Tensor>{q->weight, k->weight, v->weight}, kExactQk);  // [B, T, 3I]
    ctx = self_attention_core(qkv, H, bias, p);
  } else {
    auto qp = project(x, q->weight, kExactQ);                                                  // [B, T, I]
    auto kvp = project(kv, std::vector<torch::Tensor>{k->weight, v->weight}, kExactK);        // [B, S, 2I]
    ctx = cross_attention_core(qp, kvp, H, bias, p);
  }
  return project(ctx, o->weight);
}

torch::Tensor T5AttentionImpl::forward_step(const torch::Tensor& x, const torch::Tensor& kv,
                                            const torch::Tensor& bias, AttentionCache& cache, int64_t max_length) {
  const auto B = x.size(0), T = x.size(1), H = options_.num_heads, Dk = options_.d_kv, I = H * Dk;
  torch::Tensor qp;  // [B, T, I]
  if (kv.defined()) {
    qp = project(x, q->weight, kExactQ);
    if (!cache.k.defined()) {
      const auto S = kv.size(1);
      auto parts = project(kv, std::vector<torch::Tensor>{k->weight, v->weight}, kExactK).split(I, -1);  // [B, S, 2I]
      cache.k = parts[0].reshape({B, S, H, Dk}).transpose(1, 2);  // [B, H, S, Dk]
      cache.v = parts[1].reshape({B, S, H, Dk}).transpose(1, 2);
      cache.length = S;
    }
  } else {
    auto parts = project(x, std::vector<torch::Tensor>{q->weight, k->weight, v->weight}, kExactQk).split(I, -1);  // [B, T, 3I]
    qp = parts[0];
    if (cache.length + T > max_length) {
      throw Error("decoder cache holds " + std::to_string(max_length) + " positions; step " +
                  std::to_string(cache.length + T) + " asked for more");
    }
    const int64_t reserved = cache.k.defined() ? cache.k.size(2) : 0;
    if (cache.length + T > reserved) {  // grow by doubling, up to max_length: memory follows the output
      const int64_t grown = std::min(max_length, std::max({2 * reserved, cache.length + T, int64_t{16}}));
      auto k_new = torch::empty({B, H, grown, Dk}, x.options()), v_new = torch::empty({B, H, grown, Dk}, x.options());
      if (cache.length > 0) {
        k_new.narrow(2, 0, cache.length).copy_(cache.k.narrow(2, 0, cache.length));
        v_new.narrow(2, 0, cache.length).copy_(cache.v.narrow(2, 0, cache.length));
      }
      cache.k = k_new;
      cache.v = v_new;
    }
    cache.k.narrow(2, cache.length, T).copy_(parts[1].view({B, T, H, Dk}).transpose(1, 2));
    cache.v.narrow(2, cache.length, T).copy_(parts[2].view({B, T, H, Dk}).transpose(1, 2));
    cache.length += T;
  }
  auto qh = qp.view({B, T, H, Dk}).transpose(1, 2);  // [B, H, T, Dk]
  auto ctx = attention_core(qh, cache.k.narrow(2, 0, cache.length), cache.v.narrow(2, 0, cache.length), bias,
                            0.0);  // [B, T, H*Dk]
  return project(ctx, o->weight);
}

torch::Tensor apply_activation(const torch::Tensor& x, const std::string& act) {
  if (act == "relu") return torch::relu(x);
  if (act == "gelu") return torch::gelu(x);
  if (act == "gelu_new") return torch::gelu(x, "tanh");
  if (act == "silu") return torch::silu(x);
  throw ConfigError("unknown activation \"" + act + "\"");
}

DenseActDenseImpl::DenseActDenseImpl(const FfnOptions& options) : options_(options) {
  auto projection = [](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  if (options.gated) {
    wi_0 = register_module("wi_0", projection(options.d_model, options.d_ff));
    wi_1 = register_module("wi_1", projection(options.d_model, options.d_ff));
  } else {
    wi = register_module("wi", projection(options.d_model, options.d_ff));
  }
  wo = register_module("wo", projection(options.d_ff, options.d_model));
  dropout_ = register_module("dropout", FastDropout(options.dropout));
}

torch::Tensor DenseActDenseImpl::forward(const torch::Tensor& x) {
  if (!options_.gated && options_.act == "relu") {  // T5's and Switch's FFN: ReLU and dropout in one pass
    return project(relu_dropout(project(x, wi->weight), is_training() ? dropout_->p() : 0.0), wo->weight);
  }
  torch::Tensor h = options_.gated
                        ? apply_activation(project(x, wi_0->weight), options_.act) * project(x, wi_1->weight)
                        : apply_activation(project(x, wi->weight), options_.act);  // [..., F]
  return project(dropout_->forward(h), wo->weight);
}

T5LayerSelfAttentionImpl::T5LayerSelfAttentionImpl(const AttentionOptions& options, double eps, double dropout) {
  SelfAttention = register_module("SelfAttention", T5Attention(options));
  layer_norm = register_module("layer_norm", T5LayerNorm(options.d_model, eps));
  dropout_ = register_module("dropout", FastDropout(dropout));
}

torch::Tensor T5LayerSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& bias) {
  return dropout_->add_to(x, SelfAttention->forward(layer_norm->forward(x), {}, bias));
}

torch::Tensor T5LayerSelfAttentionImpl::forward_step(const torch::Tensor& x, const torch::Tensor& bias,
                                                     AttentionCache& cache, int64_t max_length) {
  return x + SelfAttention->forward_step(layer_norm->forward(x), {}, bias, cache, max_length);
}

T5LayerCrossAttentionImpl::T5LayerCrossAttentionImpl(const AttentionOptions& options, double eps, double dropout) {
  EncDecAttention = register_module("EncDecAttention", T5Attention(options));
  layer_norm = register_module("layer_norm", T5LayerNorm(options.d_model, eps));
  dropout_ = register_module("dropout", FastDropout(dropout));
}

torch::Tensor T5LayerCrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& memory,
                                                 const torch::Tensor& bias) {
  return dropout_->add_to(x, EncDecAttention->forward(layer_norm->forward(x), memory, bias));
}

torch::Tensor T5LayerCrossAttentionImpl::forward_step(const torch::Tensor& x, const torch::Tensor& memory,
                                                      const torch::Tensor& bias, AttentionCache& cache) {
  return x + EncDecAttention->forward_step(layer_norm->forward(x), memory, bias, cache, 0);
}

}  // namespace distill
