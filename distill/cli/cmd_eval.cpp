// distill eval: held-out NLL (and routing) of a model on a corpus, or with --generate the task's
// own metrics from greedy decoding of input/target pairs.
#include <fmt/format.h>
#include <torch/torch.h>

#include <iostream>

#include "data/tokenized_corpus.h"
#include "distill/cli/commands.h"
#include "distill/evaluation/evaluate.h"
#include "distill/pipeline/stage_training.h"
#include "distill/evaluation/task_eval.h"
#include "models/io/atomic_file.h"
#include "models/io/checkpoint.h"
#include "models/errors.h"

namespace distill::cli {
namespace {

struct EvalArgs {
  std::string model, tokenizer, format = "text", objective = "span_corruption";
  std::vector<std::string> data;
  int64_t input_length = 128, target_length = 32, batch_size = 16, max_batches = 0;
  uint64_t seed = 1235;
  bool json = false;
  bool bf16 = false;
  // --generate
  bool generate = false;
  bool no_cache = false;
  bool classification = false;
  int64_t max_new_tokens = 64;
  int64_t max_examples = 0;
  std::string predictions;
};

void print_held_out(const EvalArgs& a, Seq2SeqModel& model, const Tokenizer& tokenizer) {
  CorpusOptions co;
  co.files = a.data;
  co.format = parse_corpus_format(a.format);
  auto docs = tokenize_corpus(co, tokenizer).train;
  auto oo = objective_options(tokenizer, a.input_length, a.target_length);
  BatchingOptions bo;
  bo.batch_size = a.batch_size;
  bo.shuffle = false;
  bo.seed = a.seed;
  Dataset ds(std::move(docs), std::shared_ptr<const Objective>(make_objective(a.objective, oo)), bo);
  auto epoch = ds.make_epoch(0);
  std::vector<Batch> batches;
  for (size_t i = 0; i < epoch.batches.size() && (a.max_batches <= 0 || static_cast<int64_t>(i) < a.max_batches); ++i)
    batches.push_back(ds.collate_batch(epoch, i));
  auto r = evaluate(model, batches);
  if (a.json) {
    std::cout << r.to_json().dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("neg_log_perplexity {:.4f} (+- {:.4f})  perplexity {:.3f}  accuracy {:.4f}  on {} target tokens\n",
                           r.neg_log_perplexity, r.nll_stderr, r.perplexity, r.accuracy, r.tokens);
  for (const auto& l : r.routing) {
    std::cout << fmt::format("{}: dropped {:.2f}% (at training capacity {:.2f}%)  load max {:.2f}% min {:.2f}%  "
                             "dead experts {}  mean gate {:.3f}  balance loss {:.3f}\n  load",
                             l.layer, 100 * l.dropped_rate, 100 * l.dropped_rate_train.value_or(l.dropped_rate),
                             100 * l.max_load, 100 * l.min_load, l.dead_experts, l.mean_gate, l.aux_loss);
    for (double x : l.load) std::cout << fmt::format(" {:.3f}", x);
    std::cout << "\n";
  }
  for (const auto& w : routing_warnings(r.routing, a.model)) std::cerr << "warning: " << w << "\n";
}

void print_task(const EvalArgs& a, Seq2SeqModel& model, const Tokenizer& tokenizer) {
  CorpusOptions co;
  co.files = a.data;
  co.format = parse_corpus_format(a.format);
  if (co.format != CorpusFormat::kTsvPairs && co.format != CorpusFormat::kJsonlPairs) {
    throw ConfigError("eval --generate scores input/target pairs: give --format tsv or jsonl_pairs");
  }
  if (a.batch_size > 8192) throw ConfigError("eval --generate: --batch-size must be at most 8192");
  const auto pairs = read_task_pairs(co, a.max_examples);
  DecodeOptions d;
  d.batch_size = a.batch_size;
  d.input_length = a.input_length;
  d.max_new_tokens = a.max_new_tokens;
  d.use_cache = !a.no_cache;
  const auto decoded = decode_task(model, tokenizer, pairs.inputs, d);
  TaskScoreOptions so;
  so.classification = a.classification;
  const auto scores = score_task(decoded.predictions, pairs.references, so);
  if (!a.predictions.empty()) write_text_atomic(a.predictions, predictions_tsv(pairs, decoded.predictions));
  nlohmann::json speed = decoded.speed_json();
  speed.update({{"examples", scores.examples},
                {"cache", d.use_cache},
                {"batch_size", d.batch_size},
                {"threads", at::get_num_threads()}});
  if (a.json) {
    auto j = scores.to_json();
    j["decoding"] = speed;
    std::cout << j.dump(2) << "\n";
    return;
  }
  auto line = [](const char* name, const MetricValue& m, double scale, const char* unit) {
    return fmt::format("{} {:.2f}{} (95% bootstrap interval {:.2f} to {:.2f})\n", name, scale * m.value, unit,
                       scale * m.lo, scale * m.hi);
  };
  std::cout << fmt::format("{} examples\n", scores.examples);
  std::cout << line("exact match", scores.exact_match, 100, "%");
  std::cout << line("token error rate", scores.token_error_rate, 100, "%");
  std::cout << line("character error rate", scores.char_error_rate, 100, "%");
  if (scores.accuracy) {
    std::cout << line("accuracy", *scores.accuracy, 100, "%");
    std::cout << fmt::format("predictions that are no label: {:.2f}%\n", 100 * *scores.invalid_label_rate);
  }
  std::cout << fmt::format("decoding: {:.1f} examples/s ({} examples in {:.2f} s, batch {}, {}, {} thread(s)); "
                           "{} generated tokens, {} outputs cut at --max-new-tokens\n",
                           decoded.examples_per_second(), scores.examples, decoded.seconds, d.batch_size,
                           d.use_cache ? "key/value cache" : "no cache", at::get_num_threads(),
                           decoded.generated_tokens, decoded.truncated);
}

}  // namespace

Command add_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "Negative log perplexity, perplexity, accuracy (and routing) on held-out data; "
                                         "with --generate the task's metrics from greedy decoding of input/target pairs");
  sub->add_option("--model", a->model, "Model directory")->required();
  sub->add_option("--data", a->data, "Held-out corpus files")->required();
  sub->add_option("--tokenizer", a->tokenizer, "Tokenizer (default: the model's spiece.model)");
  sub->add_option("--format", a->format, "Corpus format")->check(CLI::IsMember({"text", "jsonl", "tsv", "jsonl_pairs"}));
  sub->add_option("--objective", a->objective, "Objective")->check(CLI::IsMember({"span_corruption", "seq2seq", "prefix_lm"}));
  sub->add_option("--input-length", a->input_length, "Encoder tokens per example")->check(CLI::Range(4, 1 << 20));
  sub->add_option("--target-length", a->target_length, "Decoder tokens per example")->check(CLI::Range(2, 1 << 20));
  sub->add_option("--batch-size", a->batch_size, "Examples per batch")->check(CLI::PositiveNumber);
  sub->add_option("--max-batches", a->max_batches, "Evaluate at most this many batches (0 = all)");
  sub->add_option("--seed", a->seed, "Seed of the span-corruption noise");
  sub->add_flag("--json", a->json, "Print one JSON object");
  sub->add_flag("--bf16", a->bf16, "Evaluate with bfloat16 weights (routers stay float32)");
  sub->add_flag("--generate", a->generate,
                "Decode each pair's input greedily and score it against its target: exact match, token and "
                "character error rates, with 95% bootstrap intervals, and the decoding speed");
  sub->add_option("--max-new-tokens", a->max_new_tokens, "--generate: decoder tokens at most")->check(CLI::Range(1, 4096));
  sub->add_option("--max-examples", a->max_examples, "--generate: score at most this many pairs (0 = all)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--no-cache", a->no_cache, "--generate: re-run the decoder on the whole prefix every step (the slow reference)");
  sub->add_flag("--classification", a->classification, "--generate: the targets are class labels; also report accuracy");
  sub->add_option("--predictions", a->predictions, "--generate: write input<TAB>target<TAB>prediction lines here");
  return {sub, [a] {
            auto tokenizer = Tokenizer::load(a->tokenizer.empty() ? a->model : a->tokenizer);
            auto model = load_model(a->model);
            check_vocabulary(model->config(), tokenizer, a->model);
            model->set_bf16_products(a->bf16);
            if (a->generate) {
              print_task(*a, model, tokenizer);
            } else {
              print_held_out(*a, model, tokenizer);
            }
          }};
}

}  // namespace distill::cli
