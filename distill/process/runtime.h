// Process-wide set-up every LibTorch entry point runs first.
#pragma once

#include <string>

namespace distill {

struct RuntimeInfo {
  int threads = 1;     // intra-op threads LibTorch will use
  std::string blas;    // BLAS library found in the process ("openblas", "reference", "unknown")
  std::string blas_kernels;  // OpenBLAS's kernel set ("SkylakeX", "Haswell", ...); empty if unknown
  std::string sgemm;   // library behind the models' float32 products ("oneDNN" or "OpenBLAS"), see models/kernels/sgemm.h
};

// Sets LibTorch's thread count to `threads` (0: the cores this process may run on; Debian's
// LibTorch starts with 1), flushes denormals to zero, and reports which BLAS is loaded, warning
// when it is not OpenBLAS or when OPENBLAS_CORETYPE holds it to AVX2 kernels on an AVX-512 CPU while
// the models' products go through it. Throws ConfigError for a bad DISTILL_SGEMM.
RuntimeInfo init_runtime(int threads = 0);

// Cores available to this process (sched_getaffinity), at least 1.
int available_cores();

// A run configuration's `threads` key: applied when the command line gave no --threads (which
// init_runtime received), so the command line wins.
void apply_config_threads(int config_threads);

}  // namespace distill
