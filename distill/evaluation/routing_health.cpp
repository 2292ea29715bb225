#include "distill/evaluation/routing_health.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>

namespace distill {

nlohmann::json LayerRouting::to_json() const {
  nlohmann::json j = {{"layer", layer},       {"dropped_rate", dropped_rate}, {"load", load},
                      {"max_load", max_load}, {"min_load", min_load},         {"dead_experts", dead_experts},
                      {"mean_gate", mean_gate}, {"aux_loss", aux_loss},       {"tokens", tokens}};
  if (dropped_rate_train) j["dropped_rate_train_capacity"] = *dropped_rate_train;
  return j;
}

RoutingAccumulator::RoutingAccumulator(std::optional<RoutingOptions> train_routing) : train_(std::move(train_routing)) {}

void RoutingAccumulator::add(const std::string& prefix, const RouterOutput& r, const at::Tensor& real_in) {
  torch::NoGradGuard ng;
  const auto real = real_in.to(torch::kCPU, torch::kBool);
  const int64_t E = r.logits.size(-1);
  auto& s = layers_[prefix];
  const auto choice = r.expert_choice.to(torch::kCPU);
  s.tokens += real.sum().item<double>();
  s.dropped += r.kept.to(torch::kCPU).logical_not().logical_and(real).sum().item<double>();
  auto counts = torch::bincount(choice.masked_select(real), {}, E).to(torch::kFloat64);
  s.load = s.load.defined() ? s.load + counts : counts;
  auto probs = torch::softmax(r.logits.detach().to(torch::kCPU, torch::kFloat32), -1);  // [B, S, E]
  auto gate = probs.gather(-1, choice.unsqueeze(-1)).squeeze(-1);                     // [B, S]
  s.gate += gate.masked_select(real).sum().item<double>();
  s.aux += load_balancing_loss(r.logits.detach().to(torch::kCPU, torch::kFloat32), choice, real).item<double>();
  ++s.batches;
  if (train_) {
    const auto active = r.active.defined() ? r.active.to(torch::kCPU) : torch::Tensor();
    const int64_t routed = active.defined() ? active.sum().item<int64_t>() : real.numel();
    const int64_t capacity = expert_capacity_for(*train_, routed, /*training=*/true);
    auto rt = route_tokens(probs, train_->top_k, train_->capacity_mode, capacity, active);
    auto kept = rt.kept.select(1, 0).view(real.sizes());
    s.dropped_train += kept.logical_not().logical_and(real).sum().item<double>();
  }
}

void RoutingAccumulator::reduce(Collective& c, const std::vector<std::string>& prefixes, int64_t num_experts) {
  // [tokens, dropped, dropped_train, gate, aux, batches, load x E] per layer, zeros where absent.
  const size_t width = 6 + static_cast<size_t>(num_experts);
  std::vector<double> flat(prefixes.size() * width, 0.0);
  for (size_t i = 0; i < prefixes.size(); ++i) {
    auto it = layers_.find(prefixes[i]);
    if (it == layers_.end()) continue;
    const Sums& s = it->second;
    double* row = &flat[i * width];
    row[0] = s.tokens, row[1] = s.dropped, row[2] = s.dropped_train, row[3] = s.gate, row[4] = s.aux;
    row[5] = static_cast<double>(s.batches);
    if (s.load.defined()) std::copy(s.load.data_ptr<double>(), s.load.data_ptr<double>() + num_experts, row + 6);
  }
  flat = c.sum_over_ranks(flat);
  for (size_t i = 0; i < prefixes.size(); ++i) {
    const double* row = &flat[i * width];
    if (row[5] == 0) continue;  // no rank saw it
    Sums& s = layers_[prefixes[i]];
    s.tokens = row[0], s.dropped = row[1], s.dropped_train = row[2], s.gate = row[3], s.aux = row[4];
    s.batches = static_cast<int64_t>(row[5]);
    s.load = torch::tensor(std::vector<double>(row + 6, row + width), torch::kFloat64);
  }
}

std::vector<LayerRouting> RoutingAccumulator::layers() const {
  std::vector<LayerRouting> out;
  for (const auto& [prefix, s] : layers_) {
    LayerRouting l;
    l.layer = !prefix.empty() && prefix.back() == '.' ? prefix.substr(0, prefix.size() - 1) : prefix;
    l.tokens = static_cast<int64_t>(s.tokens);
    l.dropped_rate = s.tokens > 0 ? s.dropped / s.tokens : 0.0;
    if (train_) l.dropped_rate_train = s.tokens > 0 ? s.dropped_train / s.tokens : 0.0;
    auto load = s.load / s.load.sum().clamp_min(1.0);
    l.load.assign(load.data_ptr<double>(), load.data_ptr<double>() + load.numel());
    const double even = l.load.empty() ? 0.0 : 1.0 / static_cast<double>(l.load.size());
    if (!l.load.empty()) {
      l.max_load = *std::max_element(l.load.begin(), l.load.end());
      l.min_load = *std::min_element(l.load.begin(), l.load.end());
    }
    l.dead_experts = std::count_if(l.load.begin(), l.load.end(), [&](double x) { return x < kDeadExpertShare * even; });
    l.mean_gate = s.tokens > 0 ? s.gate / s.tokens : 0.0;
    l.aux_loss = s.batches > 0 ? s.aux / static_cast<double>(s.batches) : 0.0;
    out.push_back(std::move(l));
  }
  // Encoder layers first, then by block number (the map sorts "block.10" before "block.2").
  auto key = [](const LayerRouting& l) {
    const bool decoder = l.layer.rfind("decoder.", 0) == 0;
    const auto at = l.layer.find("block.");
    const int64_t block = at == std::string::npos ? 0 : std::atoll(l.layer.c_str() + at + 6);
    return std::make_pair(decoder, block);
  };
  std::stable_sort(out.begin(), out.end(), [&](const LayerRouting& a, const LayerRouting& b) { return key(a) < key(b); });
  return out;
}

std::vector<std::string> routing_warnings(const std::vector<LayerRouting>& layers, const std::string& model) {
  std::vector<std::string> out;
  for (const auto& l : layers) {
    std::string what;
    if (l.dropped_rate > kDroppedWarning) what = fmt::format("drops {:.1f}% of its tokens at evaluation capacity", 100 * l.dropped_rate);
    if (l.dead_experts > 0) {
      what += fmt::format("{}{} of {} experts are dead (under {:.0f}% of an even share of the tokens; least loaded {:.3f}%)",
                          what.empty() ? "" : "; ", l.dead_experts, l.load.size(), 100 * kDeadExpertShare, 100 * l.min_load);
    }
    if (!what.empty()) out.push_back(model + " " + l.layer + ": " + what);
  }
  return out;
}

}  // namespace distill
