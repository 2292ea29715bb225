#include "distill/training/bench.h"

#include "distill/process/distributed.h"

#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <tuple>
#include <fmt/format.h>

#include "data/batching.h"
#include "data/tokenized_corpus.h"
#include "data/tokenizer.h"
#include "distill/training/losses.h"
#include "distill/training/optim.h"
#include "distill/process/runtime.h"
#include "distill/training/student_init.h"
#include "distill/training/teacher_cache.h"
#include "models/io/checkpoint.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/native_bf16.h"
#include "models/errors.h"
#include "models/arch/model_stats.h"
#include "models/kernels/sgemm.h"

namespace distill {
using nlohmann::json;

BenchShape bench_preset(const std::string& name) {
  BenchShape s;  // small8 is the default
  if (name == "small8") return s;
  if (name == "d256") {
    s.d_model = 256;
    s.d_ff = 1024;
    s.d_kv = 64;
    return s;
  }
  if (name == "base8") {  // switch-base-8 (teacher) into t5-base (student), random weights
    s.d_model = 768;
    s.d_ff = 3072;
    s.d_kv = 64;
    s.num_heads = 12;
    s.num_layers = s.num_decoder_layers = 12;
    s.num_experts = 8;
    s.sparse_step = 2;        // experts in every other FFN
    s.expert_capacity = 80;   // per expert and sequence: 1.25 x 512 / 8
    s.vocab_size = 32128;
    s.batch = 4;
    s.src_len = 512;
    s.tgt_len = 114;
    return s;
  }
  throw InputError("unknown preset \"" + name + "\" (expected small8, d256 or base8)");
}

namespace {

Timing summarise(std::vector<double>& ms) {
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

template <class F>
Timing time_it(const BenchOptions& o, F&& f) {
  for (int i = 0; i < o.warmup; ++i) f();
  std::vector<double> ms;
  for (int i = 0; i < o.repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return summarise(ms);
}

// Times a and b in alternation, each sample `inner` calls (enough for ~20 ms), so that the
// machine's drifts in speed hit both alike: for ratios of fast layers.
template <class A, class B>
std::pair<Timing, Timing> time_alternating(const BenchOptions& o, A&& a, B&& b) {
  for (int i = 0; i < o.warmup; ++i) a(), b();
  const auto t0 = std::chrono::steady_clock::now();
  a();
  const double one_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const int inner = std::max(1, static_cast<int>(20.0 / std::max(one_ms, 1e-3)));
  auto sample = [&](auto& f) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < inner; ++i) f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / inner;
  };
  std::vector<double> ta, tb;
  for (int i = 0; i < o.repeats; ++i) {
    ta.push_back(sample(a));
    tb.push_back(sample(b));
  }
  return {summarise(ta), summarise(tb)};
}

// The best of square products through the kernels the models' products use: float32 by
// blas::sgemm, bf16 by blas::gemm_bf16 (float32 accumulation and result).
double matmul_peak(c10::ScalarType dtype, const BenchOptions& o) {
  double best = 0;
  for (int64_t n : {512, 1024, 2048}) {
    auto a = torch::randn({n, n}).to(dtype), b = torch::randn({n, n}).to(dtype), c = torch::empty({n, n});
    auto t = time_it({2, std::max(3, o.repeats / 2)}, [&] {
      if (dtype == torch::kFloat32) {
        blas::sgemm(blas::Op::N, blas::Op::N, n, n, n, 1.0f, a.data_ptr<float>(), n, b.data_ptr<float>(), n, 0.0f,
                    c.data_ptr<float>(), n);
      } else {  // bf16 operands, float32 result: what the models' bf16 products run
        blas::gemm_bf16(blas::Op::N, blas::Op::N, n, n, n, 1.0f, reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>()),
                        n, reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>()), n, 0.0f, c.data_ptr<float>(), n);
      }
    });
    best = std::max(best, 2.0 * n * n * n / (t.median_ms * 1e-3) / 1e9);
  }
  return best;
}

