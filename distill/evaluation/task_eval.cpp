#include "distill/evaluation/task_eval.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include "models/arch/generate.h"
#include "models/errors.h"

namespace distill {

TaskPairs read_task_pairs(const CorpusOptions& options, int64_t max_examples) {
  if (options.format != CorpusFormat::kTsvPairs && options.format != CorpusFormat::kJsonlPairs) {
    throw ConfigError("task evaluation needs input/target pairs: format tsv or jsonl_pairs");
  }
  TaskPairs pairs;
  read_corpus(options, [&](Document&& d) {
    if (max_examples > 0 && static_cast<int64_t>(pairs.inputs.size()) >= max_examples) return;
    pairs.inputs.push_back(std::move(d.text));
    pairs.references.push_back(std::move(d.target));
  });
  return pairs;
}

nlohmann::json Decoded::speed_json() const {
  return {{"examples_per_second", examples_per_second()}, {"seconds", seconds}, {"generated_tokens", generated_tokens},
          {"truncated", truncated}};
}

std::string predictions_tsv(const TaskPairs& pairs, const std::vector<std::string>& predictions) {
  std::string text;
  for (size_t i = 0; i < pairs.inputs.size() && i < predictions.size(); ++i) {
    text += pairs.inputs[i] + "\t" + pairs.references[i] + "\t" + predictions[i] + "\n";
  }
  return text;
}

Decoded decode_task(Seq2SeqModel& model, const Tokenizer& tokenizer, const std::vector<std::string>& inputs,
                    const DecodeOptions& options) {
  if (options.batch_size < 1 || options.input_length < 2 || options.max_new_tokens < 1) {
    throw ConfigError("task decoding: batch_size >= 1, input_length >= 2 and max_new_tokens >= 1 expected");
  }
  const auto start = std::chrono::steady_clock::now();
  Decoded out;
  out.predictions.resize(inputs.size());
  std::vector<std::vector<int32_t>> ids(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    ids[i] = tokenizer.encode(inputs[i], /*add_eos=*/false);
    if (static_cast<int64_t>(ids[i].size()) > options.input_length - 1) ids[i].resize(options.input_length - 1);
    ids[i].push_back(static_cast<int32_t>(tokenizer.eos_id()));
  }
  // Longest first, so a batch pads little and the slowest batch comes first.
  std::vector<size_t> order(inputs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() > ids[b].size(); });
  GenerateOptions g;
  g.max_new_tokens = options.max_new_tokens;
  g.use_cache = options.use_cache;
  const auto eos = tokenizer.eos_id(), pad = tokenizer.pad_id();
  for (size_t first = 0; first < order.size(); first += static_cast<size_t>(options.batch_size)) {
    const size_t n = std::min(order.size() - first, static_cast<size_t>(options.batch_size));
    const auto S = static_cast<int64_t>(ids[order[first]].size());
    auto input = torch::full({static_cast<int64_t>(n), S}, pad, torch::kLong);  // [B, S]
    auto mask = torch::zeros({static_cast<int64_t>(n), S}, torch::kLong);
    auto* in = input.data_ptr<int64_t>();
    auto* m = mask.data_ptr<int64_t>();
    for (size_t b = 0; b < n; ++b) {
      const auto& row = ids[order[first + b]];
      for (size_t s = 0; s < row.size(); ++s) {
        in[b * S + s] = row[s];
        m[b * S + s] = 1;
      }
    }
    auto generated = greedy_generate(model, input, mask, g).contiguous();  // [B, 1 + n]
    const auto T = generated.size(1);
    const auto* gen = generated.data_ptr<int64_t>();
    for (size_t b = 0; b < n; ++b) {
      std::vector<int64_t> tokens;
      bool ended = false;
      for (int64_t t = 1; t < T; ++t) {  // after the decoder start token
        const auto id = gen[static_cast<int64_t>(b) * T + t];
        ++out.generated_tokens;
        if (id == eos) {
          ended = true;
          break;
        }
        if (id != pad) tokens.push_back(id);
      }
      if (!ended) ++out.truncated;
      out.predictions[order[first + b]] = tokenizer.decode(tokens);
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace distill
