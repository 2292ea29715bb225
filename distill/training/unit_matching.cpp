#include "distill/training/unit_matching.h"

#include <torch/torch.h>

#include <limits>

#include "models/errors.h"

namespace distill {

std::vector<int64_t> min_cost_assignment(const at::Tensor& cost_tensor) {
  if (cost_tensor.dim() != 2 || cost_tensor.size(0) != cost_tensor.size(1)) {
    throw Error("min_cost_assignment needs a square matrix, got " + c10::str(cost_tensor.sizes()));
  }
  const int64_t n = cost_tensor.size(0);
  auto c = cost_tensor.to(torch::kFloat64).contiguous();
  const double* a = c.data_ptr<double>();
  // Potentials u (rows), v (columns) and the row matched to each column, 1-based with column 0 a
  // sentinel: the shortest augmenting path form of the Hungarian method.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0), v(n + 1, 0), minv(n + 1);
  std::vector<int64_t> match(n + 1, 0), way(n + 1, 0);
  std::vector<char> used(n + 1);
  for (int64_t i = 1; i <= n; ++i) {
    match[0] = i;
    int64_t j0 = 0;
    std::fill(minv.begin(), minv.end(), inf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const int64_t i0 = match[j0];
      double delta = inf;
      int64_t j1 = 0;
      const double* row = a + (i0 - 1) * n;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const double cur = row[j - 1] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (match[j0] != 0);
    do {
      const int64_t j1 = way[j0];
      match[j0] = match[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int64_t> result(static_cast<size_t>(n));
  for (int64_t j = 1; j <= n; ++j) result[static_cast<size_t>(match[j] - 1)] = j - 1;
  return result;
}

std::vector<int64_t> match_units(const at::Tensor& reference_features, const at::Tensor& features) {
  auto r = torch::nn::functional::normalize(reference_features.to(torch::kFloat64),
                                            torch::nn::functional::NormalizeFuncOptions().dim(1));
  auto f = torch::nn::functional::normalize(features.to(torch::kFloat64), torch::nn::functional::NormalizeFuncOptions().dim(1));
  return min_cost_assignment(-r.matmul(f.t()));  // [F, F]: reference unit x other unit
}

}  // namespace distill
