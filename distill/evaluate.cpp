#include "distill/evaluate.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

namespace distill {

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"nll", nll},           {"nll_stderr", nll_stderr}, {"neg_log_perplexity", neg_log_perplexity},
                      {"perplexity", perplexity}, {"accuracy", accuracy}, {"tokens", tokens}};
  if (!routing.empty()) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : routing) layers.push_back({{"layer", l.layer}, {"dropped_rate", l.dropped_rate}, {"load", l.load}});
    j["routing"] = layers;
  }
  return j;
}

at::Tensor routed_tokens(const std::string& layer_prefix, const Batch& batch) {
  return layer_prefix.rfind("encoder.", 0) == 0 ? batch.attention_mask.to(torch::kBool) : (batch.labels != -100);
}

at::Tensor expert_counts(const RouterOutput& routing, const at::Tensor& real) {
  return torch::bincount(routing.expert_choice.masked_select(real), {}, routing.logits.size(-1)).to(torch::kFloat64);
}

EvalResult evaluate(Seq2SeqModel& model, const std::vector<Batch>& batches) {
  torch::NoGradGuard ng;
  const bool was_training = model->is_training();
  model->eval();
  double nll_sum = 0, correct = 0;
  int64_t tokens = 0;
  std::vector<double> batch_nll;
  struct Acc {
    double dropped = 0, total = 0;
    at::Tensor load;
  };
  std::map<std::string, Acc> layers;
  for (const auto& b : batches) {
    auto out = model->forward({b.input_ids, b.attention_mask, b.decoder_input_ids, {}, {}});
    auto mask = b.labels != -100;
    auto logp = torch::log_softmax(out.logits.to(torch::kFloat32), -1);
    auto safe = b.labels.clamp_min(0);
    auto token_nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1);  // [B, T]
    const double s = token_nll.masked_select(mask).sum().item<double>();
    const auto n = mask.sum().item<int64_t>();
    nll_sum += s;
    tokens += n;
    if (n > 0) batch_nll.push_back(s / static_cast<double>(n));
    correct += (out.logits.argmax(-1) == b.labels).logical_and(mask).sum().item<double>();
    for (const auto& [prefix, r] : out.routing) {
      auto real = routed_tokens(prefix, b);
      auto& acc = layers[prefix];
      acc.total += real.sum().item<double>();
      acc.dropped += r.kept.logical_not().logical_and(real).sum().item<double>();
      auto hist = expert_counts(r, real);
      acc.load = acc.load.defined() ? acc.load + hist : hist;
    }
  }
  EvalResult r;
  r.tokens = tokens;
  r.nll = tokens > 0 ? nll_sum / static_cast<double>(tokens) : 0.0;
  r.neg_log_perplexity = -r.nll;
  r.perplexity = std::exp(r.nll);
  r.accuracy = tokens > 0 ? correct / static_cast<double>(tokens) : 0.0;
  if (batch_nll.size() > 1) {
    double mean = 0, var = 0;
    for (double x : batch_nll) mean += x;
    mean /= static_cast<double>(batch_nll.size());
    for (double x : batch_nll) var += (x - mean) * (x - mean);
    var /= static_cast<double>(batch_nll.size() - 1);
    r.nll_stderr = std::sqrt(var / static_cast<double>(batch_nll.size()));
  }
  for (auto& [prefix, acc] : layers) {
    LayerRouting l;
    l.layer = prefix.substr(0, prefix.size() - 1);
    l.dropped_rate = acc.total > 0 ? acc.dropped / acc.total : 0.0;
    auto load = acc.load / acc.load.sum().clamp_min(1.0);
    l.load.assign(load.data_ptr<double>(), load.data_ptr<double>() + load.numel());
    r.routing.push_back(std::move(l));
  }
  if (was_training) model->train();
  return r;
}

}  // namespace distill
