// One float32 matrix product for every hand-written kernel: oneDNN's sgemm when
// LibTorch's oneDNN is loaded (its AVX-512 kernels are chosen at run time,
// about 2x OpenBLAS's here), else OpenBLAS.
#pragma once

#include <cstdint>
#include <string>

namespace distill::blas {

enum class Op : char { N = 'N', T = 'T' };

// Below this many FLOPs (2mnk) oneDNN runs a product on the calling thread: waking the other
// threads costs more than they save (the router's [1024, 128] x [128, 8]: 88 us on two threads, 28
// on one).
constexpr double kSmallProductFlops = 8e6;
inline bool is_small_product(int64_t m, int64_t n, int64_t k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) < kSmallProductFlops;
}

// Row-major C[m, n] = alpha * op(A)[m, k] op(B)[k, n] + beta * C, as
// cblas_sgemm with CblasRowMajor. Inside a parallel region it runs on the
// calling thread only.
void sgemm(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
           float *c, int64_t ldc);

// C[m, n] (float32) = alpha * op(A) op(B) + beta * C with bf16 A and B, accumulated in float32:
// oneDNN's gemm_bf16bf16f32 (the CPU's bf16 dot products where it has them, e.g. AVX512-BF16 or
// AMX). Without oneDNN, or where oneDNN has no bf16 gemm (no AVX-512), the operands are widened
// and sgemm runs: the same numbers, without the speed.
void gemm_bf16(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a, int64_t lda,
               const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc);

// Time spent in sgemm and gemm_bf16 while counting is on, for `distill bench`'s breakdown of a
// step. Products called outside a parallel region use every thread, so their wall time is the
// step's; those inside one (a thread per attention head or expert) add thread time.
struct ProductTime {
  double top_ms = 0, top_flops = 0;        // outside parallel regions: wall time, 2mnk
  double nested_ms = 0, nested_flops = 0;  // inside: summed over threads
  int64_t top_calls = 0, nested_calls = 0;
};
// Starts counting from zero (true) or stops (false); off, a product pays one atomic load.
void count_products(bool on);
ProductTime counted_products();

// "oneDNN" or "OpenBLAS". DISTILL_SGEMM=openblas or =onednn chooses; any other
// value is a ConfigError (thrown here, so call this at start-up to report it
// before any work).
const std::string &sgemm_library();

} // namespace distill::blas
