// The Winograd kernel compiled for AVX-512 (F, BW, DQ, VL) with AVX512-BF16 dot products and,
// where the compiler knows them, AMX tiles for the bf16 GEMMs, for this file only;
// winograd_cpu.cpp calls it only on CPUs that report those features (AMX: only with prm.amx).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define UNET_FAST_WINO_AMX 1
#endif
#if defined(__clang__)
#if defined(UNET_FAST_WINO_AMX)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,amx-tile,amx-bf16"))), apply_to = function)
#else
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma"))), apply_to = function)
#endif
#elif defined(UNET_FAST_WINO_AMX)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")
#endif
#include <immintrin.h>
#define UNET_FAST_WINO_AVX512 1
#define UNET_FAST_WINO_NS wino_avx512
#include "winograd_kernel.h"
namespace unet_fast::wino_avx512 {
bool compiled() { return true; }
#if defined(UNET_FAST_WINO_AMX)
bool amx_compiled() { return true; }
#else
bool amx_compiled() { return false; }
#endif
}  // namespace unet_fast::wino_avx512
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
#include <cstdlib>
#include "winograd_params.h"
namespace unet_fast::wino_avx512 {
bool compiled() { return false; }
bool amx_compiled() { return false; }
void run_work_item(const WinoParams&, int64_t, int64_t, int64_t, int64_t, void*) { std::abort(); }
}  // namespace unet_fast::wino_avx512
#endif
