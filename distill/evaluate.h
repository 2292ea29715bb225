// Held-out evaluation: negative log perplexity, perplexity, token accuracy and, for a sparse
// model, dropped-token rate and expert load per layer.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "models/seq2seq.h"

namespace distill {

struct LayerRouting {
  std::string layer;            // Hugging Face prefix of the sparse FFN
  double dropped_rate = 0;      // real tokens whose top-1 expert was over capacity
  std::vector<double> load;     // fraction of real tokens routed to each expert (top-1)
};

struct EvalResult {
  double nll = 0;               // mean negative log-likelihood per target token (nats)
  double nll_stderr = 0;        // standard error of nll across batches (noise of the estimate)
  double neg_log_perplexity = 0;  // -nll: the paper's quality measure (higher is better)
  double perplexity = 0;        // exp(nll)
  double accuracy = 0;          // argmax == label over target tokens
  int64_t tokens = 0;           // target tokens evaluated
  std::vector<LayerRouting> routing;  // sparse models only
  nlohmann::json to_json() const;
};

// The real tokens a sparse layer saw ([B, L] bool): the attention mask for an encoder layer
// ("encoder." prefix), labels != -100 for a decoder layer.
at::Tensor routed_tokens(const std::string& layer_prefix, const Batch& batch);

// How many of the `real` tokens chose each expert first: [E] float64.
at::Tensor expert_counts(const RouterOutput& routing, const at::Tensor& real);

// Runs `model` in eval mode without gradients on every batch.
EvalResult evaluate(Seq2SeqModel& model, const std::vector<Batch>& batches);

}  // namespace distill
