#include "models/kernels/grouped_ffn.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>

#include "models/errors.h"
#include "models/kernels/fast_dropout.h"
#include "models/kernels/mixed_precision.h"
#include "models/kernels/row_kernels.h"
#include "models/kernels/sgemm.h"

namespace distill {
namespace {

using blas::Op;

// Calls fn(e, begin, n) for every expert with n > 0 assignments, which occupy rows [begin, begin + n).
template <typename Fn>
void for_each_group(const std::vector<int64_t>& counts, Fn&& fn) {
  int64_t begin = 0;
  for (size_t e = 0; e < counts.size(); begin += counts[e++]) {
    if (counts[e] > 0) fn(static_cast<int64_t>(e), begin, counts[e]);
  }
}

// Like for_each_group, but the groups run on the intra-op threads, largest first, each thread
// taking the next group when it is free. Inside the parallel region sgemm runs single-threaded: at
// these sizes (a hundred rows per expert) one thread per expert beats two threads per product.
template <typename Fn>
void parallel_for_each_group(const std::vector<int64_t>& counts, Fn&& fn) {
  struct Group {
    int64_t e, begin, n;
  };
  std::vector<Group> groups;
  for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) { groups.push_back({e, begin, n}); });
  std::stable_sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) { return a.n > b.n; });
  std::atomic<size_t> next{0};
  const auto workers = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(groups.size()));
  const at::ThreadLocalState caller;  // grad mode, inference mode: the workers' ATen calls need the caller's
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard same_state(caller);
    for (size_t i = next++; i < groups.size(); i = next++) fn(groups[i].e, groups[i].begin, groups[i].n);
  });
}

// The float32 kernels call sgemm on raw rows; anything else takes the ATen path.
bool sgemm_path(const at::Tensor& x, const at::Tensor& gate, at::TensorList weights) {
  auto ok = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat && t.device().is_cpu(); };
  if (!ok(x) || !ok(gate)) return false;
  return std::all_of(weights.begin(), weights.end(), [&](const at::Tensor& w) { return ok(w) && w.is_contiguous(); });
}

// out [N, D]: row t is the sum over assignments a with token[a] == t of c_a * rows[a], where c_a is
// gate[a] (or 1 without a gate); rows no assignment reaches are zero. Each thread owns a range of
// output rows and adds in assignment order, so the sums do not depend on the thread count. ATen's
// index_add_ dispatches one add per row: 0.27 of the layer's 1.8 ms at small8.
at::Tensor scatter_rows(const float* rows, const float* gate, const int64_t* token, int64_t M, int64_t N, int64_t D,
                        const at::TensorOptions& options) {
  auto out = at::empty({N, D}, options);
  float* po = out.data_ptr<float>();
  at::parallel_for(0, N, 128, [&](int64_t lo, int64_t hi) {
    std::memset(po + lo * D, 0, static_cast<size_t>((hi - lo) * D) * sizeof(float));
    for (int64_t a = 0; a < M; ++a) {
      const int64_t t = token[a];
      if (t >= lo && t < hi) rows::axpy(po + t * D, rows + a * D, gate ? gate[a] : 1.0f, D);
    }
  });
  return out;
}

using grouped_cpu::Forward;

Forward run_forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& token, const std::vector<int64_t>& counts,
                    const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout) {
  Forward f;
  const int64_t M = token.size(0), D = x.size(1), F = wi.empty() ? 0 : wi[0].size(0);
  f.xs = x.index_select(0, token);  // [M, D]
  f.h = at::empty({M, F}, x.options());
  f.y = at::empty({M, D}, x.options());
  parallel_for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
    auto h = f.h.narrow(0, begin, n);
    at::mm_out(h, f.xs.narrow(0, begin, n), wi[static_cast<size_t>(e)].t());  // [n, F]
  });
  f.h.relu_();
  if (dropout > 0) f.h.mul_(dropout_mask(f.h, dropout));
  parallel_for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
    auto y = f.y.narrow(0, begin, n);
    at::mm_out(y, f.h.narrow(0, begin, n), wo[static_cast<size_t>(e)].t());  // [n, D]
  });
  f.out = at::zeros_like(x).index_add_(0, token, f.y * gate.to(x.scalar_type()).unsqueeze(1));
  return f;
}

