#include "models/kernels/mixed_precision.h"

#include <ATen/autocast_mode.h>

namespace distill {

Bf16Autocast::Bf16Autocast(bool enabled) : enabled_(enabled) {
  if (!enabled_) return;
  previous_ = at::autocast::is_cpu_enabled();
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  at::autocast::increment_nesting();
}

Bf16Autocast::~Bf16Autocast() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_cpu_enabled(previous_);
}

bool bf16_autocast_active() {
  return at::autocast::is_cpu_enabled() && !c10::impl::tls_is_dispatch_key_excluded(c10::DispatchKey::AutocastCPU);
}

}  // namespace distill
