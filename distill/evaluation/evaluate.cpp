#include "distill/evaluation/evaluate.h"

#include "models/arch/model_stats.h"

#include <torch/torch.h>

#include <cmath>

namespace distill {

nlohmann::json EvalResult::to_json(bool batches) const {
  nlohmann::json j = {{"nll", nll},
                      {"nll_stderr", nll_stderr},
                      {"neg_log_perplexity", neg_log_perplexity},
                      {"perplexity", perplexity},
                      {"accuracy", accuracy},
                      {"accuracy_stderr", accuracy_stderr},
                      {"tokens", tokens}};
  if (!routing.empty()) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : routing) layers.push_back(l.to_json());
    j["routing"] = layers;
  }
  if (batches) {
    j["batches"] = {{"nll", batch_nll.value}, {"correct", batch_correct.value}, {"tokens", batch_nll.count}};
  }
  return j;
}

EvalResult EvalResult::from_json(const nlohmann::json& j) {
  EvalResult r;
  r.nll = j.at("nll").get<double>();
  r.nll_stderr = j.value("nll_stderr", 0.0);
  r.neg_log_perplexity = j.at("neg_log_perplexity").get<double>();
  r.perplexity = j.value("perplexity", std::exp(r.nll));
  r.accuracy = j.value("accuracy", 0.0);
  r.accuracy_stderr = j.value("accuracy_stderr", 0.0);
  r.tokens = j.value("tokens", int64_t{0});
  if (j.contains("batches")) {
    const auto& b = j.at("batches");
    r.batch_nll = {b.at("nll").get<std::vector<double>>(), b.at("tokens").get<std::vector<double>>()};
    r.batch_correct = {b.at("correct").get<std::vector<double>>(), r.batch_nll.count};
  }
  return r;
}

Seq2SeqInputs model_inputs(const Batch& b, bool labels) {
  return {b.input_ids, b.attention_mask, b.decoder_input_ids, (b.labels != -100).to(torch::kLong),
          labels ? b.labels : torch::Tensor()};
}

at::Tensor routed_tokens(const std::string& layer_prefix, const Batch& batch) {
  return layer_prefix.rfind("encoder.", 0) == 0 ? batch.attention_mask.to(torch::kBool) : (batch.labels != -100);
}

at::Tensor expert_counts(const RouterOutput& routing, const at::Tensor& real) {
  return torch::bincount(routing.expert_choice.masked_select(real), {}, routing.logits.size(-1)).to(torch::kFloat64);
}

EvalResult evaluate(Seq2SeqModel& model, const std::vector<Batch>& batches, Collective* dist) {
  torch::NoGradGuard ng;
  const bool was_training = model->is_training();
  model->eval();
  EvalResult r;
  const auto& config = model->config();
  RoutingAccumulator routing(config.is_sparse() ? std::optional<RoutingOptions>(routing_options(config)) : std::nullopt);
  const size_t ranks = dist ? static_cast<size_t>(dist->world_size()) : 1, rank = dist ? static_cast<size_t>(dist->rank()) : 0;
  for (size_t i = 0; i < batches.size(); ++i) {
    const auto& b = batches[i];
    if (i % ranks != rank) {  // another rank's: zeros here, its sums after the reduction
      for (auto* s : {&r.batch_nll, &r.batch_correct}) {
        s->value.push_back(0);
        s->count.push_back(0);
      }
      continue;
    }
    auto out = model->forward(model_inputs(b));
    auto mask = b.labels != -100;
    auto logp = torch::log_softmax(out.logits.to(torch::kFloat32), -1);
    auto safe = b.labels.clamp_min(0);
    auto token_nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1);  // [B, T]
    const double n = static_cast<double>(mask.sum().item<int64_t>());
    r.batch_nll.value.push_back(token_nll.masked_select(mask).sum().item<double>());
    r.batch_nll.count.push_back(n);
    r.batch_correct.value.push_back((out.logits.argmax(-1) == b.labels).logical_and(mask).sum().item<double>());
    r.batch_correct.count.push_back(n);
    for (const auto& [prefix, ro] : out.routing) routing.add(prefix, ro, routed_tokens(prefix, b));
  }
  if (dist && !batches.empty()) {
    for (auto* s : {&r.batch_nll, &r.batch_correct}) {
      s->value = dist->sum_over_ranks(s->value);
      s->count = dist->sum_over_ranks(s->count);
    }
    if (config.is_sparse()) {
      std::vector<std::string> prefixes;
      for (const auto& l : sparse_layers(config)) prefixes.push_back(l.name + ".");
      routing.reduce(*dist, prefixes, config.num_experts);
    }
  }
  double total = 0;
  for (double n : r.batch_nll.count) total += n;
  r.tokens = static_cast<int64_t>(total);
  r.nll = r.batch_nll.ratio();
  r.nll_stderr = stats::ratio_se(r.batch_nll);
  r.neg_log_perplexity = -r.nll;
  r.perplexity = std::exp(r.nll);
  r.accuracy = r.batch_correct.ratio();
  r.accuracy_stderr = stats::ratio_se(r.batch_correct);
  r.routing = routing.layers();
  if (was_training) model->train();
  return r;
}

}  // namespace distill
