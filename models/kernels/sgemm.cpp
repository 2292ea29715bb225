#include "models/kernels/sgemm.h"

#include <cblas.h>
#include <dlfcn.h>

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "models/errors.h"

namespace distill::blas {
namespace {

// oneDNN's C API, dnnl_sgemm (dnnl.h is not packaged; the library is LibTorch's own dependency).
using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);

using DnnlGemmBf16 = int (*)(char, char, int64_t, int64_t, int64_t, float, const uint16_t*, int64_t, const uint16_t*,
                            int64_t, float, float*, int64_t);

struct Backend {
  std::string name;
  DnnlSgemm dnnl = nullptr;
  DnnlGemmBf16 dnnl_bf16 = nullptr;  // looked up whatever DISTILL_SGEMM says: OpenBLAS has no bf16 product
};

Backend choose() {
  const char* env = std::getenv("DISTILL_SGEMM");
  const std::string wanted = env ? env : "";
  if (!wanted.empty() && wanted != "onednn" && wanted != "openblas") {
    throw ConfigError("DISTILL_SGEMM=\"" + wanted + "\": expected \"onednn\" or \"openblas\"");
  }
  Backend b{"OpenBLAS"};
  b.dnnl_bf16 = reinterpret_cast<DnnlGemmBf16>(dlsym(RTLD_DEFAULT, "dnnl_gemm_bf16bf16f32"));
  if (wanted == "openblas") return b;
  b.dnnl = reinterpret_cast<DnnlSgemm>(dlsym(RTLD_DEFAULT, "dnnl_sgemm"));
  if (b.dnnl != nullptr) {
    b.name = "oneDNN";
  } else if (wanted == "onednn") {
    throw ConfigError("DISTILL_SGEMM=onednn, but this LibTorch does not load oneDNN (no dnnl_sgemm symbol)");
  }
  return b;
}

const Backend& backend() {
  static const Backend b = choose();
  return b;
}

// Runs a oneDNN product call (returning its status): below kSmallProductFlops on the calling thread
// alone (oneDNN's thread count for the call is OpenMP's), and a failure is an Error naming `what`.
template <class Call>
void run_dnnl(const char* what, int64_t m, int64_t n, int64_t k, Call&& call) {
  const bool small = is_small_product(m, n, k);
  const int threads = omp_get_max_threads();
  if (small && threads > 1) omp_set_num_threads(1);
  const int status = call();
  if (small && threads > 1) omp_set_num_threads(threads);
  if (status != 0) {
    throw Error(std::string(what) + " failed with status " + std::to_string(status) + " (m=" + std::to_string(m) +
                ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
  }
}

}  // namespace

const std::string& sgemm_library() { return backend().name; }

namespace {

std::atomic<bool> counting{false};
std::mutex count_mutex;
ProductTime count;
thread_local bool in_product = false;  // gemm_bf16's widened fallback calls sgemm: count it once

// Adds one product's time to the count when counting is on.
class CountedProduct {
 public:
  CountedProduct(int64_t m, int64_t n, int64_t k)
      : on_(counting.load(std::memory_order_relaxed) && !in_product), flops_(2.0 * static_cast<double>(m) * n * k) {
    if (!on_) return;
    in_product = true;
    start_ = std::chrono::steady_clock::now();
  }
  ~CountedProduct() {
    if (!on_) return;
    in_product = false;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
    const bool nested = omp_in_parallel() != 0;
    std::lock_guard<std::mutex> lock(count_mutex);
    (nested ? count.nested_ms : count.top_ms) += ms;
    (nested ? count.nested_flops : count.top_flops) += flops_;
    ++(nested ? count.nested_calls : count.top_calls);
  }
  CountedProduct(const CountedProduct&) = delete;
  CountedProduct& operator=(const CountedProduct&) = delete;

 private:
  bool on_;
  double flops_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

void count_products(bool on) {
  std::lock_guard<std::mutex> lock(count_mutex);
  if (on) count = ProductTime{};
  counting.store(on, std::memory_order_relaxed);
}

ProductTime counted_products() {
  std::lock_guard<std::mutex> lock(count_mutex);
  return count;
}

void sgemm(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
           int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const CountedProduct counted(m, n, k);
  if (k == 0) {  // oneDNN rejects an empty inner dimension; the product is zero
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    }
    return;
  }
  const auto& be = backend();
  if (be.dnnl != nullptr) {
    run_dnnl("dnnl_sgemm", m, n, k, [&] {
      return be.dnnl(static_cast<char>(op_a), static_cast<char>(op_b), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    });
    return;
  }
  cblas_sgemm(CblasRowMajor, op_a == Op::N ? CblasNoTrans : CblasTrans, op_b == Op::N ? CblasNoTrans : CblasTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

namespace {

// oneDNN's dnnl_unimplemented: a CPU without AVX-512 has no bf16 gemm in oneDNN 2.x.
constexpr int kDnnlUnimplemented = 3;
std::atomic<bool> dnnl_bf16_unimplemented{false};

// op(A) op(B) by widening the bf16 operands and calling sgemm: the same numbers, no bf16 speed.
void gemm_bf16_widened(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a, int64_t lda,
                       const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int64_t ra = op_a == Op::N ? m : k, ca = op_a == Op::N ? k : m;
  const int64_t rb = op_b == Op::N ? k : n, cb = op_b == Op::N ? n : k;
  std::vector<float> wa(static_cast<size_t>(ra * ca)), wb(static_cast<size_t>(rb * cb));
  auto widen = [](std::vector<float>& out, const uint16_t* in, int64_t rows, int64_t cols, int64_t ld) {
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const uint32_t bits = static_cast<uint32_t>(in[i * ld + j]) << 16;
        std::memcpy(&out[static_cast<size_t>(i * cols + j)], &bits, sizeof(float));
      }
    }
  };
  widen(wa, a, ra, ca, lda);
  widen(wb, b, rb, cb, ldb);
  sgemm(op_a, op_b, m, n, k, alpha, wa.data(), ca, wb.data(), cb, beta, c, ldc);
}

}  // namespace

void gemm_bf16(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a, int64_t lda,
               const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const CountedProduct counted(m, n, k);
  const auto& be = backend();
  if (k == 0 || be.dnnl_bf16 == nullptr || dnnl_bf16_unimplemented.load(std::memory_order_relaxed)) {
    gemm_bf16_widened(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  bool unimplemented = false;
  run_dnnl("dnnl_gemm_bf16bf16f32", m, n, k, [&] {
    const int status =
        be.dnnl_bf16(static_cast<char>(op_a), static_cast<char>(op_b), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    unimplemented = status == kDnnlUnimplemented;
    return unimplemented ? 0 : status;
  });
  if (unimplemented) {  // this CPU has no oneDNN bf16 gemm: widen from now on
    dnnl_bf16_unimplemented.store(true, std::memory_order_relaxed);
    gemm_bf16_widened(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

}  // namespace distill::blas
