// How far bf16 products move a model's distillation gradient from float32's, on real training
// batches: build/bf16_gradients CONFIG STUDENT_MODEL TEACHER_MODEL [BATCHES]. For each batch (the
// first epoch's 0, 7, 14, ...: the config's data, objective and batch size) the student's gradient
// of the configured distillation loss is taken twice from the same weights, float32 and bf16, and
// the relative error ||g_bf16 - g_fp32|| / ||g_fp32|| printed for the whole gradient and, at the
// end, per parameter (mean over the batches, worst first). A hand-run diagnostic, not a test.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "distill/config/run_config.h"
#include "distill/evaluation/evaluate.h"
#include "distill/pipeline/run_data.h"
#include "distill/process/runtime.h"
#include "distill/training/losses.h"
#include "models/errors.h"
#include "models/io/checkpoint.h"
#include "models/kernels/mixed_precision.h"

namespace {

using namespace distill;

using Gradients = std::map<std::string, torch::Tensor>;

Gradients gradient(const std::string& model_dir, const Batch& b, const torch::Tensor& teacher_logits,
                   const DistillLossOptions& loss, bool bf16) {
  auto student = load_model(model_dir);  // fresh each time: both gradients from the same weights
  student->train();
  torch::manual_seed(0);  // the same dropout masks and router jitter for both
  torch::Tensor total;
  {
    Bf16Products amp(bf16);
    auto logits = student->forward(model_inputs(b)).logits;  // as the trainer feeds it
    total = distillation_loss(logits, teacher_logits, b.labels, loss).total;
  }
  total.backward();
  Gradients g;
  for (const auto& p : student->named_parameters()) {
    if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
  }
  return g;
}

int run(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::fprintf(stderr, "usage: %s CONFIG STUDENT_MODEL TEACHER_MODEL [BATCHES (default 12)]\n", argv[0]);
    return 2;
  }
  int batches = 12;
  if (argc == 5) {
    size_t used = 0;
    try {
      batches = std::stoi(argv[4], &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != std::string(argv[4]).size() || batches < 1 || batches > 1000) {
      throw Error(fmt::format("BATCHES: expected a whole number from 1 to 1000, got '{}'", argv[4]));
    }
  }
  init_runtime(0);
  const auto config = load_run_config(argv[1]);
  const auto data = prepare_data(config, resolve_tokenizer(config), /*quiet=*/true);
  auto teacher = load_model(argv[3]);
  teacher->eval();
  const auto& x = config.distillation;
  const DistillLossOptions loss{x.hard_weight, x.soft_weight, x.temperature, parse_soft_loss(x.soft_loss), x.jsd_beta};
  const auto epoch = data.train->make_epoch(0);
  std::map<std::string, double> per_param;
  for (int i = 0; i < batches; ++i) {
    const size_t index = static_cast<size_t>(i) * 7 % epoch.batches.size();
    const auto b = data.train->collate_batch(epoch, index);
    torch::Tensor t;
    {
      torch::NoGradGuard no_grad;
      t = teacher->forward(model_inputs(b)).logits;
    }
    const auto f32 = gradient(argv[2], b, t, loss, false), b16 = gradient(argv[2], b, t, loss, true);
    double n32 = 0, n16 = 0, diff = 0, dot = 0;
    for (const auto& [name, g] : f32) {
      const auto& h = b16.at(name);
      const double a = g.norm().item<double>(), d = (h - g).norm().item<double>(), c = h.norm().item<double>();
      per_param[name] += (a > 0 ? d / a : 0.0) / batches;
      n32 += a * a;
      n16 += c * c;
      diff += d * d;
      dot += (g * h).sum().item<double>();
    }
    fmt::print("batch {:4d}: |g| float32 {:.4f}, bf16 {:.4f}; |bf16 - float32| / |float32| {:.4f}; cosine {:.6f}\n", index,
               std::sqrt(n32), std::sqrt(n16), std::sqrt(diff / n32), dot / std::sqrt(n32 * n16));
  }
  std::vector<std::pair<double, std::string>> worst;
  for (const auto& [name, e] : per_param) worst.emplace_back(e, name);
  std::sort(worst.rbegin(), worst.rend());
  fmt::print("per parameter, mean relative error over the batches (median {:.4f}), worst first:\n",
             worst[worst.size() / 2].first);
  for (size_t i = 0; i < std::min<size_t>(10, worst.size()); ++i) fmt::print("  {:.4f}  {}\n", worst[i].first, worst[i].second);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bf16_gradients: %s\n", e.what());
    return 1;
  }
}
