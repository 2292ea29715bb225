#include "models/kernels/row_kernels.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "models/kernels/fast_dropout.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ROW_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ROW_KERNEL
#endif

namespace distill::rows {
namespace {
constexpr int kLanes = 16;
}

ROW_KERNEL float add_bias_max(float* row, const float* bias, int64_t n) {
  float m[kLanes];
  for (float& v : m) v = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const float v = bias ? row[j + u] + bias[j + u] : row[j + u];
      row[j + u] = v;
      m[u] = m[u] < v ? v : m[u];
    }
  }
  float mx = m[0];
  for (int u = 1; u < kLanes; ++u) mx = mx < m[u] ? m[u] : mx;
  for (; j < n; ++j) {
    if (bias) row[j] += bias[j];
    mx = mx < row[j] ? row[j] : mx;
  }
  return mx;
}

ROW_KERNEL void add_scalar(float* row, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] += c;
}

ROW_KERNEL void scale(float* row, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] *= c;
}

ROW_KERNEL float sum(const float* row, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int u = 0; u < kLanes; ++u) acc[u] += row[j + u];
  float s = 0.0f;
  for (int u = 0; u < kLanes; ++u) s += acc[u];
  for (; j < n; ++j) s += row[j];
  return s;
}

namespace {

// e^x as 2^k e^r, k = round(x log2 e), r = x - k ln 2 in two parts (Cody-Waite), e^r by Cephes'
// expf polynomial; branch-free, so the loops that call it vectorise.
inline float exp_poly(float x) {
  constexpr float kLow = -87.33654f, kHigh = 88.0f;  // exp(kHigh) is finite: 2^k below 2^128
  const float xc = x < kLow ? kLow : (x > kHigh ? kHigh : x);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = (xc * 1.44269504088896341f + kRound) - kRound;
  const float r = (xc - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = er * scale;
  return x < kLow ? 0.0f : (x == x ? y : x);
}

}  // namespace

ROW_KERNEL float exp_sum(float* row, float shift, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const float v = exp_poly(row[j + u] - shift);
      row[j + u] = v;
      acc[u] += v;
    }
  }
  float s = 0.0f;
  for (int u = 0; u < kLanes; ++u) s += acc[u];
  for (; j < n; ++j) {
    row[j] = exp_poly(row[j] - shift);
    s += row[j];
  }
  return s;
}

ROW_KERNEL float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int u = 0; u < kLanes; ++u) acc[u] += a[j + u] * b[j + u];
  float s = 0.0f;
  for (int u = 0; u < kLanes; ++u) s += acc[u];
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

ROW_KERNEL void multiply(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = a[j] * b[j];
}

ROW_KERNEL void axpy(float* out, const float* x, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] += c * x[j];
}

ROW_KERNEL void scaled_copy(float* out, const float* a, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = a[j] * c;
}

ROW_KERNEL void combine(float* out, const float* base, const float* s, const float* c, const float* w, int64_t k,
                        int64_t n) {
  // Blocks of 64 columns summed over k in a local array, which stays in registers: summed in `out`,
  // the compiler must assume out and w overlap and reload it k times.
  constexpr int kBlock = 64;
  int64_t j0 = 0;
  for (; j0 + kBlock <= n; j0 += kBlock) {
    float acc[kBlock] = {};
    for (int64_t i = 0; i < k; ++i) {
      const float ci = c[i];
      const float* wi = w + i * n + j0;
      for (int u = 0; u < kBlock; ++u) acc[u] += ci * wi[u];
    }
    for (int u = 0; u < kBlock; ++u) {
      const float v = s ? acc[u] * s[j0 + u] : acc[u];
      out[j0 + u] = base ? base[j0 + u] + v : v;
    }
  }
  for (int64_t j = j0; j < n; ++j) {
    float acc = 0.0f;
    for (int64_t i = 0; i < k; ++i) acc += c[i] * w[i * n + j];
    const float v = s ? acc * s[j] : acc;
    out[j] = base ? base[j] + v : v;
  }
}

ROW_KERNEL float scaled_copy_dot(float* out, const float* a, float c, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      acc[u] += a[j + u] * b[j + u];
      out[j + u] = a[j + u] * c;
    }
  }
  float s = 0.0f;
  for (int u = 0; u < kLanes; ++u) s += acc[u];
  for (; j < n; ++j) {
    s += a[j] * b[j];
    out[j] = a[j] * c;
  }
  return s;
}

ROW_KERNEL void softmax_backward(float* out, const float* p, const float* g, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = p[j] * (g[j] - c);
}

ROW_KERNEL void dropout_scales(float* mask, uint64_t seed, int64_t first, uint32_t threshold, float s, int64_t n) {
  for (int64_t j = 0; j < n; ++j) mask[j] = dropout_keep(seed, first + j, threshold) ? s : 0.0f;
}

ROW_KERNEL void relu_dropout(float* out, const float* x, bool dropout, uint64_t seed, int64_t first, uint32_t threshold,
                             float s, int64_t n) {
  // NaN passes the ReLU, as torch's does.
  if (!dropout) {
    for (int64_t j = 0; j < n; ++j) out[j] = x[j] < 0 ? 0.0f : x[j];
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const float v = x[j] < 0 ? 0.0f : x[j];
    out[j] = dropout_keep(seed, first + j, threshold) ? v * s : 0.0f;
  }
}

ROW_KERNEL void relu_dropout_backward(float* out, const float* g, const float* h, float s, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = h[j] > 0 ? g[j] * s : 0.0f;
}

ROW_KERNEL void dropout_add(float* out, const float* base, const float* x, uint64_t seed, int64_t first,
                            uint32_t threshold, float s, int64_t n) {
  if (base == nullptr) {
    for (int64_t j = 0; j < n; ++j) out[j] = dropout_keep(seed, first + j, threshold) ? x[j] * s : 0.0f;
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const float kept = dropout_keep(seed, first + j, threshold) ? x[j] * s : 0.0f;
    out[j] = base[j] + kept;
  }
}

ROW_KERNEL void adamw(float* p, float* m, float* v, const float* g, const AdamWCoefficients& c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float gj = g[j];
    const float mj = m[j] * c.b1 + gj * c.a1;
    const float vj = v[j] * c.b2 + gj * gj * c.a2;
    m[j] = mj;
    v[j] = vj;
    p[j] = p[j] * c.decay + c.step_size * (mj / (std::sqrt(vj) * c.inv_bc2 + c.eps));
  }
}

ROW_KERNEL void scaled_product(float* out, const float* a, const float* b, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = c * a[j] * b[j];
}

ROW_KERNEL void axpy_product(float* out, const float* a, const float* b, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] += c * a[j] * b[j];
}

ROW_KERNEL void rms_norm_input_grad(float* out, const float* u, const float* x, float r, float c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = r * u[j] + c * x[j];
}

ROW_KERNEL void to_bf16(uint16_t* out, const float* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, x + j, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    out[j] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
  }
}

}  // namespace distill::rows
