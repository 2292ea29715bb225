// Micro-benchmarks of the layers on the small8 shape (d_model 128, d_ff 256, 4 heads, batch 8 x
// 128 tokens, 8 experts): build/bench_layers [--benchmark_filter=Switch]. Not part of the tests.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "distill/runtime.h"
#include "models/attention_core.h"
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

// The attention core alone (scores, bias, softmax, dropout, context; forward and backward): the
// fused kernel (arg 1) against the same in ATen ops (arg 0).
void BM_AttentionCore(benchmark::State& state) {
  const int64_t Dk = D / H;
  auto qkv = torch::randn({B, S, 3 * D}, torch::requires_grad());
  auto bias = torch::randn({1, H, S, S}, torch::requires_grad());
  auto g = torch::randn({B, S, D});
  auto core = state.range(0) ? attention_core : attention_core_reference;
  for (auto _ : state) {
    auto parts = qkv.split(D, -1);
    auto heads = [&](const torch::Tensor& t) { return t.view({B, S, H, Dk}).transpose(1, 2); };  // [B, H, S, Dk]
    (core(heads(parts[0]), heads(parts[1]), heads(parts[2]), bias, state.range(1) / 10.0) * g).sum().backward();
    qkv.mutable_grad().reset();
    bias.mutable_grad().reset();
  }
}
BENCHMARK(BM_AttentionCore)->Args({0, 0})->Args({1, 0})->Args({0, 1})->Args({1, 1})->Unit(benchmark::kMicrosecond);

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

// The six matrix products of an FFN's forward and backward (h = x wi^T, y = h wo^T, and the
// weight and input gradients of both), for `groups` weight sets of `rows` tokens each: 1 x 1024
// rows is the dense FFN, 8 x 128 the experts of a Switch layer with even routing. Their ratio is
// the floor of the Switch/dense ratio that OpenBLAS allows at this shape.
void BM_FfnProducts(benchmark::State& state) {
  const int64_t groups = state.range(0), rows = B * S / groups;
  std::vector<torch::Tensor> wi, wo, gwi, gwo;
  for (int64_t e = 0; e < groups; ++e) {
    wi.push_back(torch::randn({F, D}));
    wo.push_back(torch::randn({D, F}));
    gwi.push_back(torch::empty({F, D}));
    gwo.push_back(torch::empty({D, F}));
  }
  auto x = torch::randn({B * S, D}), gy = torch::randn({B * S, D});
  auto h = torch::empty({B * S, F}), y = torch::empty({B * S, D}), gh = torch::empty({B * S, F}), gx = torch::empty({B * S, D});
  for (auto _ : state) {
    for (int64_t e = 0; e < groups; ++e) {
      auto sl = [&](torch::Tensor& t) { return t.narrow(0, e * rows, rows); };
      auto xs = sl(x), hs = sl(h), ys = sl(y), gys = sl(gy), ghs = sl(gh), gxs = sl(gx);
      at::mm_out(hs, xs, wi[e].t());
      at::mm_out(ys, hs, wo[e].t());
      at::mm_out(gwo[e], gys.t(), hs);
      at::mm_out(ghs, gys, wo[e]);
      at::mm_out(gwi[e], ghs.t(), xs);
      at::mm_out(gxs, ghs, wi[e]);
    }
  }
}
BENCHMARK(BM_FfnProducts)->Arg(1)->Arg(E)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  distill::init_runtime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
