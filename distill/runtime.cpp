#include "distill/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <sched.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <string>

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
}  // namespace

RuntimeInfo init_runtime(int threads) {
  RuntimeInfo info;
  info.threads = threads > 0 ? threads : available_cores();
  at::set_num_threads(info.threads);
  // Denormal floats (tiny Adam moments and gradients late in training) are ~100x slower on x86:
  // training throughput decayed from 12K to 8K tokens/s over 1000 steps before this.
  at::globalContext().setFlushDenormal(true);
  info.blas = loaded_blas();
  if (info.blas == "reference") {
    spdlog::warn("LibTorch is using the reference BLAS: matrix products run ~25x slower. "
                 "Install libopenblas0-openmp (tools/setup.sh does).");
  }
  return info;
}

}  // namespace distill
