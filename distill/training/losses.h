// The distillation objective: hard_weight * CE(ground truth) + soft_weight * soft term against
// the teacher's softened distribution (Hinton et al.; Switch Transformer, Fedus et al. 2022),
// plus optionally hidden_weight * a hidden-state matching term.
#pragma once

#include <ATen/Tensor.h>

#include <string>
#include <vector>

#include "distill/config/hidden_layer_map.h"

namespace distill {

// What the soft term compares. At equal distributions every one but kCe is 0.
enum class SoftLoss {
  kCe,         // cross-entropy H(teacher, student): the paper's
  kKl,         // forward KL(teacher || student): kCe minus the teacher's entropy, same gradient
  kReverseKl,  // KL(student || teacher): mode seeking
  kJsd,        // generalised Jensen-Shannon with mixture M = beta teacher + (1 - beta) student,
               // divided by beta (1 - beta) so that beta -> 0 is the forward KL and beta -> 1 the
               // reverse KL (the limits are used at 0 and 1); beta 0.5 is 4 x the usual JSD
};
SoftLoss parse_soft_loss(const std::string& name);  // ce | kl | reverse_kl | jsd

struct DistillLossOptions {
  double hard_weight = 0.75;   // weight of CE against the labels
  double soft_weight = 0.25;   // weight of the soft term
  double temperature = 1.0;    // T: both distributions softened by logits / T
  SoftLoss soft = SoftLoss::kCe;
  double jsd_beta = 0.5;       // kJsd: the teacher's share of the mixture, in [0, 1]
};

struct DistillLoss {
  at::Tensor total;            // what is minimised
  at::Tensor hard;             // mean CE over target tokens (labels != -100)
  at::Tensor soft;             // mean soft term over target tokens, times T^2
  at::Tensor kl;               // mean KL(teacher || student) at T, times T^2 (for logging)
  at::Tensor hidden;           // mean hidden-state term (undefined when not used)
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

// ---- hidden-state matching ------------------------------------------------------------------

enum class HiddenLoss {
  kMse,     // mean squared difference per element
  kCosine,  // 1 - cosine similarity per token
};
HiddenLoss parse_hidden_loss(const std::string& name);  // mse | cosine

// Mean over `pairs` of the per-token distance between student and teacher hidden states
// ([B, S, D] encoder, [B, T, D] decoder), over real tokens only: encoder_mask [B, S] and
// decoder_mask [B, T] (1 = real), so padding never changes it.
at::Tensor hidden_state_loss(const std::vector<at::Tensor>& student_encoder, const std::vector<at::Tensor>& student_decoder,
                             const std::vector<at::Tensor>& teacher_encoder, const std::vector<at::Tensor>& teacher_decoder,
                             const std::vector<HiddenLayerPair>& pairs, const at::Tensor& encoder_mask,
                             const at::Tensor& decoder_mask, HiddenLoss kind);

}  // namespace distill