ModelConfig teacher_config(const BenchShape& s) {
  ModelConfig c;
  c.model_type = "switch_transformers";
  c.vocab_size = s.vocab_size;
  c.d_model = s.d_model;
  c.d_ff = s.d_ff;
  c.d_kv = s.d_kv;
  c.num_heads = s.num_heads;
  c.num_layers = s.num_layers;
  c.num_decoder_layers = s.num_decoder_layers;
  c.num_experts = s.num_experts;
  c.encoder_sparse_step = c.decoder_sparse_step = s.sparse_step;
  c.expert_capacity = s.expert_capacity;
  c.capacity_mode = CapacityMode::kFixed;
  c.dropout_rate = 0.0;
  return c;
}

std::string cpu_model_name() {
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

}  // namespace

BenchResult run_bench(const BenchShape& s, const BenchOptions& o) {
  BenchResult r;
  r.shape = s;
  r.threads = at::get_num_threads();
  const auto runtime = init_runtime(r.threads);
  r.blas = runtime.blas;
  r.blas_kernels = runtime.blas_kernels;
  r.sgemm = runtime.sgemm;
  r.cpu = cpu_model_name();
  torch::manual_seed(0);
  const ModelConfig tc = teacher_config(s);
  const ModelConfig sc = student_config(tc, std::nullopt, s.student_dropout);
  Seq2SeqModel teacher(tc), student(sc);
  init_from_scratch(teacher, 0.1);
  init_from_scratch(student, 0.1);
  init_student(student, teacher, FfnInit::kFresh, true);
  teacher->set_bf16_products(s.teacher_bf16);
  teacher->eval();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  student->train();

  // Data-parallel: this rank's rows of the global batch; timings are then a global step's.
  Collective* w = world();
  r.world_size = w ? w->world_size() : 1;
  const int64_t rows = w ? s.batch * (w->rank() + 1) / w->world_size() - s.batch * w->rank() / w->world_size() : s.batch;
  auto ids = torch::randint(2, s.vocab_size, {rows, s.src_len}, torch::kLong);
  auto mask = torch::ones({rows, s.src_len}, torch::kLong);
  auto labels = torch::randint(2, s.vocab_size, {rows, s.tgt_len}, torch::kLong);
  auto dec = shift_right(labels, 0, 0);
  const double tokens = static_cast<double>(s.batch * (s.src_len + s.tgt_len));

  NamedParams params;
  for (auto& p : student->named_parameters()) params.emplace_back(p.key(), p.value());
  AdamW adamw(params, OptimizerConfig{});
  const DistillLossOptions loss_options{0.75, 0.25, 1.0, SoftLoss::kCe};

  auto teacher_forward = [&] {
    torch::NoGradGuard ng;
    return teacher->forward({ids, mask, dec, {}, {}}).logits;
  };
  std::unique_ptr<GradientReducer> reducer;  // as the trainer: buckets reduced while backward runs
  if (w) reducer = std::make_unique<GradientReducer>(*w, params);
  auto student_step = [&](const auto& loss_of) {
    adamw.zero_grad();
    torch::Tensor loss;
    {
      Bf16Products amp(s.student_bf16);
      loss = loss_of(student->forward({ids, mask, dec, {}, {}}).logits);
    }
    if (reducer) reducer->arm();
    loss.backward();
    if (reducer) reducer->finish();
    adamw.step(1e-4);
  };
  for (const auto& [name, p] : params) r.allreduce_bytes += static_cast<double>(p.numel() * 4);
  if (w) {
    student_step([&](const torch::Tensor& s) { return token_cross_entropy(s, labels); });  // gradients to reduce
    auto reduce_after_backward = [&] {
      reducer->arm();
      reducer->finish();
    };
    r.allreduce = time_it(o, reduce_after_backward);
    r.student_step_reduced_after = time_it(o, [&] {
      adamw.zero_grad();
      token_cross_entropy(student->forward({ids, mask, dec, {}, {}}).logits, labels).backward();
      reduce_after_backward();
      adamw.step(1e-4);
    });
  }
  r.teacher_forward = time_it(o, [&] { teacher_forward(); });
  r.student_step = time_it(o, [&] { student_step([&](const torch::Tensor& s) { return token_cross_entropy(s, labels); }); });
  auto distill_step = [&] {
    auto t = teacher_forward();
    student_step([&](const torch::Tensor& s) { return distillation_loss(s, t, labels, loss_options).total; });
  };
  r.distill_step = time_it(o, distill_step);
  // An epoch after the first with the teacher cache: every batch is a hit.
  Batch batch{ids, mask, dec, labels, 0, 0, {}};
  for (int64_t i = 0; i < rows; ++i) batch.example_ids.push_back(static_cast<uint32_t>(i));
  TeacherCache cache(s.cache_top_k, loss_options.temperature);
  cache.targets(batch, teacher_forward);
  r.cached_step = time_it(o, [&] {
    auto targets = cache.targets(batch, teacher_forward);
    student_step([&](const torch::Tensor& s) { return distillation_loss(s, targets, labels, loss_options).total; });
  });
  r.cached_vs_student_ratio = r.cached_step.median_ms / r.student_step.median_ms;
  {
    StepBreakdown& b = r.breakdown;
    b.steps = std::max(3, o.repeats / 2);
    blas::count_products(true);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < b.steps; ++i) distill_step();
    const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    blas::count_products(false);
    const auto p = blas::counted_products();
    b.step_ms = wall / b.steps;
    b.products_ms = p.top_ms / b.steps;
    b.products_gflops = p.top_ms > 0 ? p.top_flops / (p.top_ms * 1e-3) / 1e9 : 0;
    b.nested_products_ms = p.nested_ms / r.threads / b.steps;
    b.nested_gflops_per_thread = p.nested_ms > 0 ? p.nested_flops / (p.nested_ms * 1e-3) / 1e9 : 0;
    b.other_ms = b.step_ms - b.products_ms - b.nested_products_ms;
  }
  r.teacher_tokens_per_s = tokens / (r.teacher_forward.median_ms * 1e-3);
  r.distill_tokens_per_s = tokens / (r.distill_step.median_ms * 1e-3);

  // One Switch layer against a dense FFN with the same FLOPs per token (top-1: one expert's).
  {
    RoutingOptions ro;
    ro.num_experts = s.num_experts;
    ro.capacity_mode = CapacityMode::kFactor;
    ro.capacity_factor_train = 1.25;
    ro.jitter_noise = 0.0;
    FfnOptions fo;
    fo.d_model = s.d_model;
    fo.d_ff = s.d_ff;
    fo.dropout = 0.0;
    SwitchSparseMlp sparse(s.d_model, ro, fo);
    DenseActDense dense(fo);
    Bf16Products amp(s.student_bf16);  // both layers in the student's precision
    auto x = torch::randn({s.batch, s.src_len, s.d_model}).requires_grad_(true);
    auto g = torch::randn({s.batch, s.src_len, s.d_model});
    std::tie(r.switch_layer, r.dense_layer) = time_alternating(
        o,
        [&] {
          sparse->zero_grad(/*set_to_none=*/true);  // as the trainer does
          (sparse->forward(x).hidden * g).sum().backward();
        },
        [&] {
          dense->zero_grad(/*set_to_none=*/true);
          (dense->forward(x) * g).sum().backward();
        });
    r.switch_vs_dense_ratio = r.switch_layer.median_ms / r.dense_layer.median_ms;
  }

  r.matmul_peak_gflops_fp32 = matmul_peak(torch::kFloat32, o);
  r.matmul_peak_gflops_bf16 = matmul_peak(torch::kBFloat16, o);
  // Training = forward + backward ~ 3x forward FLOPs; the teacher only runs forward.
  const double student_flops = 3.0 * s.batch * forward_flops(sc, s.src_len, s.tgt_len);
  const double teacher_flops = s.batch * forward_flops(tc, s.src_len, s.tgt_len);
  r.student_step_gflops = student_flops / (r.student_step.median_ms * 1e-3) / 1e9;
  r.distill_step_gflops = (student_flops + teacher_flops) / (r.distill_step.median_ms * 1e-3) / 1e9;
  r.student_step_mfu = r.student_step_gflops / r.matmul_peak_gflops_fp32;
  r.mfu = r.distill_step_gflops / r.matmul_peak_gflops_fp32;
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  r.peak_rss_mb = static_cast<double>(ru.ru_maxrss) / 1024.0;
  return r;
}

