#include "distill/student_init.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "distill/evaluate.h"
#include "models/errors.h"

namespace distill {

FfnInit parse_ffn_init(const std::string& name) {
  if (name == "fresh") return FfnInit::kFresh;
  if (name == "mean") return FfnInit::kMean;
  if (name == "router_weighted") return FfnInit::kRouterWeighted;
  if (name == "top_expert") return FfnInit::kTopExpert;
  throw ConfigError("unknown student init \"" + name + "\" (expected fresh, mean, router_weighted or top_expert)");
}

ModelConfig student_config(const ModelConfig& teacher, std::optional<int64_t> d_ff, double dropout) {
  ModelConfig s = teacher.dense_counterpart();
  if (d_ff) s.d_ff = *d_ff;
  s.dropout_rate = dropout;
  s.expert_dropout_rate = -1;
  return s;
}

std::map<std::string, at::Tensor> routing_frequency(Seq2SeqModel& teacher, const std::vector<Batch>& batches) {
  torch::NoGradGuard ng;
  std::map<std::string, at::Tensor> counts;
  for (const auto& b : batches) {
    auto out = teacher->forward(model_inputs(b));
    for (const auto& [prefix, r] : out.routing) {
      auto hist = expert_counts(r, routed_tokens(prefix, b));
      auto it = counts.find(prefix);
      if (it == counts.end()) counts.emplace(prefix, hist);
      else it->second += hist;
    }
  }
  for (auto& [k, v] : counts) v = v / v.sum().clamp_min(1.0);
  return counts;
}

namespace {

// Student name -> the teacher's name for the same tensor (Switch calls dense FFNs "mlp").
std::string teacher_name(const std::string& student_name, bool teacher_is_switch) {
  if (!teacher_is_switch) return student_name;
  std::string t = student_name;
  auto pos = t.find(".DenseReluDense.");
  if (pos != std::string::npos) t.replace(pos, 16, ".mlp.");
  return t;
}

}  // namespace

StudentInit init_student(Seq2SeqModel& student, const Seq2SeqModel& teacher, FfnInit mode, bool copy_non_expert,
                         const std::map<std::string, at::Tensor>& frequency) {
  torch::NoGradGuard ng;
  StudentInit report;
  const bool switch_teacher = teacher->config().model_type == "switch_transformers";
  const int64_t E = teacher->config().num_experts;
  auto tparams = teacher->named_parameters();
  for (auto& item : student->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    const std::string tname = teacher_name(name, switch_teacher);
    if (const auto* t = tparams.find(tname)) {
      if (copy_non_expert && t->sizes() == p.sizes()) {
        p.copy_(t->to(p.scalar_type()));
        report.copied.push_back(name);
      } else {
        report.fresh.push_back(name);
      }
      continue;
    }
    // An FFN weight in an expert position: "X.mlp.wi.weight" -> "X.mlp.experts.expert_i.wi.weight".
    const auto mlp = tname.find(".mlp.");
    if (mode == FfnInit::kFresh || mlp == std::string::npos || E == 0) {
      report.fresh.push_back(name);
      continue;
    }
    const std::string layer = tname.substr(0, mlp + 1);  // "encoder.block.1.layer.1."
    const std::string leaf = tname.substr(mlp + 5);       // "wi.weight"
    std::vector<at::Tensor> experts;
    for (int64_t e = 0; e < E; ++e) {
      const auto* w = tparams.find(layer + "mlp.experts.expert_" + std::to_string(e) + "." + leaf);
      if (!w) throw CheckpointError("teacher has no tensor " + layer + "mlp.experts.expert_" + std::to_string(e) + "." + leaf);
      if (w->sizes() != p.sizes()) {
        throw ConfigError("student tensor " + name + " " + c10::str(p.sizes()) + " cannot be built from experts of shape " +
                          c10::str(w->sizes()) + ": use student.init: fresh when the student's d_ff differs");
      }
      experts.push_back(w->to(torch::kFloat32));
    }
    auto stacked = torch::stack(experts);  // [E, ...]
    at::Tensor value;
    if (mode == FfnInit::kMean) {
      value = stacked.mean(0);
    } else {
      auto it = frequency.find(layer);
      if (it == frequency.end()) throw Error("no routing frequency measured for " + layer + " (needed by student.init)");
      auto f = it->second.to(torch::kFloat32);
      if (mode == FfnInit::kRouterWeighted) {
        std::vector<int64_t> shape(static_cast<size_t>(stacked.dim()), 1);
        shape[0] = E;
        value = (stacked * f.view(shape)).sum(0);
      } else {
        value = stacked[f.argmax().item<int64_t>()];
      }
    }
    p.copy_(value.to(p.scalar_type()));
    report.from_experts.push_back(name);
  }
  return report;
}

namespace {

uint64_t name_hash(const std::string& s) {  // FNV-1a: the same on every platform
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

}  // namespace

void init_from_scratch(Seq2SeqModel& model, double scale, std::optional<uint64_t> seed) {
  torch::NoGradGuard ng;
  for (auto& item : model->named_parameters()) {
    auto& p = item.value();
    const std::string& name = item.key();
    c10::optional<at::Generator> gen;
    if (seed) gen = at::make_generator<at::CPUGeneratorImpl>(*seed * 0x9E3779B97F4A7C15ull ^ name_hash(name));
    if (name.find("layer_norm") != std::string::npos) {
      p.fill_(1.0);
      continue;
    }
    // nn.Linear weights are [out, in]: fan_in is the last dimension; embeddings use fan_in 1.
    const bool embedding = name == "shared.weight" || name.find("relative_attention_bias") != std::string::npos;
    const double fan_in = embedding || p.dim() < 2 ? 1.0 : static_cast<double>(p.size(-1));
    const double std = std::sqrt(scale / fan_in);
    // Truncated at two standard deviations by redrawing what falls outside.
    auto t = torch::empty_like(p).normal_(0.0, std, gen);
    for (int round = 0; round < 20; ++round) {
      auto outside = t.abs() > 2 * std;
      const auto n = outside.sum().item<int64_t>();
      if (n == 0) break;
      t.masked_scatter_(outside, torch::empty({n}, t.options()).normal_(0.0, std, gen));
    }
    p.copy_(t.clamp_(-2 * std, 2 * std));
  }
}

}  // namespace distill
