#include "models/kernels/mixed_precision.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/intrusive_ptr.h>

#include <map>
#include <mutex>

#include "models/kernels/row_kernels.h"

namespace distill {
namespace {

thread_local bool bf16_on = false;

// One cached copy: the weights it was made from (held weakly, which keeps a freed weight's memory
// from reuse until the entry goes) and their versions when it was made.
struct Entry {
  std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>> owners;
  std::vector<uint32_t> versions;
  at::Tensor copy;
};

struct Cache {
  std::mutex mutex;
  std::map<std::vector<const c10::TensorImpl*>, Entry> entries;
  size_t purge_at = 64;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be released after static destruction
  return *c;
}

uint32_t version_of(const at::Tensor& t) {
  // Inference tensors keep no version counter; they are not modified outside inference mode.
  return t.is_inference() ? 0u : t.unsafeGetTensorImpl()->version_counter().current_version();
}

// A weak reference keeps a dead tensor's memory from reuse, so a live owner at the key's address is
// the original tensor.
bool fresh(const Entry& e, const std::vector<at::Tensor>& parts) {
  for (size_t i = 0; i < parts.size(); ++i) {
    if (e.owners[i].expired() || e.versions[i] != version_of(parts[i])) return false;
  }
  return true;
}

// Drops the copies whose weights were freed (the cache's mutex held).
void drop_freed_locked(Cache& c) {
  for (auto it = c.entries.begin(); it != c.entries.end();) {
    bool dead = false;
    for (const auto& o : it->second.owners) dead = dead || o.expired();
    it = dead ? c.entries.erase(it) : std::next(it);
  }
  c.purge_at = std::max<size_t>(64, 2 * c.entries.size());
}

at::Tensor make_copy(const std::vector<at::Tensor>& parts) {
  // A normal tensor even when made under InferenceMode (a teacher's or an evaluation's pass): the
  // same copy may later be saved for a backward, which an inference tensor cannot be.
  c10::InferenceMode normal(false);
  int64_t rows = 0;
  for (const auto& p : parts) rows += p.size(0);
  const int64_t cols = parts[0].dim() > 1 ? parts[0].numel() / parts[0].size(0) : 1;
  auto copy = at::empty({rows, cols}, parts[0].options().dtype(at::kBFloat16).requires_grad(false));
  auto* out = reinterpret_cast<uint16_t*>(copy.data_ptr<at::BFloat16>());
  for (const auto& p : parts) {
    const auto src = p.detach().contiguous();
    const float* in = src.data_ptr<float>();
    at::parallel_for(0, src.numel(), 1 << 16, [&](int64_t lo, int64_t hi) { rows::to_bf16(out + lo, in + lo, hi - lo); });
    out += src.numel();
  }
  return parts.size() == 1 && parts[0].dim() != 2 ? copy.view(parts[0].sizes()) : copy;
}

}  // namespace

Bf16Products::Bf16Products(bool enabled) : previous_(bf16_on) { bf16_on = bf16_on || enabled; }
Bf16Products::~Bf16Products() { bf16_on = previous_; }

Fp32Products::Fp32Products() : previous_(bf16_on) { bf16_on = false; }
Fp32Products::~Fp32Products() { bf16_on = previous_; }

bool bf16_products_active() { return bf16_on; }

at::Tensor bf16_copy(const at::Tensor& weight) { return bf16_copy(std::vector<at::Tensor>{weight}); }

at::Tensor bf16_copy(const std::vector<at::Tensor>& parts) {
  std::vector<const c10::TensorImpl*> key;
  for (const auto& p : parts) key.push_back(p.unsafeGetTensorImpl());
  auto& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.entries.find(key);
    if (it != c.entries.end() && fresh(it->second, parts)) return it->second.copy;
  }
  Entry e;
  for (const auto& p : parts) {
    e.owners.emplace_back(p.getIntrusivePtr());
    e.versions.push_back(version_of(p));
  }
  e.copy = make_copy(parts);
  std::lock_guard<std::mutex> lock(c.mutex);
  c.entries[key] = e;
  if (c.entries.size() >= c.purge_at) drop_freed_locked(c);
  return e.copy;
}

void drop_freed_bf16_copies() {
  auto& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  drop_freed_locked(c);
}

void clear_bf16_copies() {
  auto& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.entries.clear();
}

Bf16CacheStats bf16_cache_stats() {
  auto& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  Bf16CacheStats s;
  for (const auto& [key, e] : c.entries) {
    ++s.copies;
    s.bytes += e.copy.numel() * 2;
  }
  return s;
}

void to_bf16(c10::BFloat16* dst, const float* src, int64_t n) { rows::to_bf16(reinterpret_cast<uint16_t*>(dst), src, n); }

at::Tensor to_bf16(const at::Tensor& x) {
  const auto src = x.contiguous();
  auto out = at::empty(src.sizes(), src.options().dtype(at::kBFloat16).requires_grad(false));
  const float* in = src.data_ptr<float>();
  auto* o = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, src.numel(), 1 << 15, [&](int64_t lo, int64_t hi) { to_bf16(o + lo, in + lo, hi - lo); });
  return out;
}

}  // namespace distill
