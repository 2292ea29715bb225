#include "distill/training/soft_target_source.h"

#include <torch/torch.h>

namespace distill {

std::vector<int64_t> target_lengths(const at::Tensor& labels) {
  auto n = (labels != -100).sum(1).contiguous();
  return std::vector<int64_t>(n.data_ptr<int64_t>(), n.data_ptr<int64_t>() + n.numel());
}

std::vector<ExampleTargets> split_rows(const SoftTargets& targets, const at::Tensor& labels) {
  auto ids = targets.ids.to(torch::kInt32).contiguous();
  auto probs = targets.probs.contiguous();
  auto rest = targets.rest.contiguous();
  const int64_t T = ids.size(1), k = ids.size(2);
  const auto lengths = target_lengths(labels);
  std::vector<ExampleTargets> rows(lengths.size());
  for (size_t row = 0; row < rows.size(); ++row) {
    const int64_t L = lengths[row], at = static_cast<int64_t>(row) * T;
    rows[row].ids.assign(ids.data_ptr<int32_t>() + at * k, ids.data_ptr<int32_t>() + (at + L) * k);
    rows[row].probs.assign(probs.data_ptr<float>() + at * k, probs.data_ptr<float>() + (at + L) * k);
    rows[row].rest.assign(rest.data_ptr<float>() + at, rest.data_ptr<float>() + at + L);
  }
  return rows;
}

SoftTargets zero_targets(int64_t B, int64_t T, int64_t k) {
  return {torch::zeros({B, T, k}, torch::kLong), torch::zeros({B, T, k}, torch::kFloat32), torch::zeros({B, T}, torch::kFloat32)};
}

}  // namespace distill
