// The hand-written kernels against LibTorch's own: batched matmul and dropout.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/batched_matmul.h"
#include "models/fast_dropout.h"
#include "tests/test_util.h"

namespace distill {
namespace {

using test::tensors_close;

TEST(BatchedMatmul, MatchesTorchOnStridedViewsWithGradients) {
  torch::manual_seed(0);
  // Heads split from a fused projection, as attention does: strided, transposed views.
  auto qkv = torch::randn({2, 5, 3 * 12}, torch::requires_grad());
  auto parts = qkv.split(12, -1);
  auto q = parts[0].view({2, 5, 3, 4}).transpose(1, 2);  // [2, 3, 5, 4]
  auto k = parts[1].view({2, 5, 3, 4}).transpose(1, 2);
  auto got = batched_matmul(q, k.transpose(2, 3));      // [2, 3, 5, 5]
  auto want = torch::matmul(q, k.transpose(2, 3));
  EXPECT_TRUE(tensors_close(got, want, 1e-6));
  auto w = torch::randn_like(want);
  auto g1 = torch::autograd::grad({(got * w).sum()}, {qkv})[0];
  auto g2 = torch::autograd::grad({(want * w).sum()}, {qkv})[0];
  EXPECT_TRUE(tensors_close(g1, g2, 1e-6));

  auto a = torch::randn({4, 7, 3}), b = torch::randn({4, 3, 6});
  EXPECT_TRUE(tensors_close(batched_matmul(a, b), torch::matmul(a, b), 1e-6));  // no autograd path
  auto d = torch::randn({2, 3, 4}, torch::kDouble);
  EXPECT_TRUE(torch::equal(batched_matmul(d, d.transpose(1, 2)), torch::matmul(d, d.transpose(1, 2))));  // fallback
}

TEST(FastDropout, KeepsOneMinusPScaledAndIsReproducible) {
  auto x = torch::ones({64, 1000});
  FastDropout drop(0.1);
  drop->train();
  torch::manual_seed(3);
  auto y = drop->forward(x);
  const double kept = (y != 0).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(kept, 0.9, 0.005);
  EXPECT_NEAR(y.masked_select(y != 0).mean().item<double>(), 1.0 / 0.9, 1e-5);
  torch::manual_seed(3);
  EXPECT_TRUE(torch::equal(drop->forward(x), y));   // the torch generator determines the mask
  EXPECT_FALSE(torch::equal(drop->forward(x), y));  // and advances
  // Neighbouring elements are not correlated: runs of drops have the lengths chance gives.
  auto m = (y.view(-1) == 0).to(torch::kFloat64);
  auto both = (m.narrow(0, 0, m.numel() - 1) * m.narrow(0, 1, m.numel() - 1)).mean().item<double>();
  EXPECT_NEAR(both, 0.01, 0.002);
  drop->eval();
  EXPECT_TRUE(torch::equal(drop->forward(x), x));
}

}  // namespace
}  // namespace distill
