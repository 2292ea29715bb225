#include "distill/training/losses.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "models/arch/seq2seq.h"  // token_cross_entropy
#include "models/errors.h"

namespace distill {

SoftLoss parse_soft_loss(const std::string& name) {
  if (name == "ce") return SoftLoss::kCe;
  if (name == "kl") return SoftLoss::kKl;
  if (name == "reverse_kl") return SoftLoss::kReverseKl;
  if (name == "jsd") return SoftLoss::kJsd;
  throw ConfigError("unknown soft loss \"" + name + "\" (expected ce, kl, reverse_kl or jsd)");
}

HiddenLoss parse_hidden_loss(const std::string& name) {
  if (name == "mse") return HiddenLoss::kMse;
  if (name == "cosine") return HiddenLoss::kCosine;
  throw ConfigError("unknown hidden-state loss \"" + name + "\" (expected mse or cosine)");
}

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

// sum_c p_c (log p_c - log q_c) over the last dimension; both log-probabilities finite.
torch::Tensor kl_divergence(const torch::Tensor& logp, const torch::Tensor& logq) {
  return (logp.exp() * (logp - logq)).sum(-1);
}

// The per-token soft term [B, T] between two distributions over the same classes (log-probs [B, T, C]).
torch::Tensor soft_term(const torch::Tensor& s_logp, const torch::Tensor& t_logp, const DistillLossOptions& o) {
  switch (o.soft) {
    case SoftLoss::kCe: return -(t_logp.exp() * s_logp).sum(-1);
    case SoftLoss::kKl: return kl_divergence(t_logp, s_logp);
    case SoftLoss::kReverseKl: return kl_divergence(s_logp, t_logp);
    case SoftLoss::kJsd: {
      const double b = o.jsd_beta;
      if (b <= 0.0) return kl_divergence(t_logp, s_logp);
      if (b >= 1.0) return kl_divergence(s_logp, t_logp);
      auto m_logp = torch::logsumexp(torch::stack({t_logp + std::log(b), s_logp + std::log1p(-b)}), 0);  // [B, T, C]
      return (b * kl_divergence(t_logp, m_logp) + (1 - b) * kl_divergence(s_logp, m_logp)) / (b * (1 - b));
    }
  }
  throw Error("unreachable soft loss");
}

// Mean over real target tokens of a per-token term [B, T].
torch::Tensor token_mean(const torch::Tensor& per_token, const torch::Tensor& labels) {
  auto mask = (labels != -100).to(torch::kFloat32);  // [B, T]
  return (per_token * mask).sum() / mask.sum().clamp_min(1.0);
}

// Fills soft, kl and total from the per-token soft term and forward KL ([B, T]).
void finish(DistillLoss& out, const torch::Tensor& soft, const torch::Tensor& kl, const torch::Tensor& labels,
            const DistillLossOptions& o) {
  const double t2 = o.temperature * o.temperature;
  out.soft = token_mean(soft, labels) * t2;
  out.kl = token_mean(kl, labels).detach() * t2;
  out.total = o.hard_weight * out.hard + o.soft_weight * out.soft;
}

// Both distributions over the same classes: the soft term, and the forward KL for the log
// (computed again only when the soft term is not already it).
void soft_and_kl(DistillLoss& out, const torch::Tensor& s_logp, const torch::Tensor& t_logp, const torch::Tensor& labels,
                 const DistillLossOptions& o) {
  auto soft = soft_term(s_logp, t_logp, o);
  torch::Tensor kl;
  if (o.soft == SoftLoss::kKl || (o.soft == SoftLoss::kJsd && o.jsd_beta <= 0.0)) {
    kl = soft.detach();
  } else {
    torch::NoGradGuard ng;
    kl = kl_divergence(t_logp, s_logp);
  }
  finish(out, soft, kl, labels, o);
}

}  // namespace

DistillLoss distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                              const at::Tensor& labels, const DistillLossOptions& o) {
  DistillLoss out;
  auto s_logp = tempered_log_softmax(student_logits, o.temperature);  // [B, T, V]
  auto t_logp = tempered_log_softmax(teacher_logits, o.temperature);  // [B, T, V]
  out.hard = hard_term(student_logits, s_logp, labels, o.temperature);
  soft_and_kl(out, s_logp, t_logp, labels, o);
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
  auto s_cls = s_logp.gather(-1, teacher.ids);                         // [B, T, k]
  // Floored so that a class the teacher gives (numerically) nothing stays finite in every term.
  auto t_cls = teacher.probs.clamp_min(1e-30).log();                   // [B, T, k]
  if (teacher.ids.size(-1) < s_logp.size(-1)) {
    // The student's log-mass outside the teacher's top k, from its log-probabilities rather than
    // log(1 - sum q), which loses all precision when the k tokens hold nearly everything.
    const float neg_inf = -std::numeric_limits<float>::infinity();
    auto s_rest = torch::logsumexp(s_logp.scatter(-1, teacher.ids, neg_inf), -1);  // [B, T]
    s_cls = torch::cat({s_cls, s_rest.unsqueeze(-1)}, -1);            // [B, T, k + 1]
    t_cls = torch::cat({t_cls, teacher.rest.clamp_min(1e-30).log().unsqueeze(-1)}, -1);
  }
  soft_and_kl(out, s_cls, t_cls, labels, o);
  return out;
}

// ---- hidden-state matching ------------------------------------------------------------------

at::Tensor hidden_state_loss(const std::vector<at::Tensor>& student_encoder, const std::vector<at::Tensor>& student_decoder,
                             const std::vector<at::Tensor>& teacher_encoder, const std::vector<at::Tensor>& teacher_decoder,
                             const std::vector<HiddenLayerPair>& pairs, const at::Tensor& encoder_mask,
                             const at::Tensor& decoder_mask, HiddenLoss kind) {
  auto total = torch::zeros({}, torch::kFloat32);
  for (const auto& p : pairs) {
    const auto& s_states = p.decoder ? student_decoder : student_encoder;
    const auto& t_states = p.decoder ? teacher_decoder : teacher_encoder;
    if (p.student >= static_cast<int64_t>(s_states.size()) || p.teacher >= static_cast<int64_t>(t_states.size())) {
      throw Error("hidden-state pair out of range: the models were not run with their hidden states");
    }
    auto s = s_states[static_cast<size_t>(p.student)].to(torch::kFloat32);  // [B, L, D]
    auto t = t_states[static_cast<size_t>(p.teacher)].to(torch::kFloat32);  // [B, L, D]
    auto per_token = kind == HiddenLoss::kMse ? (s - t).pow(2).mean(-1)   // [B, L]
                                              : 1.0 - torch::cosine_similarity(s, t, -1, 1e-8);
    auto mask = (p.decoder ? decoder_mask : encoder_mask).to(torch::kFloat32);  // [B, L]
    total = total + (per_token * mask).sum() / mask.sum().clamp_min(1.0);
  }
  return pairs.empty() ? total : total / static_cast<double>(pairs.size());
}

}  // namespace distill
