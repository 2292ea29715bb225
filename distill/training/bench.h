// Performance measurements of the real code paths on synthetic batches: teacher forward,
// student training step, the full distillation step, Switch layer vs a dense FFN of equal FLOPs,
// the machine's matrix-product peak and the model FLOP utilisation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill {

struct BenchShape {
  int64_t d_model = 128, d_ff = 256, d_kv = 32, num_heads = 4;   // D, F, head width, H
  int64_t num_layers = 4, num_decoder_layers = 4;                 // blocks per stack
  int64_t num_experts = 8, sparse_step = 1, expert_capacity = 64; // every layer sparse by default
  int64_t vocab_size = 512;                                       // V
  int64_t batch = 8, src_len = 128, tgt_len = 32;                 // B, S, T
  double student_dropout = 0.1;                                   // dropout in the student
  bool teacher_bf16 = false;                                      // frozen teacher in bfloat16
  bool student_bf16 = false;                                      // student matrix products in bf16 (training.bf16)
  int64_t cache_top_k = 32;                                       // k of the teacher-cache step
};

// "small8" and "d256": the two reference shapes of the performance issue; "base8": switch-base-8
// distilled into t5-base (d_model 768, 12 + 12 layers, 8 experts in every other FFN, vocabulary
// 32128, inputs 512 / targets 114, batch 4), what a real run costs per step.
BenchShape bench_preset(const std::string& name);

struct BenchOptions {
  int warmup = 3;    // untimed repetitions first
  int repeats = 10;  // timed repetitions; medians and spreads are over these
};

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// Where a distillation step's time goes, from extra steps run with every product timed (after the
// timed repetitions, so the clock does not touch the medians).
struct StepBreakdown {
  int steps = 0;
  double step_ms = 0;                     // wall time per step of these steps
  double products_ms = 0;                 // products on every thread (projections, LM head)
  double products_gflops = 0;             // their rate
  double nested_products_ms = 0;          // per-head and per-expert products, a thread each: wall time
                                          // estimated as their thread time / threads
  double nested_gflops_per_thread = 0;    // their rate on one thread
  double other_ms = 0;                    // the rest: elementwise work, norms, softmaxes, routing, the
                                          // loss, AdamW, dispatch, threads waiting
};

struct BenchResult {
  BenchShape shape;
  StepBreakdown breakdown;
  Timing teacher_forward, student_step, distill_step, cached_step, switch_layer, dense_layer;
  double teacher_tokens_per_s = 0, distill_tokens_per_s = 0;
  double cached_vs_student_ratio = 0;      // distillation step served by the teacher cache / plain student step
  double switch_vs_dense_ratio = 0;        // Switch layer fwd+bwd / dense FFN of the same FLOPs per token
  double matmul_peak_gflops_fp32 = 0, matmul_peak_gflops_bf16 = 0;
  double distill_step_gflops = 0, student_step_gflops = 0;  // achieved
  double mfu = 0, student_step_mfu = 0;    // achieved / fp32 peak
  double peak_rss_mb = 0;
  std::string blas;          // "openblas", "reference" or "unknown"
  std::string blas_kernels;  // OpenBLAS's kernel set, e.g. "SkylakeX"
  std::string sgemm;         // library behind the models' float32 products: "oneDNN" or "OpenBLAS"
  std::string cpu;           // the CPU's model name, from /proc/cpuinfo
  int threads = 0;
  int world_size = 1;          // data-parallel ranks (distill --nproc N bench): each takes batch/N rows
  double allreduce_bytes = 0;  // gradient bytes each rank all-reduces per step
  Timing allreduce;            // the gradient all-reduce alone (ranks > 1)
  Timing student_step_reduced_after;  // the student step with the all-reduce after backward, not during it
  nlohmann::json to_json() const;
  std::string markdown() const;
};

BenchResult run_bench(const BenchShape& shape, const BenchOptions& options);

// Tokens per second of the data pipeline (read, tokenize, corrupt, batch) on `files`.
struct DataBenchResult {
  int64_t tokens = 0, batches = 0;
  double seconds = 0, tokens_per_s = 0;
};
DataBenchResult run_data_bench(const std::vector<std::string>& files, const std::string& tokenizer, int64_t input_length,
                               int64_t target_length, int64_t batch_size);

}  // namespace distill
