// T5 building blocks with Hugging Face's submodule names: RMS norm, attention with relative
// position bias, dense FFN (ReLU or gated), and the residual sub-layers that wrap them.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "models/kernels/fast_dropout.h"

namespace distill {

// T5's RMS norm: no mean subtraction, no bias, statistics in float32.
class T5LayerNormImpl : public torch::nn::Module {
 public:
  T5LayerNormImpl(int64_t d_model, double eps);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(T5LayerNorm);

// HF T5Attention._relative_position_bucket on a tensor of (key - query) offsets.
torch::Tensor relative_position_bucket(const torch::Tensor& relative_position, bool bidirectional,
                                       int64_t num_buckets, int64_t max_distance);

// Additive mask value for masked positions (HF uses finfo(dtype).min).
double mask_min_value(c10::ScalarType dtype);

struct AttentionOptions {
  int64_t d_model = 512;           // D
  int64_t d_kv = 64;               // width of one head
  int64_t num_heads = 8;           // H
  double dropout = 0.1;            // on the attention probabilities
  bool has_relative_bias = false;  // owns the position-bias table (first layer of a stack)
  bool bidirectional = true;       // encoder buckets (true) or causal decoder buckets (false)
  int64_t num_buckets = 32;        // position-bias buckets
  int64_t max_distance = 128;      // distance at which buckets saturate
};

// Keys and values of one attention layer kept between decoding steps.
struct AttentionCache {
  torch::Tensor k, v;    // [B, H, L, Dk]: self attention, L = positions reserved so far (grown by
                         // doubling); cross attention, L = S, projected from the encoder output once
  int64_t length = 0;    // positions filled
};

// Multi-head attention without the 1/sqrt(d) scaling (T5 folds it into the initialisation).
class T5AttentionImpl : public torch::nn::Module {
 public:
  explicit T5AttentionImpl(const AttentionOptions& options);

  // x [B, T, D]; kv [B, S, D] for cross attention or undefined for self attention;
  // bias [1 or B, H, T, S] = position bias plus additive mask. Returns [B, T, D].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& kv, const torch::Tensor& bias);

  // Incremental decoding (eval only). Self attention (kv undefined): x [B, T, D] are the next T
  // positions; their keys and values are appended to `cache` (at most `max_length` positions in
  // all) and they attend to every cached position; bias [1 or B, H, T, cache + T].
  // Cross attention: kv [B, S, D] is projected into `cache` at the first call and reused.
  torch::Tensor forward_step(const torch::Tensor& x, const torch::Tensor& kv, const torch::Tensor& bias,
                             AttentionCache& cache, int64_t max_length);

  // Position bias [1, H, T, S] for `query_len` queries at positions query_offset.. over `key_len` keys.
  torch::Tensor compute_bias(int64_t query_len, int64_t key_len, const torch::Device& device,
                             int64_t query_offset = 0);

  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  torch::nn::Embedding relative_attention_bias{nullptr};

 private:
  AttentionOptions options_;
  FastDropout dropout_{nullptr};
  // The last bucket table [T, S] and what it was made for: the same lengths come back every batch,
  // and the table is about twenty small integer ops per stack and forward.
  struct Buckets {
    int64_t query_len = -1, key_len = -1, query_offset = -1;
    torch::Tensor table;
  } buckets_;
};
TORCH_MODULE(T5Attention);

struct FfnOptions {
  int64_t d_model = 512;          // D
  int64_t d_ff = 2048;            // F
  std::string act = "relu";       // relu | gelu | gelu_new | silu
  bool gated = false;             // act(wi_0 x) * wi_1 x instead of act(wi x)
  double dropout = 0.1;           // on the hidden activations
};

// T5DenseActDense / T5DenseGatedActDense (and each Switch expert): D -> F -> D.
class DenseActDenseImpl : public torch::nn::Module {
 public:
  explicit DenseActDenseImpl(const FfnOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., D] -> [..., D]

  torch::nn::Linear wi{nullptr}, wi_0{nullptr}, wi_1{nullptr}, wo{nullptr};

 private:
  FfnOptions options_;
  FastDropout dropout_{nullptr};
};
TORCH_MODULE(DenseActDense);

torch::Tensor apply_activation(const torch::Tensor& x, const std::string& act);

// Pre-norm residual self-attention: x + dropout(SelfAttention(layer_norm(x))).
class T5LayerSelfAttentionImpl : public torch::nn::Module {
 public:
  T5LayerSelfAttentionImpl(const AttentionOptions& options, double eps, double dropout);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias);
  // One decoding step over cached keys and values (eval only: no dropout).
  torch::Tensor forward_step(const torch::Tensor& x, const torch::Tensor& bias, AttentionCache& cache,
                             int64_t max_length);

  T5Attention SelfAttention{nullptr};
  T5LayerNorm layer_norm{nullptr};

 private:
  FastDropout dropout_{nullptr};
};
TORCH_MODULE(T5LayerSelfAttention);

// Pre-norm residual cross-attention over the encoder output.
class T5LayerCrossAttentionImpl : public torch::nn::Module {
 public:
  T5LayerCrossAttentionImpl(const AttentionOptions& options, double eps, double dropout);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& bias);
  // One decoding step; the memory's keys and values are projected once into `cache`.
  torch::Tensor forward_step(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& bias,
                             AttentionCache& cache);

  T5Attention EncDecAttention{nullptr};
  T5LayerNorm layer_norm{nullptr};

 private:
  FastDropout dropout_{nullptr};
};
TORCH_MODULE(T5LayerCrossAttention);

}  // namespace distill
