// Held-out evaluation: negative log perplexity, perplexity, token accuracy, their per-batch sums
// (for paired noise estimates between models on the same batches) and, for a sparse model,
// routing health per layer.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batching.h"
#include "distill/process/distributed.h"
#include "distill/evaluation/routing_health.h"
#include "distill/evaluation/stats.h"
#include "models/arch/seq2seq.h"

namespace distill {

struct EvalResult {
  double nll = 0;               // mean negative log-likelihood per target token (nats)
  double nll_stderr = 0;        // standard error of nll over the batches (noise of the held-out sample)
  double neg_log_perplexity = 0;  // -nll: the paper's quality measure (higher is better)
  double perplexity = 0;        // exp(nll)
  double accuracy = 0;          // argmax == label over target tokens
  double accuracy_stderr = 0;   // standard error of accuracy over the batches
  int64_t tokens = 0;           // target tokens evaluated
  stats::BatchSums batch_nll;      // per batch: summed NLL and target tokens
  stats::BatchSums batch_correct;  // per batch: correct argmax predictions and target tokens
  std::vector<LayerRouting> routing;  // sparse models only
  // With `batches`, the per-batch sums too (what the report's paired intervals are computed from).
  nlohmann::json to_json(bool batches = false) const;
  static EvalResult from_json(const nlohmann::json& j);
};

// A batch as model inputs. The decoder's real tokens (labels != -100) are its attention mask, so
// routers that ignore padding skip the padded target positions; causal attention already keeps
// real positions from seeing them. With `labels`, the model also computes its losses.
Seq2SeqInputs model_inputs(const Batch& batch, bool labels = false);

// The real tokens a sparse layer saw ([B, L] bool): the attention mask for an encoder layer
// ("encoder." prefix), labels != -100 for a decoder layer.
at::Tensor routed_tokens(const std::string& layer_prefix, const Batch& batch);

// How many of the `real` tokens chose each expert first: [E] float64.
at::Tensor expert_counts(const RouterOutput& routing, const at::Tensor& real);

// Runs `model` in eval mode without gradients on every batch. With `dist`, each rank runs every
// world_size-th batch and the per-batch sums are reduced, so every rank gets the whole result
// (routing health included).
EvalResult evaluate(Seq2SeqModel& model, const std::vector<Batch>& batches, Collective* dist = nullptr);

}  // namespace distill
