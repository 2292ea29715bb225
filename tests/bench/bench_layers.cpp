// Micro-benchmarks of the layers on the small8 shape (d_model 128, d_ff 256, 4 heads, batch 8 x
// 128 tokens, 8 experts): build/bench_layers [--benchmark_filter=Switch]. Not part of the tests.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "distill/process/runtime.h"
#include "models/kernels/attention_core.h"
#include "models/kernels/batched_matmul.h"
#include "models/kernels/fast_dropout.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/sgemm.h"
#include "models/arch/switch_moe.h"
#include "models/arch/t5_layers.h"

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

// Argument: float32 (0) or bf16 products (1), as `distill bench --student-bf16` times them.
void BM_DenseFfnFwdBwd(benchmark::State& state) {
  DenseActDense layer(ffn());
  auto x = torch::randn({B, S, D}, torch::requires_grad());
  Bf16Products amp(state.range(0) != 0);
  for (auto _ : state) {
    layer->zero_grad(/*set_to_none=*/true);
    layer->forward(x).sum().backward();
  }
}
BENCHMARK(BM_DenseFfnFwdBwd)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

void BM_SwitchLayerFwdBwd(benchmark::State& state) {
  RoutingOptions r;
  r.num_experts = E;
  r.capacity_mode = CapacityMode::kFactor;
  SwitchSparseMlp layer(D, r, ffn());
  auto x = torch::randn({B, S, D}, torch::requires_grad());
  Bf16Products amp(state.range(0) != 0);
  for (auto _ : state) {
    layer->zero_grad(/*set_to_none=*/true);
    layer->forward(x).hidden.sum().backward();
  }
}
BENCHMARK(BM_SwitchLayerFwdBwd)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

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
// weight and input gradients of both) for `groups` weight sets of `rows` tokens each: 1 x 1024 rows
// is the dense FFN (products on all threads), 8 x 128 the experts of a Switch layer with even
// routing (one expert per thread, as the grouped FFN runs them). Their ratio is the floor of the
// Switch/dense ratio at this shape. Second argument: float32 (0) or bf16 operands (1, gemm_bf16;
// the operands are rounded once, outside the timing).
void BM_FfnProducts(benchmark::State& state) {
  const int64_t groups = state.range(0), rows = B * S / groups;
  const bool bf16 = state.range(1) != 0;
  auto wi = torch::randn({groups, F, D}), wo = torch::randn({groups, D, F});
  auto gwi = torch::empty_like(wi), gwo = torch::empty_like(wo);
  auto x = torch::randn({B * S, D}), gy = torch::randn({B * S, D});
  auto h = torch::randn({B * S, F}), y = torch::empty({B * S, D}), gh = torch::randn({B * S, F}), gx = torch::empty({B * S, D});
  // The products read float32 tensors or bf16 copies of them, and write float32.
  const auto operand = [&](const torch::Tensor& t) { return bf16 ? t.to(torch::kBFloat16) : t; };
  const auto wio = operand(wi), woo = operand(wo), xo = operand(x), gyo = operand(gy), ho = operand(h), gho = operand(gh);
  const auto mm = [&](blas::Op op_a, blas::Op op_b, int64_t m, int64_t n, int64_t k, const torch::Tensor& a, int64_t lda,
                      const torch::Tensor& b, int64_t ldb, const torch::Tensor& c, int64_t ldc) {
    if (bf16) {
      blas::gemm_bf16(op_a, op_b, m, n, k, 1, static_cast<const uint16_t*>(a.data_ptr()), lda,
                      static_cast<const uint16_t*>(b.data_ptr()), ldb, 0, c.data_ptr<float>(), ldc);
    } else {
      blas::sgemm(op_a, op_b, m, n, k, 1, a.data_ptr<float>(), lda, b.data_ptr<float>(), ldb, 0, c.data_ptr<float>(), ldc);
    }
  };
  auto chain = [&](int64_t e) {
    using blas::Op;
    const int64_t r0 = e * rows;
    mm(Op::N, Op::T, rows, F, D, xo[r0], D, wio[e], D, h[r0], F);      // h [rows, F]
    mm(Op::N, Op::T, rows, D, F, ho[r0], F, woo[e], F, y[r0], D);      // y [rows, D]
    mm(Op::T, Op::N, D, F, rows, gyo[r0], D, ho[r0], F, gwo[e], F);    // gwo [D, F]
    mm(Op::N, Op::N, rows, F, D, gyo[r0], D, woo[e], F, gh[r0], F);    // gh [rows, F]
    mm(Op::T, Op::N, F, D, rows, gho[r0], F, xo[r0], D, gwi[e], D);    // gwi [F, D]
    mm(Op::N, Op::N, rows, D, F, gho[r0], F, wio[e], D, gx[r0], D);    // gx [rows, D]
  };
  for (auto _ : state) {
    if (groups == 1) {
      chain(0);
    } else {
      at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) chain(e);
      });
    }
  }
}
BENCHMARK(BM_FfnProducts)->Args({1, 0})->Args({E, 0})->Args({1, 1})->Args({E, 1})->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  distill::init_runtime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
