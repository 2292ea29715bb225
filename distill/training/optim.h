// Optimizers and learning-rate schedules, with named state that checkpoints save and restore.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distill/config/run_config.h"

namespace distill {

using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every parameter with a gradient, at learning rate `lr`.
  virtual void step(double lr) = 0;
  void zero_grad();
  // State tensors by name (e.g. "exp_avg/encoder.block.0...."), plus the step count.
  virtual std::vector<std::pair<std::string, at::Tensor>> state() const = 0;
  // Restores what state() returned; throws CheckpointError on a missing or mis-shaped entry.
  virtual void load_state(const std::map<std::string, at::Tensor>& state, const std::string& source) = 0;
  int64_t steps() const { return step_; }

 protected:
  explicit Optimizer(NamedParams params) : params_(std::move(params)) {}
  NamedParams params_;
  int64_t step_ = 0;
};

// torch.optim.AdamW's update, operation for operation (decoupled weight decay first).
class AdamW : public Optimizer {
 public:
  AdamW(NamedParams params, const OptimizerConfig& config);
  void step(double lr) override;
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  void load_state(const std::map<std::string, at::Tensor>& state, const std::string& source) override;

 private:
  OptimizerConfig c_;
  std::vector<at::Tensor> m_, v_;
};

// Adafactor (Shazeer & Stern 2018), T5's optimizer: factored second moments for matrices,
// decay 1 - t^-rate, update RMS clipping, no momentum; the learning rate comes from the schedule.
class Adafactor : public Optimizer {
 public:
  Adafactor(NamedParams params, const OptimizerConfig& config);
  void step(double lr) override;
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  void load_state(const std::map<std::string, at::Tensor>& state, const std::string& source) override;

 private:
  OptimizerConfig c_;
  std::vector<at::Tensor> row_, col_, full_;  // per parameter: factored (row, col) or full
};

std::unique_ptr<Optimizer> make_optimizer(NamedParams params, const OptimizerConfig& config);

// Learning rate at optimizer step `step` (1-based) of `total`.
double schedule_lr(const ScheduleConfig& schedule, double peak_lr, int64_t step, int64_t total);

// Scales gradients so their global L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const NamedParams& params, double max_norm);

}  // namespace distill
