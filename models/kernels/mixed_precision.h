// bfloat16 mixed precision for a forward pass on the CPU: matrix products run in bf16 (this
// machine's bf16 matrix units are several times faster than fp32), while weights, gradients,
// optimizer state, norms, softmaxes, the router and the losses stay float32. As in the Switch
// paper's "selective precision", the router never sees bf16.
#pragma once

#include <c10/core/impl/LocalDispatchKeySet.h>

namespace distill {

// Turns bf16 autocast on for its lifetime (no-op when `enabled` is false). The outermost scope
// drops autocast's cache of bf16 weight copies on exit, so an optimizer step is never followed
// by stale copies.
class Bf16Autocast {
 public:
  explicit Bf16Autocast(bool enabled);
  ~Bf16Autocast();
  Bf16Autocast(const Bf16Autocast&) = delete;
  Bf16Autocast& operator=(const Bf16Autocast&) = delete;

 private:
  bool enabled_;
  bool previous_ = false;
};

// Inside it, ops run in the dtype of their inputs even under Bf16Autocast.
class NoAutocast {
 private:
  c10::impl::ExcludeDispatchKeyGuard guard_{c10::DispatchKey::AutocastCPU};
};

// True inside a Bf16Autocast scope and outside any NoAutocast.
bool bf16_autocast_active();

}  // namespace distill
