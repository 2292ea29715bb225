#include "distill/process/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <sched.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

#include "models/kernels/sgemm.h"

namespace distill {

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

namespace {
std::string loaded_blas() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool any_blas = false;
  while (std::getline(maps, line)) {
    if (line.find("openblas") != std::string::npos) return "openblas";
    if (line.find("libblas.so") != std::string::npos) any_blas = true;
  }
  return any_blas ? "reference" : "unknown";
}

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd");
}

// OpenBLAS's kernel set (its "core"), looked up at run time: "" when the symbol is absent.
std::string openblas_core() {
  using CoreName = char* (*)();
  auto corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return corename != nullptr ? std::string(corename()) : std::string();
}

// OPENBLAS_CORETYPE set to an AVX2 core on an AVX-512 CPU halves the float32 matrix-product rate
// (measured on a Zen 5 EPYC: 200 vs 370-400 GFLOP/s, and small products lose OpenBLAS's
// small-matrix kernels). It is the user's choice, possibly for reproducible numerics across
// machines, so say so once instead of overriding it.
void check_blas_kernels(const std::string& core) {
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  const bool avx512_core = core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids";
  if (forced == nullptr || core.empty() || avx512_core || !has_avx512()) return;
  spdlog::warn("OPENBLAS_CORETYPE={} makes OpenBLAS use its {} kernels on this AVX-512 CPU: matrix products run "
               "about half as fast. Unset it to let OpenBLAS pick.",
               forced, core);
}
}  // namespace

namespace {
int g_cli_threads = 0;  // --threads as given; 0 = not given
}  // namespace

void apply_config_threads(int config_threads) {
  if (g_cli_threads == 0 && config_threads > 0) at::set_num_threads(config_threads);
}

RuntimeInfo init_runtime(int threads) {
  RuntimeInfo info;
  g_cli_threads = threads;
  info.threads = threads > 0 ? threads : available_cores();
  at::set_num_threads(info.threads);
  // Denormal floats (tiny Adam moments and gradients late in training) are ~100x slower on x86:
  // training throughput decayed from 12K to 8K tokens/s over 1000 steps before this.
  at::globalContext().setFlushDenormal(true);
  info.sgemm = blas::sgemm_library();
  info.blas = loaded_blas();
  if (info.blas == "openblas") {
    info.blas_kernels = openblas_core();
    static std::once_flag once;
    if (info.sgemm == "OpenBLAS") std::call_once(once, [&] { check_blas_kernels(info.blas_kernels); });
  }
  if (info.blas == "reference") {
    spdlog::warn("LibTorch is using the reference BLAS: matrix products run ~25x slower. "
                 "Install libopenblas0-openmp (tools/setup.sh does).");
  }
  return info;
}

}  // namespace distill