// The products' operands: float32 as they are, or bf16 (T = c10::BFloat16) with float32 results.
template <class T>
void gemm(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, float* c,
          int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    blas::sgemm(op_a, op_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  } else {
    blas::gemm_bf16(op_a, op_b, m, n, k, 1.0f, reinterpret_cast<const uint16_t*>(a), lda,
                    reinterpret_cast<const uint16_t*>(b), ldb, 0.0f, c, ldc);
  }
}

// The operand copy of n float32 values: the values themselves for float32 (dst is src).
template <class T>
const T* operand(T* dst, const float* src, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    to_bf16(dst, src, n);
    return dst;
  }
}

template <class T>
at::ScalarType dtype_of() {
  return std::is_same_v<T, float> ? at::kFloat : at::kBFloat16;
}

// The experts' weights as the products read them: float32 as given, or their cached bf16 copies.
template <class T>
std::vector<const T*> weights_of(const std::vector<at::Tensor>& w, std::vector<at::Tensor>& keep) {
  std::vector<const T*> out;
  for (const auto& t : w) {
    if constexpr (std::is_same_v<T, float>) {
      out.push_back(t.data_ptr<float>());
    } else {
      keep.push_back(bf16_copy(t));
      out.push_back(keep.back().data_ptr<T>());
    }
  }
  return out;
}

// run_forward with float32 activations, one task per expert: gather its rows, both products, ReLU
// and dropout while the hidden units are still in cache. Products in T. out is left to the caller.
template <class T>
Forward run_forward_fast(const at::Tensor& x_in, const at::Tensor& token_in, const std::vector<int64_t>& counts,
                         const std::vector<at::Tensor>& wi_in, const std::vector<at::Tensor>& wo_in, double dropout) {
  Forward f;
  const auto x = x_in.contiguous();
  const auto token = token_in.contiguous();
  const int64_t M = token.size(0), D = x.size(1), F = wi_in.empty() ? 0 : wi_in[0].size(0);
  constexpr bool kWide = std::is_same_v<T, float>;
  f.xs = at::empty({M, D}, x.options().dtype(dtype_of<T>()));  // [M, D]
  f.h = at::empty({M, F}, x.options());                         // [M, F]
  f.hb = kWide ? f.h : at::empty({M, F}, x.options().dtype(dtype_of<T>()));
  f.y = at::empty({M, D}, x.options());  // [M, D]
  std::vector<at::Tensor> keep;
  const auto wi = weights_of<T>(wi_in, keep), wo = weights_of<T>(wo_in, keep);
  const float* px = x.data_ptr<float>();
  const int64_t* tok = token.data_ptr<int64_t>();
  T *xs = f.xs.data_ptr<T>(), *hb = f.hb.data_ptr<T>();
  float *h = f.h.data_ptr<float>(), *y = f.y.data_ptr<float>();
  const uint64_t seed = dropout > 0 ? dropout_seed() : 0;
  const uint32_t threshold = dropout_threshold(dropout);
  const float scale = dropout_scale(dropout);
  parallel_for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
    const auto se = static_cast<size_t>(e);
    T* xs_e = xs + begin * D;
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (kWide) {
        std::memcpy(xs_e + i * D, px + tok[begin + i] * D, static_cast<size_t>(D) * sizeof(float));
      } else {
        to_bf16(xs_e + i * D, px + tok[begin + i] * D, D);
      }
    }
    float* h_e = h + begin * F;
    gemm<T>(Op::N, Op::T, n, F, D, xs_e, D, wi[se], D, h_e, F);  // [n, F]
    // ReLU, then the same mask dropout_mask would draw for [M, F].
    rows::relu_dropout(h_e, h_e, dropout > 0, seed, begin * F, threshold, scale, n * F);
    const T* hb_e = operand<T>(hb + begin * F, h_e, n * F);
    gemm<T>(Op::N, Op::T, n, D, F, hb_e, F, wo[se], F, y + begin * D, D);  // [n, D]
  });
  return f;
}

