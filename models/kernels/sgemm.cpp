#include "models/kernels/sgemm.h"

#include <cblas.h>
#include <dlfcn.h>

#include <omp.h>

#include <cstdlib>

#include "models/errors.h"

namespace distill::blas {
namespace {

// oneDNN's C API, dnnl_sgemm (dnnl.h is not packaged; the library is LibTorch's own dependency).
using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);

struct Backend {
  std::string name;
  DnnlSgemm dnnl = nullptr;
};

Backend choose() {
  const char* env = std::getenv("DISTILL_SGEMM");
  const std::string wanted = env ? env : "";
  if (!wanted.empty() && wanted != "onednn" && wanted != "openblas") {
    throw ConfigError("DISTILL_SGEMM=\"" + wanted + "\": expected \"onednn\" or \"openblas\"");
  }
  Backend b{"OpenBLAS"};
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

}  // namespace

const std::string& sgemm_library() { return backend().name; }

void sgemm(Op op_a, Op op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
           int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // oneDNN rejects an empty inner dimension; the product is zero
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    }
    return;
  }
  const auto& be = backend();
  if (be.dnnl != nullptr) {
    const bool small = is_small_product(m, n, k);
    const int threads = omp_get_max_threads();  // oneDNN's thread count for this call
    if (small && threads > 1) omp_set_num_threads(1);
    const int status =
        be.dnnl(static_cast<char>(op_a), static_cast<char>(op_b), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (small && threads > 1) omp_set_num_threads(threads);
    if (status != 0) {
      throw Error("dnnl_sgemm failed with status " + std::to_string(status) + " (m=" + std::to_string(m) +
                  ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, op_a == Op::N ? CblasNoTrans : CblasTrans, op_b == Op::N ? CblasNoTrans : CblasTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

}  // namespace distill::blas
