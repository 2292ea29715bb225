// The distillation objective: hard_weight * CE(ground truth) + soft_weight * soft term against
// the teacher's softened distribution (Hinton et al.; Switch Transformer, Fedus et al. 2022).
#pragma once

#include <ATen/Tensor.h>

namespace distill {

struct DistillLossOptions {
  double hard_weight = 0.75;   // weight of CE against the labels
  double soft_weight = 0.25;   // weight of the soft term
  double temperature = 1.0;    // T: both distributions softened by logits / T
  bool kl = false;             // soft term KL(teacher || student) instead of CE; same gradient
};

struct DistillLoss {
  at::Tensor total;            // what is minimised
  at::Tensor hard;             // mean CE over target tokens (labels != -100)
  at::Tensor soft;             // mean soft term (CE or KL) over target tokens, times T^2
  at::Tensor kl;               // mean KL(teacher || student) at T, times T^2 (for logging)
};

// student_logits, teacher_logits [B, T, V]; labels [B, T] with -100 ignored. The soft term is
// multiplied by T^2 so its gradient keeps its scale as T changes (Hinton et al. 2015).
DistillLoss distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                              const at::Tensor& labels, const DistillLossOptions& options);

// The teacher's distribution at temperature T cut to its k most probable tokens, the rest of its
// mass kept as one number: a (k+1)-class distribution whose last class is "any other token".
struct SoftTargets {
  at::Tensor ids;              // [B, T, k] int64, most probable first
  at::Tensor probs;            // [B, T, k] float32
  at::Tensor rest;             // [B, T] float32, 1 - probs.sum(-1)
};
SoftTargets top_k_soft_targets(const at::Tensor& teacher_logits, int64_t k, double temperature);

// The same objective against top-k soft targets: the soft term compares the teacher's k+1 classes
// with the student's (its probabilities of the k tokens and its mass on all others). With k = V
// it equals the full loss.
DistillLoss distillation_loss(const at::Tensor& student_logits, const SoftTargets& teacher, const at::Tensor& labels,
                              const DistillLossOptions& options);

}  // namespace distill