Forward run_forward_sgemm(const at::Tensor& x, const at::Tensor& token, const std::vector<int64_t>& counts,
                          const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout, bool bf16) {
  return bf16 ? run_forward_fast<c10::BFloat16>(x, token, counts, wi, wo, dropout)
              : run_forward_fast<float>(x, token, counts, wi, wo, dropout);
}

// The forward on whichever path the operands allow, outputs added into their tokens' rows.
Forward forward_of(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& token_in,
                   const std::vector<int64_t>& counts, const std::vector<at::Tensor>& wi,
                   const std::vector<at::Tensor>& wo, double dropout, bool bf16) {
  if (!sgemm_path(x, gate, wi) || !sgemm_path(x, gate, wo)) return run_forward(x, gate, token_in, counts, wi, wo, dropout);
  Forward f = run_forward_sgemm(x, token_in, counts, wi, wo, dropout, bf16);
  const auto g = gate.contiguous();
  const auto token = token_in.contiguous();
  f.out = scatter_rows(f.y.data_ptr<float>(), g.data_ptr<float>(), token.data_ptr<int64_t>(), token.size(0), x.size(0),
                       x.size(1), x.options());  // [N, D]
  return f;
}

using grouped_cpu::Backward;

// The backward of run_forward_fast, one task per expert, up to the input gradient of each
// assignment (gxs). Products in T, as the forward's.
template <class T>
Backward run_backward_fast(const at::Tensor& grad_in, const Forward& fw, const at::Tensor& gate_in,
                           const at::Tensor& token_in, const std::vector<int64_t>& counts,
                           const std::vector<at::Tensor>& wi_in, const std::vector<at::Tensor>& wo_in, double dropout) {
  const auto grad = grad_in.contiguous();
  const auto gate = gate_in.contiguous();
  const auto token = token_in.contiguous();
  const auto &xs = fw.xs, &h = fw.h, &y = fw.y;
  const int64_t M = token.size(0), D = xs.size(1), F = h.size(1), E = static_cast<int64_t>(counts.size());
  constexpr bool kWide = std::is_same_v<T, float>;
  const auto f32 = h.options();
  Backward b;
  b.ggate = at::empty({M}, gate.options());
  b.gwi.resize(static_cast<size_t>(E));
  b.gwo.resize(static_cast<size_t>(E));
  for_each_group(counts, [&](int64_t e, int64_t, int64_t) {
    b.gwi[static_cast<size_t>(e)] = at::empty({F, D}, f32);
    b.gwo[static_cast<size_t>(e)] = at::empty({D, F}, f32);
  });
  auto gy = at::empty({M, D}, f32);  // [M, D] gathered output gradient, times the gate
  auto gh = at::empty({M, F}, f32);  // [M, F]
  // Their operand copies (bf16 only).
  at::Tensor gyb = kWide ? gy : at::empty({M, D}, f32.dtype(dtype_of<T>()));
  at::Tensor ghb = kWide ? gh : at::empty({M, F}, f32.dtype(dtype_of<T>()));
  b.gxs = at::empty({M, D}, f32);  // [M, D]
  std::vector<at::Tensor> keep;
  const auto wi = weights_of<T>(wi_in, keep), wo = weights_of<T>(wo_in, keep);
  const float *pg = grad.data_ptr<float>(), *pgate = gate.data_ptr<float>(), *ph = h.data_ptr<float>(),
              *py = y.data_ptr<float>();
  const T *pxs = xs.data_ptr<T>(), *phb = fw.hb.data_ptr<T>();
  const int64_t* tok = token.data_ptr<int64_t>();
  float *pggate = b.ggate.data_ptr<float>(), *pgy = gy.data_ptr<float>(), *pgh = gh.data_ptr<float>(),
        *pgxs = b.gxs.data_ptr<float>();
  T *pgyb = gyb.data_ptr<T>(), *pghb = ghb.data_ptr<T>();
  const float scale = dropout_scale(dropout);
  parallel_for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
    const auto se = static_cast<size_t>(e);
    float* gy_e = pgy + begin * D;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t a = begin + i;
      pggate[a] = rows::scaled_copy_dot(gy_e + i * D, pg + tok[a] * D, pgate[a], py + a * D, D);
    }
    const T* gyb_e = operand<T>(pgyb + begin * D, gy_e, n * D);
    const T* hb_e = phb + begin * F;
    const T* xs_e = pxs + begin * D;
    float* gh_e = pgh + begin * F;
    gemm<T>(Op::T, Op::N, D, F, n, gyb_e, D, hb_e, F, b.gwo[se].data_ptr<float>(), F);  // [D, F]
    gemm<T>(Op::N, Op::N, n, F, D, gyb_e, D, wo[se], F, gh_e, F);                       // [n, F]
    // Through dropout and ReLU at once: a kept, positive unit has h > 0, every other unit h == 0.
    rows::relu_dropout_backward(gh_e, gh_e, ph + begin * F, scale, n * F);
    const T* ghb_e = operand<T>(pghb + begin * F, gh_e, n * F);
    gemm<T>(Op::T, Op::N, F, D, n, ghb_e, F, xs_e, D, b.gwi[se].data_ptr<float>(), D);  // [F, D]
    gemm<T>(Op::N, Op::N, n, D, F, ghb_e, F, wi[se], D, pgxs + begin * D, D);           // [n, D]
  });
  return b;
}