json BenchResult::to_json() const {
  auto t = [](const Timing& x) { return json{{"median_ms", x.median_ms}, {"min_ms", x.min_ms}, {"max_ms", x.max_ms}}; };
  return {{"distill_step_ms", distill_step.median_ms},
          {"teacher_tokens_per_s", teacher_tokens_per_s},
          {"switch_vs_dense_ratio", switch_vs_dense_ratio},
          {"cached_vs_student_ratio", cached_vs_student_ratio},
          {"matmul_peak_gflops_fp32", matmul_peak_gflops_fp32},
          {"matmul_peak_gflops_bf16", matmul_peak_gflops_bf16},
          {"native_bf16", native_bf16_products()},
          {"mfu", mfu},
          {"student_step_mfu", student_step_mfu},
          {"peak_rss_mb", peak_rss_mb},
          {"distill_tokens_per_s", distill_tokens_per_s},
          {"timings", {{"teacher_forward", t(teacher_forward)}, {"student_step", t(student_step)},
                       {"distill_step", t(distill_step)}, {"cached_distill_step", t(cached_step)},
                       {"switch_layer_fwd_bwd", t(switch_layer)},
                       {"dense_ffn_fwd_bwd", t(dense_layer)}}},
          {"shape", {{"d_model", shape.d_model}, {"d_ff", shape.d_ff}, {"num_heads", shape.num_heads}, {"d_kv", shape.d_kv},
                     {"layers", shape.num_layers}, {"decoder_layers", shape.num_decoder_layers},
                     {"experts", shape.num_experts}, {"sparse_step", shape.sparse_step},
                     {"expert_capacity", shape.expert_capacity}, {"vocab", shape.vocab_size}, {"batch", shape.batch},
                     {"src_len", shape.src_len}, {"tgt_len", shape.tgt_len}, {"teacher_bf16", shape.teacher_bf16},
                     {"student_bf16", shape.student_bf16},
                     {"cache_top_k", shape.cache_top_k}}},
          {"threads", threads},
          {"world_size", world_size},
          {"allreduce_bytes_per_step", allreduce_bytes},
          {"allreduce_ms", allreduce.median_ms},
          {"student_step_reduced_after_backward_ms", student_step_reduced_after.median_ms},
          {"step_breakdown", {{"steps", breakdown.steps}, {"step_ms", breakdown.step_ms},
                              {"products_ms", breakdown.products_ms}, {"products_gflops", breakdown.products_gflops},
                              {"nested_products_ms", breakdown.nested_products_ms},
                              {"nested_gflops_per_thread", breakdown.nested_gflops_per_thread},
                              {"other_ms", breakdown.other_ms}}},
          {"blas", blas},
          {"blas_kernels", blas_kernels},
          {"sgemm", sgemm},
          {"cpu", cpu}};
}

