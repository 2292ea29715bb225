// distill bench: the performance figures of the README, re-runnable by anyone.
#include <fmt/format.h>

#include <iostream>

#include "distill/training/bench.h"
#include "distill/cli/commands.h"
#include "distill/process/distributed.h"
#include "models/errors.h"

namespace distill::cli {

namespace {
struct BenchArgs {
  std::string preset = "small8";
  BenchShape shape;
  BenchOptions options;
  bool json = false;
  std::vector<std::string> data;
  std::string tokenizer;
};
}  // namespace

Command add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  auto* sub = app.add_subcommand("bench", "Time the real code paths on synthetic batches (or the data pipeline with --data)");
  sub->add_option("--preset", a->preset, "Reference shape: small8, d256 or base8 (switch-base-8 into t5-base)")
      ->check(CLI::IsMember({"small8", "d256", "base8"}));
  auto* d_model = sub->add_option("--d-model", a->shape.d_model, "Override: model width");
  auto* d_ff = sub->add_option("--d-ff", a->shape.d_ff, "Override: FFN width");
  auto* d_kv = sub->add_option("--d-kv", a->shape.d_kv, "Override: head width");
  auto* experts = sub->add_option("--experts", a->shape.num_experts, "Override: experts per sparse layer");
  auto* batch = sub->add_option("--batch", a->shape.batch, "Override: batch size");
  auto* vocab = sub->add_option("--vocab", a->shape.vocab_size, "Override: vocabulary");
  auto* bf16 = sub->add_flag("--teacher-bf16", a->shape.teacher_bf16, "Run the frozen teacher in bfloat16");
  auto* student_bf16 = sub->add_flag("--student-bf16", a->shape.student_bf16, "Student matrix products in bfloat16 (training.bf16)");
  auto* cache_k = sub->add_option("--cache-top-k", a->shape.cache_top_k, "k of the teacher-cache step")->check(CLI::PositiveNumber);
  sub->add_option("--warmup", a->options.warmup, "Untimed repetitions")->check(CLI::NonNegativeNumber);
  sub->add_option("--repeats", a->options.repeats, "Timed repetitions")->check(CLI::PositiveNumber);
  sub->add_flag("--json", a->json, "Print one JSON object");
  sub->add_option("--data", a->data, "Benchmark the data pipeline on these text files instead");
  sub->add_option("--tokenizer", a->tokenizer, "Tokenizer for --data");
  return {sub, [a, d_model, d_ff, d_kv, experts, batch, vocab, bf16, student_bf16, cache_k] {
            if (!a->data.empty()) {
              if (a->tokenizer.empty()) throw InputError("bench --data needs --tokenizer DIR");
              auto r = run_data_bench(a->data, a->tokenizer, 128, 32, 16);
              nlohmann::json j = {{"tokens", r.tokens}, {"batches", r.batches}, {"seconds", r.seconds}, {"tokens_per_s", r.tokens_per_s}};
              std::cout << (a->json ? j.dump(2) : fmt::format("data pipeline: {} tokens in {} batches in {:.2f} s = {:.0f} tokens/s",
                                                              r.tokens, r.batches, r.seconds, r.tokens_per_s))
                        << "\n";
              return;
            }
            BenchShape s = bench_preset(a->preset);
            if (*d_model) s.d_model = a->shape.d_model;
            if (*d_ff) s.d_ff = a->shape.d_ff;
            if (*d_kv) s.d_kv = a->shape.d_kv;
            if (*experts) s.num_experts = a->shape.num_experts;
            if (*batch) s.batch = a->shape.batch;
            if (*vocab) s.vocab_size = a->shape.vocab_size;
            if (*bf16) s.teacher_bf16 = true;
            if (*student_bf16) s.student_bf16 = true;
            if (*cache_k) s.cache_top_k = a->shape.cache_top_k;
            auto r = run_bench(s, a->options);
            if (is_writer()) std::cout << (a->json ? r.to_json().dump(2) : r.markdown()) << "\n";
          }};
}

}  // namespace distill::cli