Backward run_backward_sgemm(const at::Tensor& grad, const Forward& fw, const at::Tensor& gate, const at::Tensor& token,
                            const std::vector<int64_t>& counts, const std::vector<at::Tensor>& wi,
                            const std::vector<at::Tensor>& wo, double dropout) {
  return fw.xs.scalar_type() == at::kBFloat16
             ? run_backward_fast<c10::BFloat16>(grad, fw, gate, token, counts, wi, wo, dropout)
             : run_backward_fast<float>(grad, fw, gate, token, counts, wi, wo, dropout);
}

struct GroupedFfnFunction : public torch::autograd::Function<GroupedFfnFunction> {
  // Inputs: x, gate, then E wi and E wo weights.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gate,
                            const at::Tensor& token, std::vector<int64_t> counts, at::TensorList weights, double dropout,
                            bool bf16) {
    const size_t E = counts.size();
    std::vector<at::Tensor> wi(weights.begin(), weights.begin() + static_cast<int64_t>(E));
    std::vector<at::Tensor> wo(weights.begin() + static_cast<int64_t>(E), weights.end());
    auto f = forward_of(x, gate, token, counts, wi, wo, dropout, bf16);
    std::vector<at::Tensor> saved{f.xs, f.h, f.y, gate, token, f.hb.defined() ? f.hb : f.h};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["counts"] = c10::List<int64_t>(counts);
    ctx->saved_data["dropout"] = dropout;
    ctx->saved_data["rows"] = x.size(0);
    return f.out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& xs = saved[0];
    const auto& h = saved[1];
    const auto& y = saved[2];
    const auto& gate = saved[3];
    const auto& token = saved[4];
    constexpr size_t kW = 6;  // the weights follow the saved state
    const auto counts = ctx->saved_data["counts"].toIntVector();
    const double dropout = ctx->saved_data["dropout"].toDouble();
    const int64_t N = ctx->saved_data["rows"].toInt(), E = static_cast<int64_t>(counts.size());
    auto wi = [&](int64_t e) { return saved[static_cast<size_t>(kW + e)]; };
    auto wo = [&](int64_t e) { return saved[static_cast<size_t>(kW + E + e)]; };
    if (xs.scalar_type() == at::kBFloat16 || sgemm_path(xs, gate, at::TensorList(saved).slice(kW))) {
      const std::vector<at::Tensor> wis(saved.begin() + kW, saved.begin() + kW + E), wos(saved.begin() + kW + E, saved.end());
      const Forward fw{at::Tensor(), xs, h, y, saved[5]};
      auto b = run_backward_sgemm(grads[0], fw, gate, token, counts, wis, wos, dropout);
      auto gx = scatter_rows(b.gxs.data_ptr<float>(), nullptr, token.data_ptr<int64_t>(), token.size(0), N, xs.size(1),
                             xs.options().dtype(at::kFloat));  // [N, D]
      torch::autograd::tensor_list out{gx, b.ggate, at::Tensor(), at::Tensor()};
      out.insert(out.end(), b.gwi.begin(), b.gwi.end());
      out.insert(out.end(), b.gwo.begin(), b.gwo.end());
      out.push_back(at::Tensor());  // dropout
      out.push_back(at::Tensor());  // bf16
      return out;
    }

    auto gy = grads[0].index_select(0, token);                        // [M, D]
    auto ggate = (gy * y).sum(1).to(gate.scalar_type());               // [M]
    gy.mul_(gate.to(gy.scalar_type()).unsqueeze(1));
    auto gh = at::empty_like(h);                                       // [M, F]
    std::vector<at::Tensor> gwi(static_cast<size_t>(E)), gwo(static_cast<size_t>(E));
    parallel_for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
      auto gy_e = gy.narrow(0, begin, n);
      gwo[static_cast<size_t>(e)] = at::mm(gy_e.t(), h.narrow(0, begin, n));  // [D, F]
      auto gh_e = gh.narrow(0, begin, n);
      at::mm_out(gh_e, gy_e, wo(e));                                           // [n, F]
    });
    // Through dropout and ReLU at once: a kept, positive unit has h > 0, every other unit h == 0.
    gh = at::threshold_backward(gh, h, 0);
    if (dropout > 0) gh.mul_(1.0 / (1.0 - dropout));
    auto gxs = at::empty_like(xs);                                     // [M, D]
    parallel_for_each_group(counts, [&](int64_t e, int64_t begin, int64_t n) {
      auto gh_e = gh.narrow(0, begin, n);
      gwi[static_cast<size_t>(e)] = at::mm(gh_e.t(), xs.narrow(0, begin, n));  // [F, D]
      auto gxs_e = gxs.narrow(0, begin, n);
      at::mm_out(gxs_e, gh_e, wi(e));                                           // [n, D]
    });
    auto gx = at::zeros({N, xs.size(1)}, xs.options()).index_add_(0, token, gxs);

    torch::autograd::tensor_list out{gx, ggate, at::Tensor(), at::Tensor()};
    out.insert(out.end(), gwi.begin(), gwi.end());
    out.insert(out.end(), gwo.begin(), gwo.end());
    out.push_back(at::Tensor());  // dropout
    out.push_back(at::Tensor());  // bf16
    return out;
  }
};

}  // namespace

