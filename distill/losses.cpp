#include "distill/losses.h"

#include <torch/torch.h>

#include "models/seq2seq.h"  // token_cross_entropy

namespace distill {

DistillLoss distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                              const at::Tensor& labels, const DistillLossOptions& o) {
  DistillLoss out;
  const double T = o.temperature;
  auto mask = (labels != -100).to(torch::kFloat32);  // [B, T]
  const auto n = mask.sum().clamp_min(1.0);
  // One log-softmax per side over the vocabulary; at T = 1 the hard term reuses the student's.
  auto s_logp = torch::log_softmax(T == 1.0 ? student_logits.to(torch::kFloat32) : student_logits.to(torch::kFloat32) / T, -1);  // [B, T, V]
  auto t_logp = torch::log_softmax(T == 1.0 ? teacher_logits.to(torch::kFloat32) : teacher_logits.to(torch::kFloat32) / T, -1);
  const auto V = student_logits.size(-1);
  out.hard = T == 1.0 ? torch::nll_loss(s_logp.reshape({-1, V}), labels.reshape({-1}), {}, at::Reduction::Mean, -100)
                      : token_cross_entropy(student_logits, labels);
  auto t_p = t_logp.exp();
  auto ce = -(t_p * s_logp).sum(-1);             // [B, T]
  auto entropy = -(t_p * t_logp).sum(-1);        // [B, T], constant w.r.t. the student
  const double t2 = T * T;
  auto soft_ce = (ce * mask).sum() / n * t2;
  out.kl = ((ce - entropy) * mask).sum() / n * t2;
  out.soft = o.kl ? out.kl : soft_ce;
  out.total = o.hard_weight * out.hard + o.soft_weight * out.soft;
  return out;
}

}  // namespace distill
