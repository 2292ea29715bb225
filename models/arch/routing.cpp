#include "models/arch/routing.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace distill {

namespace {
thread_local bool dropless = false;
}  // namespace

DroplessRouting::DroplessRouting() : previous_(dropless) { dropless = true; }
DroplessRouting::~DroplessRouting() { dropless = previous_; }

int64_t expert_capacity_for(const RoutingOptions& o, int64_t tokens, bool training) {
  if (!training && dropless) return std::max<int64_t>(1, tokens);
  if (o.capacity_mode == CapacityMode::kFixed) return o.expert_capacity;
  const double factor = training ? o.capacity_factor_train : o.capacity_factor_eval;
  const double assignments = static_cast<double>(tokens * o.top_k);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(assignments / o.num_experts * factor)));
}

// At this size (a few thousand tokens, a handful of experts) a plain loop beats a dozen tensor ops.
template <typename T>
std::vector<std::vector<int64_t>> route_pass(const T* p, int64_t B, int64_t S, int64_t E, int64_t k, CapacityMode mode,
                                            int64_t capacity, int64_t* experts, bool* kept, const bool* active) {
  const int64_t N = B * S;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = p + n * E;
    int64_t* choice = experts + n * k;
    for (int64_t r = 0; r < k; ++r) {
      // Strictly greater: ties go to the lowest index, as Hugging Face's argmax.
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t j = 0; j < r; ++j) taken = taken || choice[j] == e;
        if (!taken && (best < 0 || row[e] > row[best])) best = e;
      }
      choice[r] = best;
    }
  }
  // Every first choice queues before any second choice: per sequence (fixed) or over the whole
  // batch, rows in order (factor).
  std::vector<int64_t> load(static_cast<size_t>(E), 0);
  auto queue = [&](int64_t b, int64_t r) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t a = (b * S + s) * k + r;
      kept[a] = (!active || active[b * S + s]) && ++load[static_cast<size_t>(experts[a])] <= capacity;
    }
  };
  if (mode == CapacityMode::kFixed) {
    for (int64_t b = 0; b < B; ++b) {
      std::fill(load.begin(), load.end(), 0);
      for (int64_t r = 0; r < k; ++r) queue(b, r);
    }
  } else {
    for (int64_t r = 0; r < k; ++r)
      for (int64_t b = 0; b < B; ++b) queue(b, r);
  }
  std::vector<std::vector<int64_t>> by_expert(static_cast<size_t>(E));
  for (int64_t a = 0; a < N * k; ++a) {
    if (kept[a]) by_expert[static_cast<size_t>(experts[a])].push_back(a);
  }
  return by_expert;
}

template std::vector<std::vector<int64_t>> route_pass<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                                             CapacityMode, int64_t, int64_t*, bool*, const bool*);
template std::vector<std::vector<int64_t>> route_pass<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                                              CapacityMode, int64_t, int64_t*, bool*, const bool*);

Routing route_tokens(const torch::Tensor& probs, int64_t top_k, CapacityMode mode, int64_t capacity,
                     const torch::Tensor& active) {
  const int64_t B = probs.size(0), S = probs.size(1), E = probs.size(2), k = top_k, N = B * S;
  auto p = probs.detach().to(torch::kCPU).contiguous();
  auto experts = torch::empty({N, k}, torch::kLong);
  auto kept = torch::empty({N, k}, torch::kBool);
  const auto act = active.defined() ? active.to(torch::kCPU, torch::kBool).contiguous() : torch::Tensor();
  std::vector<std::vector<int64_t>> by_expert;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "route_tokens", [&] {
    by_expert = route_pass(p.data_ptr<scalar_t>(), B, S, E, k, mode, capacity, experts.data_ptr<int64_t>(),
                           kept.data_ptr<bool>(), act.defined() ? act.data_ptr<bool>() : nullptr);
  });
  Routing r;
  r.capacity = capacity;
  r.experts = experts.to(probs.device());
  r.kept = kept.to(probs.device());
  auto values = probs.reshape({N, E}).gather(1, r.experts);  // [N, k], differentiable
  r.gates = k == 1 ? values : values / values.sum(-1, /*keepdim=*/true);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(N * k));
  for (const auto& list : by_expert) {
    r.counts.push_back(static_cast<int64_t>(list.size()));
    order.insert(order.end(), list.begin(), list.end());
  }
  r.assignment = torch::tensor(order, torch::kLong).to(probs.device());
  return r;
}

}  // namespace distill