namespace grouped_cpu {

bool applies(const at::Tensor& x, const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo) {
  return sgemm_path(x, x, wi) && sgemm_path(x, x, wo);
}

Forward forward(const at::Tensor& x, const ExpertGroups& groups, const std::vector<at::Tensor>& wi,
                const std::vector<at::Tensor>& wo, double dropout, bool bf16) {
  return run_forward_sgemm(x, groups.token, groups.counts, wi, wo, dropout, bf16);
}

Backward backward(const at::Tensor& grad, const Forward& saved, const at::Tensor& gate, const ExpertGroups& groups,
                  const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout) {
  return run_backward_sgemm(grad, saved, gate, groups.token, groups.counts, wi, wo, dropout);
}

}  // namespace grouped_cpu

at::Tensor grouped_relu_ffn(const at::Tensor& x, const at::Tensor& gate, const ExpertGroups& groups,
                            const std::vector<at::Tensor>& wi, const std::vector<at::Tensor>& wo, double dropout) {
  if (wi.size() != groups.counts.size() || wo.size() != groups.counts.size()) {
    throw Error("grouped_relu_ffn: expected one wi and one wo per expert");
  }
  bool needs_grad = torch::GradMode::is_enabled() && (x.requires_grad() || gate.requires_grad());
  for (size_t e = 0; e < wi.size() && !needs_grad; ++e) {
    needs_grad = torch::GradMode::is_enabled() && (wi[e].requires_grad() || wo[e].requires_grad());
  }
  std::vector<at::Tensor> weights(wi);
  weights.insert(weights.end(), wo.begin(), wo.end());
  const bool bf16 = bf16_products_active();
  if (!needs_grad) return forward_of(x, gate, groups.token, groups.counts, wi, wo, dropout, bf16).out;
  return GroupedFfnFunction::apply(x, gate, groups.token, groups.counts, at::TensorList(weights), dropout, bf16);
}

}  // namespace distill
