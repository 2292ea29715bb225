#include "models/kernels/native_bf16.h"

#include <dlfcn.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

namespace distill {
namespace {

bool cpu_has_bf16_dot_products() {
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__builtin_cpu_supports("avx512f")) return false;  // also false when the OS does not save AVX-512 state
  const bool avx512_bf16 = __get_cpuid_count(7, 1, &a, &b, &c, &d) != 0 && (a & (1u << 5)) != 0;
  const bool amx_bf16 = __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (d & (1u << 22)) != 0;
  return avx512_bf16 || amx_bf16;
#else
  return false;
#endif
}

// ONEDNN_MAX_CPU_ISA=AVX2 (say) keeps oneDNN off the bf16 instructions even where the CPU has them.
bool onednn_isa_allows_bf16() {
  const char* env = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (env == nullptr || *env == '\0') env = std::getenv("DNNL_MAX_CPU_ISA");
  if (env == nullptr || *env == '\0') return true;
  std::string isa = env;
  std::transform(isa.begin(), isa.end(), isa.begin(), [](unsigned char ch) { return static_cast<char>(std::toupper(ch)); });
  return isa == "ALL" || isa == "DEFAULT" || isa.find("BF16") != std::string::npos || isa.find("FP16") != std::string::npos ||
         isa.find("AMX") != std::string::npos;
}

}  // namespace

bool native_bf16_products() {
  static const bool native = dlsym(RTLD_DEFAULT, "dnnl_gemm_bf16bf16f32") != nullptr && cpu_has_bf16_dot_products() &&
                             onednn_isa_allows_bf16();
  return native;
}

}  // namespace distill
