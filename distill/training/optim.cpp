#include "distill/training/optim.h"

#include <ATen/Parallel.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "models/errors.h"
#include "models/kernels/row_kernels.h"

namespace distill {

// Drops the gradients, as PyTorch's zero_grad(set_to_none=True): the next backward hands its
// gradient tensors over instead of adding them into zeros (a pass over every parameter saved), and
// a parameter that gets no gradient is left alone by the step.
void Optimizer::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad().reset();
}

namespace {
at::Tensor find_state(const std::map<std::string, at::Tensor>& s, const std::string& key, const at::Tensor& like,
                      const std::string& source) {
  auto it = s.find(key);
  if (it == s.end()) throw CheckpointError(source + ": optimizer state " + key + " is missing");
  if (it->second.sizes() != like.sizes()) throw CheckpointError(source + ": optimizer state " + key + " has the wrong shape");
  return it->second.to(like.options());
}

int64_t find_step(const std::map<std::string, at::Tensor>& s, const std::string& source) {
  auto it = s.find("step");
  if (it == s.end()) throw CheckpointError(source + ": optimizer state \"step\" is missing");
  return it->second.item<int64_t>();
}
}  // namespace

AdamW::AdamW(NamedParams params, const OptimizerConfig& c) : Optimizer(std::move(params)), c_(c) {
  for (auto& [n, p] : params_) {
    m_.push_back(torch::zeros_like(p));
    v_.push_back(torch::zeros_like(p));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++step_;
  const double bc1 = 1 - std::pow(c_.beta1, static_cast<double>(step_));
  const double bc2_sqrt = std::sqrt(1 - std::pow(c_.beta2, static_cast<double>(step_)));
  const rows::AdamWCoefficients k{static_cast<float>(1 - lr * c_.weight_decay), static_cast<float>(c_.beta1),
                                  static_cast<float>(1 - c_.beta1),            static_cast<float>(c_.beta2),
                                  static_cast<float>(1 - c_.beta2),            static_cast<float>(1.0 / bc2_sqrt),
                                  static_cast<float>(c_.eps),                  static_cast<float>(-lr / bc1)};
  // Float32 CPU parameters go through the row kernel: one pass over memory instead of eight tensor
  // ops, at the CPU's vector width, the same arithmetic; all of them in one parallel region (a
  // region per parameter cost more than the update of the small ones).
  std::vector<size_t> fused;
  std::vector<int64_t> offset{0};  // where each fused parameter starts in the concatenated range
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    const auto& g = p.grad();
    if (p.scalar_type() == torch::kFloat32 && g.scalar_type() == torch::kFloat32 && p.is_contiguous() && g.is_contiguous() &&
        m_[i].is_contiguous() && v_[i].is_contiguous() && p.device().is_cpu()) {
      fused.push_back(i);
      offset.push_back(offset.back() + p.numel());
      continue;
    }
    p.mul_(1 - lr * c_.weight_decay);
    m_[i].mul_(c_.beta1).add_(g, 1 - c_.beta1);
    v_[i].mul_(c_.beta2).addcmul_(g, g, 1 - c_.beta2);
    auto denom = (v_[i].sqrt() / bc2_sqrt).add_(c_.eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
  at::parallel_for(0, offset.back(), 16384, [&](int64_t begin, int64_t end) {
    size_t j = static_cast<size_t>(std::upper_bound(offset.begin(), offset.end(), begin) - offset.begin()) - 1;
    for (; j < fused.size() && offset[j] < end; ++j) {
      const size_t i = fused[j];
      const int64_t lo = std::max(begin, offset[j]) - offset[j], hi = std::min(end, offset[j + 1]) - offset[j];
      if (hi <= lo) continue;
      rows::adamw(params_[i].second.data_ptr<float>() + lo, m_[i].data_ptr<float>() + lo, v_[i].data_ptr<float>() + lo,
                  params_[i].second.grad().data_ptr<float>() + lo, k, hi - lo);
    }
  });
  for (const size_t i : fused) {
    params_[i].second.unsafeGetTensorImpl()->bump_version();  // written through a raw pointer: bf16 copies are stale
  }
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"step", torch::tensor(step_, torch::kLong)}};
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg/" + params_[i].first, m_[i]);
    out.emplace_back("exp_avg_sq/" + params_[i].first, v_[i]);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& s, const std::string& source) {
  step_ = find_step(s, source);
  for (size_t i = 0; i < params_.size(); ++i) {
    m_[i] = find_state(s, "exp_avg/" + params_[i].first, m_[i], source);
    v_[i] = find_state(s, "exp_avg_sq/" + params_[i].first, v_[i], source);
  }
}

