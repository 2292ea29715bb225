#include "distill/losses.h"

#include <torch/torch.h>

#include <limits>

#include "models/arch/seq2seq.h"  // token_cross_entropy

namespace distill {
namespace {

// log_softmax(logits / T) in float32; at T = 1 without the division.
torch::Tensor tempered_log_softmax(const torch::Tensor& logits, double T) {
  auto x = logits.to(torch::kFloat32);
  return torch::log_softmax(T == 1.0 ? x : x / T, -1);
}

// The hard term: at T = 1 it reuses the student's log-softmax instead of computing another.
torch::Tensor hard_term(const torch::Tensor& student_logits, const torch::Tensor& s_logp, const torch::Tensor& labels, double T) {
  const auto V = student_logits.size(-1);
  return T == 1.0 ? torch::nll_loss(s_logp.reshape({-1, V}), labels.reshape({-1}), {}, at::Reduction::Mean, -100)
                  : token_cross_entropy(student_logits, labels);
}

// Fills soft, kl and total from per-token cross-entropy and teacher entropy ([B, T]).
void finish(DistillLoss& out, const torch::Tensor& ce, const torch::Tensor& entropy, const torch::Tensor& labels,
            const DistillLossOptions& o) {
  auto mask = (labels != -100).to(torch::kFloat32);  // [B, T]
  const auto n = mask.sum().clamp_min(1.0);
  const double t2 = o.temperature * o.temperature;
  auto soft_ce = (ce * mask).sum() / n * t2;
  out.kl = ((ce - entropy) * mask).sum() / n * t2;
  out.soft = o.kl ? out.kl : soft_ce;
  out.total = o.hard_weight * out.hard + o.soft_weight * out.soft;
}

}  // namespace

DistillLoss distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                              const at::Tensor& labels, const DistillLossOptions& o) {
  DistillLoss out;
  auto s_logp = tempered_log_softmax(student_logits, o.temperature);  // [B, T, V]
  auto t_logp = tempered_log_softmax(teacher_logits, o.temperature);  // [B, T, V]
  out.hard = hard_term(student_logits, s_logp, labels, o.temperature);
  auto t_p = t_logp.exp();
  auto ce = -(t_p * s_logp).sum(-1);       // [B, T]
  auto entropy = -(t_p * t_logp).sum(-1);  // [B, T], constant w.r.t. the student
  finish(out, ce, entropy, labels, o);
  return out;
}

SoftTargets top_k_soft_targets(const at::Tensor& teacher_logits, int64_t k, double temperature) {
  torch::NoGradGuard no_grad;
  auto logp = tempered_log_softmax(teacher_logits, temperature);  // [B, T, V]
  auto top = logp.topk(std::min<int64_t>(k, logp.size(-1)), -1);  // sorted, most probable first
  SoftTargets t;
  t.probs = std::get<0>(top).exp();                                // [B, T, k]
  t.ids = std::get<1>(top);                                        // [B, T, k]
  t.rest = (1.0 - t.probs.sum(-1)).clamp_min(0.0);                 // [B, T]
  return t;
}

DistillLoss distillation_loss(const at::Tensor& student_logits, const SoftTargets& teacher, const at::Tensor& labels,
                              const DistillLossOptions& o) {
  DistillLoss out;
  auto s_logp = tempered_log_softmax(student_logits, o.temperature);  // [B, T, V]
  out.hard = hard_term(student_logits, s_logp, labels, o.temperature);
  auto s_top = s_logp.gather(-1, teacher.ids);                         // [B, T, k]
  auto ce = -(teacher.probs * s_top).sum(-1);                          // [B, T]
  auto entropy = -(teacher.probs * teacher.probs.clamp_min(1e-30).log()).sum(-1);
  if (teacher.ids.size(-1) < s_logp.size(-1)) {
    // The student's log-mass outside the teacher's top k, from its log-probabilities rather than
    // log(1 - sum q), which loses all precision when the k tokens hold nearly everything.
    const float neg_inf = -std::numeric_limits<float>::infinity();
    auto s_rest = torch::logsumexp(s_logp.scatter(-1, teacher.ids, neg_inf), -1);  // [B, T]
    ce = ce - teacher.rest * s_rest;
    entropy = entropy - teacher.rest * teacher.rest.clamp_min(1e-30).log();
  }
  finish(out, ce, entropy, labels, o);
  return out;
}

}  // namespace distill
