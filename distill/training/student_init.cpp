#include "distill/training/student_init.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "distill/evaluation/evaluate.h"
#include "distill/training/unit_matching.h"
#include "models/errors.h"

namespace distill {

FfnInit parse_ffn_init(const std::string& name) {
  if (name == "fresh") return FfnInit::kFresh;
  if (name == "mean") return FfnInit::kMean;
  if (name == "router_weighted") return FfnInit::kRouterWeighted;
  if (name == "top_expert") return FfnInit::kTopExpert;
  if (name == "concat_top_k") return FfnInit::kConcatTopK;
  if (name == "merge_aligned") return FfnInit::kMergeAligned;
  throw ConfigError("unknown student init \"" + name +
                    "\" (expected fresh, mean, router_weighted, top_expert, concat_top_k or merge_aligned)");
}

bool needs_routing_frequency(FfnInit mode) {
  return mode == FfnInit::kRouterWeighted || mode == FfnInit::kTopExpert || mode == FfnInit::kConcatTopK ||
         mode == FfnInit::kMergeAligned;
}

std::optional<int64_t> student_d_ff(const ModelConfig& teacher, std::optional<int64_t> d_ff, const FfnInitOptions& init) {
  if (d_ff) return d_ff;
  if (init.mode == FfnInit::kConcatTopK) return init.top_k * teacher.d_ff;
  return std::nullopt;
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

bool is_output_projection(const std::string& leaf) { return leaf.rfind("wo.", 0) == 0; }

// A dense FFN tensor of width F tiled to width k F: the input projection's rows repeated, the
// output projection's columns repeated and divided by k, which computes the same function.
// Undefined when `student` is not such a widening of `teacher`.
at::Tensor widened(const at::Tensor& teacher, const at::Tensor& student, const std::string& leaf) {
  if (teacher.dim() != 2 || student.dim() != 2) return {};
  const int64_t axis = is_output_projection(leaf) ? 1 : 0;
  const int64_t F = teacher.size(axis), wide = student.size(axis);
  if (teacher.size(1 - axis) != student.size(1 - axis) || wide <= F || wide % F != 0) return {};
  const int64_t k = wide / F;
  auto t = teacher.to(torch::kFloat32);
  return axis == 0 ? t.repeat({k, 1}) : t.repeat({1, k}) / static_cast<double>(k);
}

// One sparse layer's experts, as the expert-built inits read them.
class LayerExperts {
 public:
  LayerExperts(const torch::OrderedDict<std::string, at::Tensor>& tparams, std::string layer, int64_t E)
      : tparams_(tparams), layer_(std::move(layer)), E_(E) {}

  // The experts' tensor `leaf` ("wi.weight"), [E, ...] float32.
  at::Tensor stacked(const std::string& leaf) const {
    std::vector<at::Tensor> experts;
    for (int64_t e = 0; e < E_; ++e) experts.push_back(expert(e, leaf));
    return torch::stack(experts);
  }

  at::Tensor expert(int64_t e, const std::string& leaf) const {
    const std::string name = layer_ + "mlp.experts.expert_" + std::to_string(e) + "." + leaf;
    const auto* w = tparams_.find(name);
    if (!w) throw CheckpointError("teacher has no tensor " + name);
    return w->to(torch::kFloat32);
  }

  // The leaves of one expert ("wi.weight", "wo.weight", ...).
  std::vector<std::string> leaves() const {
    const std::string prefix = layer_ + "mlp.experts.expert_0.";
    std::vector<std::string> out;
    for (const auto& item : tparams_)
      if (item.key().rfind(prefix, 0) == 0) out.push_back(item.key().substr(prefix.size()));
    return out;
  }

  // Per expert, the order of its hidden units that best matches the reference expert's.
  const std::vector<std::vector<int64_t>>& alignment(int64_t reference) {
    if (!perms_.empty()) return perms_;
    const auto features = [&](int64_t e) {  // [F, K]: each unit's input rows and output column
      std::vector<at::Tensor> parts;
      for (const auto& leaf : leaves()) {
        auto w = expert(e, leaf);
        parts.push_back(is_output_projection(leaf) ? w.t() : w);
      }
      return torch::cat(parts, 1);
    };
    const auto ref = features(reference);
    for (int64_t e = 0; e < E_; ++e) {
      if (e == reference) {
        std::vector<int64_t> identity(static_cast<size_t>(ref.size(0)));
        for (size_t i = 0; i < identity.size(); ++i) identity[i] = static_cast<int64_t>(i);
        perms_.push_back(identity);
      } else {
        perms_.push_back(match_units(ref, features(e)));
      }
    }
    return perms_;
  }

 private:
  const torch::OrderedDict<std::string, at::Tensor>& tparams_;
  std::string layer_;
  int64_t E_;
  std::vector<std::vector<int64_t>> perms_;
};

// The k most-routed experts of a layer, most-routed first (ties: lower index).
std::vector<int64_t> most_routed(const at::Tensor& frequency, int64_t k) {
  auto order = std::get<1>(frequency.to(torch::kFloat64).sort(/*stable=*/true, -1, /*descending=*/true));
  std::vector<int64_t> out;
  for (int64_t i = 0; i < k; ++i) out.push_back(order[i].item<int64_t>());
  return out;
}

// The student FFN tensor `leaf` of an expert position, built from the layer's experts.
at::Tensor from_experts(LayerExperts& layer, const std::string& leaf, const FfnInitOptions& o, const at::Tensor* frequency,
                        int64_t E) {
  if (o.mode == FfnInit::kMean) return layer.stacked(leaf).mean(0);
  const auto f = frequency->to(torch::kFloat32);
  switch (o.mode) {
    case FfnInit::kRouterWeighted: {
      auto stacked = layer.stacked(leaf);  // [E, ...]
      std::vector<int64_t> shape(static_cast<size_t>(stacked.dim()), 1);
      shape[0] = E;
      return (stacked * f.view(shape)).sum(0);
    }
    case FfnInit::kTopExpert:
      return layer.expert(f.argmax().item<int64_t>(), leaf);
    case FfnInit::kConcatTopK: {
      if (o.top_k > E) throw ConfigError("student.top_k " + std::to_string(o.top_k) + " exceeds the teacher's " + std::to_string(E) + " experts");
      const auto chosen = most_routed(f, o.top_k);
      double total = 0;
      for (auto e : chosen) total += f[e].item<double>();
      std::vector<at::Tensor> parts;
      for (auto e : chosen) {
        auto w = layer.expert(e, leaf);
        if (is_output_projection(leaf)) {
          // The output scaled by each expert's share: the student starts as their weighted mean.
          const double share = o.plain_weights || total <= 0 ? 1.0 / static_cast<double>(o.top_k) : f[e].item<double>() / total;
          w = w * share;
        }
        parts.push_back(w);
      }
      return torch::cat(parts, is_output_projection(leaf) ? 1 : 0);  // wi: [k F, D]; wo: [D, k F]
    }
    case FfnInit::kMergeAligned: {
      const auto& perms = layer.alignment(f.argmax().item<int64_t>());
      at::Tensor sum;
      for (int64_t e = 0; e < E; ++e) {
        auto index = torch::tensor(perms[static_cast<size_t>(e)], torch::kInt64);
        auto w = layer.expert(e, leaf).index_select(is_output_projection(leaf) ? 1 : 0, index) * f[e];
        sum = sum.defined() ? sum + w : w;
      }
      return sum;
    }
    default: throw Error("unreachable student init");
  }
}

}  // namespace

StudentInit init_student(Seq2SeqModel& student, const Seq2SeqModel& teacher, const FfnInitOptions& o, bool copy_non_expert,
                         const std::map<std::string, at::Tensor>& frequency) {
  torch::NoGradGuard ng;
  StudentInit report;
  const bool switch_teacher = teacher->config().model_type == "switch_transformers";
  const int64_t E = teacher->config().num_experts;
  auto tparams = teacher->named_parameters();
  std::map<std::string, LayerExperts> layers;
  for (auto& item : student->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    const std::string tname = teacher_name(name, switch_teacher);
    const auto mlp = tname.find(".mlp.");
    if (const auto* t = tparams.find(tname)) {
      at::Tensor wide;
      if (copy_non_expert && t->sizes() == p.sizes()) {
        p.copy_(t->to(p.scalar_type()));
        report.copied.push_back(name);
      } else if (copy_non_expert && o.mode == FfnInit::kConcatTopK && mlp != std::string::npos &&
                 (wide = widened(*t, p, tname.substr(mlp + 5))).defined()) {
        p.copy_(wide.to(p.scalar_type()));
        report.widened.push_back(name);
      } else {
        report.fresh.push_back(name);
      }
      continue;
    }
    // An FFN weight in an expert position: "X.mlp.wi.weight" -> "X.mlp.experts.expert_i.wi.weight".
    if (o.mode == FfnInit::kFresh || mlp == std::string::npos || E == 0) {
      report.fresh.push_back(name);
      continue;
    }
    const std::string layer = tname.substr(0, mlp + 1);  // "encoder.block.1.layer.1."
    const std::string leaf = tname.substr(mlp + 5);       // "wi.weight"
    const at::Tensor* f = nullptr;
    if (needs_routing_frequency(o.mode)) {
      auto it = frequency.find(layer);
      if (it == frequency.end()) throw Error("no routing frequency measured for " + layer + " (needed by student.init)");
      f = &it->second;
    }
    auto& experts = layers.try_emplace(layer, tparams, layer, E).first->second;
    auto value = from_experts(experts, leaf, o, f, E);
    if (value.sizes() != p.sizes()) {
      throw ConfigError("student tensor " + name + " " + c10::str(p.sizes()) + " cannot be built from the experts: they give " +
                        c10::str(value.sizes()) + " (student.d_ff must be the experts' d_ff, or top_k times it with " +
                        "concat_top_k; any width works with student.init: fresh)");
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