Adafactor::Adafactor(NamedParams params, const OptimizerConfig& c) : Optimizer(std::move(params)), c_(c) {
  for (auto& [n, p] : params_) {
    if (p.dim() == 2) {
      row_.push_back(torch::zeros({p.size(0)}, p.options()));  // [R]
      col_.push_back(torch::zeros({p.size(1)}, p.options()));  // [C]
      full_.emplace_back();
    } else {
      row_.emplace_back();
      col_.emplace_back();
      full_.push_back(torch::zeros_like(p));
    }
  }
}

void Adafactor::step(double lr) {
  torch::NoGradGuard ng;
  ++step_;
  constexpr double eps1 = 1e-30;
  const double decay = 1 - std::pow(static_cast<double>(step_), -c_.adafactor_decay_rate);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    auto g2 = p.grad().square() + eps1;
    at::Tensor update;
    if (p.dim() == 2) {
      row_[i].mul_(decay).add_(g2.mean(1), 1 - decay);  // [R]
      col_[i].mul_(decay).add_(g2.mean(0), 1 - decay);  // [C]
      auto r = (row_[i] / row_[i].mean()).rsqrt().unsqueeze(1);  // [R, 1]
      auto c = col_[i].rsqrt().unsqueeze(0);                                  // [1, C]
      update = p.grad() * r * c;
    } else {
      full_[i].mul_(decay).add_(g2, 1 - decay);
      update = p.grad() * full_[i].rsqrt();
    }
    const double rms = update.square().mean().sqrt().item<double>();
    update.div_(std::max(1.0, rms / c_.adafactor_clip_threshold));
    if (c_.weight_decay > 0) p.mul_(1 - lr * c_.weight_decay);
    p.add_(update, -lr);
  }
}

std::vector<std::pair<std::string, at::Tensor>> Adafactor::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out{{"step", torch::tensor(step_, torch::kLong)}};
  for (size_t i = 0; i < params_.size(); ++i) {
    if (row_[i].defined()) {
      out.emplace_back("row/" + params_[i].first, row_[i]);
      out.emplace_back("col/" + params_[i].first, col_[i]);
    } else {
      out.emplace_back("v/" + params_[i].first, full_[i]);
    }
  }
  return out;
}

void Adafactor::load_state(const std::map<std::string, at::Tensor>& s, const std::string& source) {
  step_ = find_step(s, source);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (row_[i].defined()) {
      row_[i] = find_state(s, "row/" + params_[i].first, row_[i], source);
      col_[i] = find_state(s, "col/" + params_[i].first, col_[i], source);
    } else {
      full_[i] = find_state(s, "v/" + params_[i].first, full_[i], source);
    }
  }
}

std::unique_ptr<Optimizer> make_optimizer(NamedParams params, const OptimizerConfig& config) {
  if (config.name == "adamw") return std::make_unique<AdamW>(std::move(params), config);
  if (config.name == "adafactor") return std::make_unique<Adafactor>(std::move(params), config);
  throw ConfigError("unknown optimizer \"" + config.name + "\"");
}

double schedule_lr(const ScheduleConfig& s, double peak, int64_t step, int64_t total) {
  const double t = static_cast<double>(std::max<int64_t>(step, 1));
  const double w = static_cast<double>(s.warmup_steps);
  const double warm = w > 0 ? std::min(1.0, t / w) : 1.0;
  if (s.name == "constant") return peak;
  if (s.name == "linear_warmup") return peak * warm;
  if (s.name == "inverse_sqrt") return peak * warm * std::sqrt(std::max(w, 1.0) / std::max(t, std::max(w, 1.0)));
  if (s.name == "cosine") {
    if (t < w) return peak * warm;
    const double progress = std::min(1.0, (t - w) / std::max(1.0, static_cast<double>(total) - w));
    return peak * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * progress)));
  }
  throw ConfigError("unknown schedule \"" + s.name + "\"");
}

double clip_grad_norm(const NamedParams& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<at::Tensor> norms;
  for (const auto& [n, p] : params)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2).to(torch::kFloat64));
  if (norms.empty()) return 0.0;
  const double total = torch::stack(norms).norm(2).item<double>();
  if (max_norm > 0 && total > max_norm) {
    const double scale = max_norm / (total + 1e-6);
    for (const auto& [n, p] : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace distill
