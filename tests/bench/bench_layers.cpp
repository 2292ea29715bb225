// Micro-benchmarks of the layers on the small8 shape (d_model 128, d_ff 256, 4 heads, batch 8 x
// 128 tokens, 8 experts): build/bench_layers [--benchmark_filter=Switch]. Not part of the tests.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "distill/runtime.h"
#include "models/batched_matmul.h"
#include "models/fast_dropout.h"
#include "models/switch_moe.h"
#include "models/t5_layers.h"

namespace {

using namespace distill;

constexpr int64_t B = 8, S = 128, D = 128, F = 256, H = 4, E = 8;

FfnOptions ffn() {
  FfnOptions o;
  o.d_model = D;
  o.d_ff = F;
  o.dropout = 0.0;
  return o;
}

void BM_DenseFfnFwdBwd(benchmark::State& state) {
  DenseActDense layer(ffn());
  auto x = torch::randn({B, S, D}, torch::requires_grad());
  for (auto _ : state) {
    layer->zero_grad();
    layer->forward(x).sum().backward();
  }
}
BENCHMARK(BM_DenseFfnFwdBwd)->Unit(benchmark::kMicrosecond);

void BM_SwitchLayerFwdBwd(benchmark::State& state) {
  RoutingOptions r;
  r.num_experts = E;
  r.capacity_mode = CapacityMode::kFactor;
  SwitchSparseMlp layer(D, r, ffn());
  auto x = torch::randn({B, S, D}, torch::requires_grad());
  for (auto _ : state) {
    layer->zero_grad();
    layer->forward(x).hidden.sum().backward();
  }
}
BENCHMARK(BM_SwitchLayerFwdBwd)->Unit(benchmark::kMicrosecond);

void BM_RouteTokens(benchmark::State& state) {
  auto probs = torch::softmax(torch::randn({B, S, E}), -1);
  for (auto _ : state) benchmark::DoNotOptimize(route_tokens(probs, 1, CapacityMode::kFactor, 160));
}
BENCHMARK(BM_RouteTokens)->Unit(benchmark::kMicrosecond);

void BM_SelfAttentionFwdBwd(benchmark::State& state) {
  AttentionOptions o;
  o.d_model = D;
  o.d_kv = D / H;
  o.num_heads = H;
  o.dropout = 0.0;
  o.has_relative_bias = true;
  T5Attention attn(o);
  auto x = torch::randn({B, S, D}, torch::requires_grad());
  auto bias = attn->compute_bias(S, S, torch::kCPU).detach();
  for (auto _ : state) {
    attn->zero_grad();
    attn->forward(x, {}, bias).sum().backward();
  }
}
BENCHMARK(BM_SelfAttentionFwdBwd)->Unit(benchmark::kMicrosecond);

void BM_BatchedMatmul(benchmark::State& state) {
  auto q = torch::randn({B, H, S, D / H}), k = torch::randn({B, H, D / H, S});
  for (auto _ : state) benchmark::DoNotOptimize(batched_matmul(q, k));
}
BENCHMARK(BM_BatchedMatmul)->Unit(benchmark::kMicrosecond);

void BM_TorchMatmul(benchmark::State& state) {
  auto q = torch::randn({B, H, S, D / H}), k = torch::randn({B, H, D / H, S});
  for (auto _ : state) benchmark::DoNotOptimize(torch::matmul(q, k));
}
BENCHMARK(BM_TorchMatmul)->Unit(benchmark::kMicrosecond);

void BM_FastDropout(benchmark::State& state) {
  auto x = torch::randn({B, H, S, S});
  for (auto _ : state) benchmark::DoNotOptimize(x * dropout_mask(x, 0.1));
}
BENCHMARK(BM_FastDropout)->Unit(benchmark::kMicrosecond);

void BM_TorchDropout(benchmark::State& state) {
  auto x = torch::randn({B, H, S, S});
  for (auto _ : state) benchmark::DoNotOptimize(torch::dropout(x, 0.1, true));
}
BENCHMARK(BM_TorchDropout)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  distill::init_runtime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
