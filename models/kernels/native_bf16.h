// Whether this machine multiplies bf16 natively: what the bf16 keys' `auto` follows.
#pragma once

namespace distill {

// True when blas::gemm_bf16 runs on the CPU's own bf16 dot-product units: LibTorch's oneDNN (its
// dnnl_gemm_bf16bf16f32) is loaded, the CPU has AVX512-BF16 or AMX-BF16 and the OS saves AVX-512
// state, and ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) does not cap oneDNN below them. Elsewhere
// bf16 products are emulated or widened to float32: no faster than float32. Decided once.
bool native_bf16_products();

}  // namespace distill