std::string BenchResult::markdown() const {
  auto row = [](const char* what, const Timing& t, const std::string& extra) {
    return fmt::format("| {} | {:.1f} | {:.1f}-{:.1f} | {} |\n", what, t.median_ms, t.min_ms, t.max_ms, extra);
  };
  std::string md = fmt::format(
      "shape: d_model {} d_ff {} heads {}x{} layers {}+{} experts {} ({} sparse, capacity {}) vocab {}, batch {} x "
      "({} + {}) tokens; teacher {}, student {}; {} threads of {}, fp32 products by {}, BLAS {}{}\n\n",
      shape.d_model, shape.d_ff, shape.num_heads, shape.d_kv, shape.num_layers, shape.num_decoder_layers, shape.num_experts,
      shape.sparse_step == 1 ? std::string("every layer")
                             : shape.sparse_step == 2 ? std::string("every other layer")
                                                      : fmt::format("one layer in {}", shape.sparse_step), shape.expert_capacity,
      shape.vocab_size, shape.batch, shape.src_len, shape.tgt_len, shape.teacher_bf16 ? "bf16 products" : "fp32",
      shape.student_bf16 ? "bf16 products" : "fp32", threads, cpu, sgemm, blas,
      blas_kernels.empty() ? std::string() : " (" + blas_kernels + " kernels)");
  md += "| measurement | median ms | spread ms | throughput |\n| --- | ---: | ---: | --- |\n";
  md += row("teacher forward", teacher_forward, fmt::format("{:.0f} tokens/s", teacher_tokens_per_s));
  // MFU is against the fp32 peak; with bf16 products the bf16 peak is the honest denominator too.
  auto mfu_text = [&](double gflops) {
    auto t = fmt::format("MFU {:.0f}% of fp32 peak", 100 * gflops / matmul_peak_gflops_fp32);
    if (shape.student_bf16 || shape.teacher_bf16) t += fmt::format(" ({:.0f}% of bf16)", 100 * gflops / matmul_peak_gflops_bf16);
    return t;
  };
  md += row("student forward+backward+AdamW", student_step, fmt::format("{:.1f} GFLOP/s, {}", student_step_gflops, mfu_text(student_step_gflops)));
  md += row("distillation step", distill_step, fmt::format("{:.0f} tokens/s, {:.1f} GFLOP/s, {}", distill_tokens_per_s, distill_step_gflops, mfu_text(distill_step_gflops)));
  md += row(fmt::format("distillation step, teacher cache hit (k={})", shape.cache_top_k).c_str(), cached_step,
            fmt::format("{:.2f}x the student step", cached_vs_student_ratio));
  md += row("Switch layer fwd+bwd", switch_layer, fmt::format("{:.2f}x the dense FFN of equal FLOPs", switch_vs_dense_ratio));
  md += row("dense FFN fwd+bwd", dense_layer, "");
  if (world_size > 1) {
    md += row(fmt::format("gradient all-reduce ({} ranks)", world_size).c_str(), allreduce,
              fmt::format("{:.1f} MB per rank per step", allreduce_bytes / 1e6));
    md += row("student step, all-reduce after backward", student_step_reduced_after, "instead of during it");
  }
  md += fmt::format("\nmatmul peak: {:.0f} GFLOP/s fp32, {:.0f} GFLOP/s bf16 ({}); peak RSS {:.0f} MB\n", matmul_peak_gflops_fp32,
                    matmul_peak_gflops_bf16,
                    native_bf16_products() ? "native bf16 products: the bf16 keys' auto picks them here"
                                           : "no native bf16 products: the bf16 keys' auto picks float32 here",
                    peak_rss_mb);
  const auto& b = breakdown;
  auto share = [&](double ms) { return b.step_ms > 0 ? 100 * ms / b.step_ms : 0.0; };
  md += fmt::format(
      "\nwhere a distillation step goes ({} steps with the products timed, {:.1f} ms each): products on all threads "
      "{:.1f} ms ({:.0f}%, {:.0f} GFLOP/s); per-head and per-expert products {:.1f} ms ({:.0f}%, {:.0f} GFLOP/s per "
      "thread); everything else {:.1f} ms ({:.0f}%)\n",
      b.steps, b.step_ms, b.products_ms, share(b.products_ms), b.products_gflops, b.nested_products_ms,
      share(b.nested_products_ms), b.nested_gflops_per_thread, b.other_ms, share(b.other_ms));
  return md;
}

DataBenchResult run_data_bench(const std::vector<std::string>& files, const std::string& tokenizer_path, int64_t input_length,
                               int64_t target_length, int64_t batch_size) {
  const auto t0 = std::chrono::steady_clock::now();
  auto tokenizer = Tokenizer::load(tokenizer_path);
  CorpusOptions co;
  co.files = files;
  auto corpus = tokenize_corpus(co, tokenizer, 0.0, 0, at::get_num_threads());
  auto oo = objective_options(tokenizer, input_length, target_length);
  BatchingOptions bo;
  bo.batch_size = batch_size;
  Dataset ds(std::move(corpus.train), std::shared_ptr<const Objective>(make_objective("span_corruption", oo)), bo);
  auto epoch = ds.make_epoch(0);
  DataBenchResult r;
  for (size_t i = 0; i < epoch.batches.size(); ++i) {
    auto b = ds.collate_batch(epoch, i);
    r.tokens += b.input_tokens + b.target_tokens;
  }
  r.batches = static_cast<int64_t>(epoch.batches.size());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_s = static_cast<double>(r.tokens) / r.seconds;
  return r;
}

}  // namespace distill
