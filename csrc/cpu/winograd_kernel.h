// Winograd F(m x m, 3x3) convolution, one work item at a time: the input transform of a chunk of
// output tiles, the 36 (or 16) per-point GEMMs against the transformed weights, and the output
// transform with bias + ReLU, all on buffers sized for one core's cache, so no full transformed
// tensor is ever written.
//
// This header is compiled twice, by winograd_avx512.cpp (AVX-512 + AVX512-BF16 enabled for that
// file only) and winograd_portable.cpp (the compiler's default target). Each defines
// UNET_FAST_WINO_NS first, so the two instantiations get different symbols (the linker must never
// pick an AVX-512 copy for the portable path). It includes no torch header for the same reason:
// torch's inline functions compiled with AVX-512 enabled could be chosen for the whole library.
//
// Layouts (see winograd_cpu.cpp and unet_fast/winograd.py, which packs the weights):
//   sources  NHWC, channel stride 1, float or bfloat16 (uint16 bits);
//   V        [P][T][Kp]      transformed input of one chunk (P = alpha^2 points, T tiles;
//            with AMX GEMMs T is the chunk's tile count rounded up to 16, the extra rows zero);
//   U        [P][ncob][Kp][32] float, or [P][ncob][Kp/2][32][2] bf16: transformed weights;
//            or, float only (prm.raw_u), the module's own weight (C_out, C_in, 3, 3), laid out
//            per block as taps [Kp][9][32] and transformed here one row of points of one
//            block at a time into Ur [alpha][Kp][32];
//   M        [C][T][P][32]   GEMM results of the item's C blocks of 32 output channels;
//   output   NHWC, float or bf16.
#pragma once

#include <cstdint>
#include <cstring>

#include "winograd_params.h"

#ifndef UNET_FAST_WINO_NS
#error "define UNET_FAST_WINO_NS before including winograd_kernel.h"
#endif

namespace unet_fast {
namespace UNET_FAST_WINO_NS {

typedef float vf __attribute__((vector_size(64)));
typedef float vf_u __attribute__((vector_size(64), aligned(4)));  // unaligned access
typedef uint16_t vh_u __attribute__((vector_size(32), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(64)));
constexpr int kLanes = 16;

static inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
static inline void store(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
static inline vf splat(float s) {
#if defined(UNET_FAST_WINO_AVX512)
  return (vf)_mm512_set1_ps(s);
#else
  vf v;
  for (int i = 0; i < 16; ++i) v[i] = s;
  return v;
#endif
}

static inline vf fmadd(vf a, vf b, vf c) {
#if defined(UNET_FAST_WINO_AVX512)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  return a * b + c;
#endif
}

static inline vf bf16_to_f32(const uint16_t* p) {
#if defined(UNET_FAST_WINO_AVX512)
  // One zero-extending load and a shift: the generic conversion below compiles to four
  // instructions here (two half-width extends and an insert).
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return (vf)_mm512_slli_epi32(w, 16);
#else
  vh_u h = *reinterpret_cast<const vh_u*>(p);
  vu w = __builtin_convertvector(h, vu) << 16;
  return (vf)w;
#endif
}

// Round to nearest even, NaN kept quiet (as torch's float -> bfloat16 conversion does).
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

static inline void store_bf16(uint16_t* p, vf v) {
#if defined(UNET_FAST_WINO_AVX512)
  __m256bh h = _mm512_cvtneps_pbh((__m512)v);
  std::memcpy(p, &h, 32);
#else
  for (int i = 0; i < kLanes; ++i) p[i] = f32_to_bf16(v[i]);
#endif
}

static inline vf relu(vf v) { return v > 0.0f ? v : 0.0f; }

// ---------------------------------------------------------------------------------------------
// 1-D transforms of 6 (or 4) values. Each is written out by hand: the compiler may not drop
// multiplications by 0 or 1 of floats (NaN/Inf semantics), and the shared subexpressions of
// B^T halve the work.

template <int M>
struct Transform;

template <>
struct Transform<4> {  // F(4x4, 3x3), interpolation points 0, +-1, +-2, inf
  static constexpr int kAlpha = 6;
  // G, the filter transform (as unet_fast/winograd.py's _G), for weights transformed on the fly
  static constexpr float kG[6][3] = {{1.0f / 4, 0, 0},
                                     {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                     {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                                     {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                     {1.0f / 24, -1.0f / 12, 1.0f / 6},
                                     {0, 0, 1}};
  static inline void input(const vf* d, vf* r) {  // r = B^T d
    const vf a = d[4] - 4.0f * d[2], b = d[3] - 4.0f * d[1];
    const vf c = d[4] - d[2], e = 2.0f * (d[3] - d[1]);
    r[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    r[1] = a + b;
    r[2] = a - b;
    r[3] = c + e;
    r[4] = c - e;
    r[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }
  static inline void output(const vf* m, vf* o) {  // o = A^T m
    const vf s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    o[0] = m[0] + s12 + s34;
    o[1] = d12 + 2.0f * d34;
    o[2] = s12 + 4.0f * s34;
    o[3] = d12 + 8.0f * d34 + m[5];
  }
};

template <>
struct Transform<2> {  // F(2x2, 3x3), points 0, +-1, inf
  static constexpr int kAlpha = 4;
  static constexpr float kG[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  static inline void input(const vf* d, vf* r) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  static inline void output(const vf* m, vf* o) {
    o[0] = m[0] + m[1] + m[2];
    o[1] = m[1] - m[2] - m[3];
  }
};

// ---------------------------------------------------------------------------------------------
// Input side: 16 channels of one pixel of the virtual (concatenated, zero-padded) input.

template <typename T>
struct Source {
  const T* base;  // pixel (0, 0) of this image
  int64_t sh, sw;  // strides of H and W in elements
  int64_t h, w, c;  // size; channels
  int64_t oy, ox;  // virtual (y, x) reads source (y + oy, x + ox)
  int64_t cstart;  // first virtual channel of this source
};

template <typename T>
static inline vf load_lanes(const T* p) {
  if constexpr (sizeof(T) == 4) {
    return load(reinterpret_cast<const float*>(p));
  } else {
    return bf16_to_f32(reinterpret_cast<const uint16_t*>(p));
  }
}

template <typename T>
static inline float load_one(const T* p) {
  if constexpr (sizeof(T) == 4) {
    return *reinterpret_cast<const float*>(p);
  } else {
    uint32_t u = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(p)) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
}

// Channels [k0, k0 + 16) of a pixel whose source pixels are pa/pb (nullptr: zero there).
template <typename T>
static inline vf gather_lanes(const Source<T>& a, const Source<T>& b, const T* pa, const T* pb,
                              int64_t k0) {
  if (pa && k0 + kLanes <= a.c) return load_lanes(pa + k0);
  if (pb && k0 >= b.cstart && k0 + kLanes <= b.cstart + b.c) return load_lanes(pb + (k0 - b.cstart));
  vf v = vf{};
  for (int i = 0; i < kLanes; ++i) {
    const int64_t k = k0 + i;
    if (k < a.c) {
      if (pa) v[i] = load_one(pa + k);
    } else if (k < b.cstart + b.c) {
      if (pb) v[i] = load_one(pb + (k - b.cstart));
    }
  }
  return v;
}

// V[p][row][k0 .. k0 + 16) = (B^T d B)[p] for 16 channels of one tile; load(i, j) gives channels
// [k0, k0 + 16) of the tile's input pixel (i, j).
template <int M, typename VT, typename Load>
static inline void transform_lanes(const Load& load, VT* V, int64_t plane, int64_t offset) {
  constexpr int A = Transform<M>::kAlpha;
  vf t[A][A];
  for (int j = 0; j < A; ++j) {  // columns: t[:, j] = B^T d[:, j], loaded a column at a time
    vf col[A], r[A];           // (all of d and t at once spill for F(2x2): 32 vectors live)
    for (int i = 0; i < A; ++i) col[i] = load(i, j);
    Transform<M>::input(col, r);
    for (int i = 0; i < A; ++i) t[i][j] = r[i];
  }
  for (int i = 0; i < A; ++i) {  // rows: V[i, :] = t[i, :] B
    vf r[A];
    Transform<M>::input(t[i], r);
    for (int j = 0; j < A; ++j) {
      VT* dst = V + (i * A + j) * plane + offset;
      if constexpr (sizeof(VT) == 4) {
        store(reinterpret_cast<float*>(dst), r[j]);
      } else {
        store_bf16(reinterpret_cast<uint16_t*>(dst), r[j]);
      }
    }
  }
}

// V[p][row][:] for the tile whose top-left output pixel is (ty0, tx0) of image `n`.
template <int M, typename T, typename VT>
static void input_tile(const WinoParams& prm, const Source<T>& a0, const Source<T>& b0, int64_t n,
                       int64_t ty0, int64_t tx0, VT* V, int64_t row, int64_t rows) {
  constexpr int A = Transform<M>::kAlpha;
  Source<T> a = a0, b = b0;
  a.base += n * prm.a_sn;
  if (b.base) b.base += n * prm.b_sn;
  const T* pa[A][A];
  const T* pb[A][A];
  bool inside = true;  // every pixel in every source: no bounds to check per load
  for (int i = 0; i < A; ++i) {
    const int64_t vy = ty0 - prm.padding + i;
    for (int j = 0; j < A; ++j) {
      const int64_t vx = tx0 - prm.padding + j;
      pa[i][j] = pb[i][j] = nullptr;
      if (vy < 0 || vy >= prm.vh || vx < 0 || vx >= prm.vw) {
        inside = false;
        continue;
      }
      const int64_t ay = vy + a.oy, ax = vx + a.ox;
      if (ay >= 0 && ay < a.h && ax >= 0 && ax < a.w) pa[i][j] = a.base + ay * a.sh + ax * a.sw;
      else inside = false;
      if (b.base) {
        const int64_t by = vy + b.oy, bx = vx + b.ox;
        if (by >= 0 && by < b.h && bx >= 0 && bx < b.w) pb[i][j] = b.base + by * b.sh + bx * b.sw;
        else inside = false;
      }
    }
  }
  const int64_t Kp = prm.kp, plane = rows * Kp;
  // Interior tiles of sources whose channels fill whole vectors (all U-Net layers but the
  // first): plain strided loads from the tile's corner pixel in each source, instead of the
  // general path's checks of each pixel and source per vector. Measured 0.9x the time of a
  // 64-channel 512x512 F(4x4) fp32 layer (four alternated runs), level to 0.9x in bf16 F(2x2).
  const int64_t bc = b.base ? b.c : 0;
  if (inside && a.c % kLanes == 0 && bc % kLanes == 0 && a.c + bc == Kp) {
    const int64_t ash = a.sh, asw = a.sw;
    for (int64_t k0 = 0; k0 < a.c; k0 += kLanes) {
      const T* base = pa[0][0] + k0;
      transform_lanes<M>([&](int i, int j) { return load_lanes(base + i * ash + j * asw); }, V,
                         plane, row * Kp + k0);
    }
    const int64_t bsh = b.sh, bsw = b.sw;
    for (int64_t k0 = 0; k0 < bc; k0 += kLanes) {
      const T* base = pb[0][0] + k0;
      transform_lanes<M>([&](int i, int j) { return load_lanes(base + i * bsh + j * bsw); }, V,
                         plane, row * Kp + a.c + k0);
    }
    return;
  }
  for (int64_t k0 = 0; k0 < Kp; k0 += kLanes) {
    transform_lanes<M>([&](int i, int j) { return gather_lanes(a, b, pa[i][j], pb[i][j], k0); },
                       V, plane, row * Kp + k0);
  }
}

// ---------------------------------------------------------------------------------------------
// GEMM micro-kernels: C[R][32] = sum_k A[r][k] * B[k][32]; A rows `lda` apart, C rows `ldc`.

template <int R>
static inline void gemm_f32(const float* A, int64_t lda, const float* B, int64_t K, float* C,
                            int64_t ldc) {
  vf acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = vf{};
  for (int64_t k = 0; k < K; ++k) {
    const vf b0 = load(B + k * 32), b1 = load(B + k * 32 + 16);
    for (int r = 0; r < R; ++r) {
      const vf av = splat(A[r * lda + k]);
      acc0[r] = fmadd(av, b0, acc0[r]);
      acc1[r] = fmadd(av, b1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    store(C + r * ldc, acc0[r]);
    store(C + r * ldc + 16, acc1[r]);
  }
}

// bf16 operands: A rows hold channel pairs (k, k+1) next to each other, B is [K/2][32][2].
template <int R>
static inline void gemm_bf16(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t K,
                             float* C, int64_t ldc) {
  vf acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = vf{};
  for (int64_t k = 0; k < K; k += 2) {
    const uint16_t* bk = B + k * 32;
#if defined(UNET_FAST_WINO_AVX512)
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bk), b1 = (__m512bh)_mm512_loadu_si512(bk + 32);
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      std::memcpy(&pair, A + r * lda + k, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc0[r] = (vf)_mm512_dpbf16_ps((__m512)acc0[r], av, b0);
      acc1[r] = (vf)_mm512_dpbf16_ps((__m512)acc1[r], av, b1);
    }
#else
    // Same sum as vdpbf16ps (exact products, fp32 accumulation), pair by pair.
    vf be0, bo0, be1, bo1;
    for (int i = 0; i < kLanes; ++i) {
      be0[i] = load_one(bk + 2 * i);
      bo0[i] = load_one(bk + 2 * i + 1);
      be1[i] = load_one(bk + 32 + 2 * i);
      bo1[i] = load_one(bk + 32 + 2 * i + 1);
    }
    for (int r = 0; r < R; ++r) {
      const vf ae = splat(load_one(A + r * lda + k)), ao = splat(load_one(A + r * lda + k + 1));
      acc0[r] = fmadd(ao, bo0, fmadd(ae, be0, acc0[r]));
      acc1[r] = fmadd(ao, bo1, fmadd(ae, be1, acc1[r]));
    }
#endif
  }
  for (int r = 0; r < R; ++r) {
    store(C + r * ldc, acc0[r]);
    store(C + r * ldc + 16, acc1[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Output side.

template <int M, typename T>
static void output_tile(const WinoParams& prm, const float* Mbuf, int64_t row, int64_t rows,
                        int64_t cob, T* out, int64_t n, int64_t ty0, int64_t tx0) {
  constexpr int A = Transform<M>::kAlpha;
  (void)rows;
  const float* Mrow = Mbuf + row * (A * A * 32);
  const int64_t co_base = cob * 32;
  for (int half = 0; half < 2; ++half) {
    const int64_t co0 = co_base + half * kLanes;
    if (co0 >= prm.cout) break;
    vf t[M][A];
    for (int j = 0; j < A; ++j) {  // columns: t[:, j] = A^T m[:, j]
      vf col[A], o[M];
      for (int i = 0; i < A; ++i) col[i] = load(Mrow + (i * A + j) * 32 + half * kLanes);
      Transform<M>::output(col, o);
      for (int i = 0; i < M; ++i) t[i][j] = o[i];
    }
    const vf bias = load(prm.bias + co0);  // bias is padded to a multiple of 32
    const int64_t nlanes = prm.cout - co0 < kLanes ? prm.cout - co0 : kLanes;
    for (int i = 0; i < M; ++i) {
      const int64_t y = ty0 + i;
      if (y >= prm.oh) break;
      vf o[M];
      Transform<M>::output(t[i], o);
      for (int j = 0; j < M; ++j) {
        const int64_t x = tx0 + j;
        if (x >= prm.ow) break;
        vf v = o[j] + bias;
        if (prm.relu) v = relu(v);
        T* dst = out + n * prm.out_sn + y * prm.out_sh + x * prm.out_sw + co0;
        if (nlanes == kLanes) {
          if constexpr (sizeof(T) == 4) {
            store(reinterpret_cast<float*>(dst), v);
          } else {
            store_bf16(reinterpret_cast<uint16_t*>(dst), v);
          }
        } else {
          for (int64_t l = 0; l < nlanes; ++l) {
            if constexpr (sizeof(T) == 4) {
              reinterpret_cast<float*>(dst)[l] = v[l];
            } else {
              reinterpret_cast<uint16_t*>(dst)[l] = f32_to_bf16(v[l]);
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One work item: tiles [t_begin, t_end) of the flattened (n, tile_y, tile_x) grid, output-channel
// blocks [cob_begin, cob_end). `scratch` holds V then M (sizes from wino_scratch_bytes()).

constexpr int kRows = kWinoRows;  // GEMM rows (tiles) per micro-kernel call: 24 of 32 zmm accumulate

// C[rows][32] = A[rows][K] B[K][32] for 1 <= rows <= kRows: the last micro-tile of a chunk gets a
// kernel of its own height, so no padding row is transformed or multiplied (a 49-tile layer
// padded to 12-row micro-tiles did 47% more GEMM work).
template <typename VT, int R = kRows>
static inline void gemm_rows(int rows, const VT* A, int64_t lda, const VT* B, int64_t K, float* C,
                             int64_t ldc) {
  if constexpr (R >= 1) {
    if (rows == R) {
      if constexpr (sizeof(VT) == 4) {
        gemm_f32<R>(reinterpret_cast<const float*>(A), lda, reinterpret_cast<const float*>(B), K,
                    C, ldc);
      } else {
        gemm_bf16<R>(reinterpret_cast<const uint16_t*>(A), lda,
                     reinterpret_cast<const uint16_t*>(B), K, C, ldc);
      }
      return;
    }
    gemm_rows<VT, R - 1>(rows, A, lda, B, K, C, ldc);
  }
}

// One point's GEMM over a chunk: M[rows][32] (row stride P * 32) = V[rows][Kp] U[Kp][32], in
// micro-tiles of kRows rows and one of the remainder's height.
template <typename VT, int P>
static inline void gemm_point(int64_t rows, const VT* Vp, const VT* U, int64_t Kp, float* Mp) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int h = rows - r0 < kRows ? static_cast<int>(rows - r0) : kRows;
    gemm_rows<VT>(h, Vp + r0 * Kp, Kp, U, Kp, Mp + r0 * P * 32, P * 32);
  }
}

#if defined(UNET_FAST_WINO_AMX)
// AMX tiles (bf16 operands, fp32 accumulation, exact products as vdpbf16ps): tmm0-3 accumulate a
// 32 x 32 block of M, tmm4-5 hold 16 rows x 32 channels of V each, tmm6-7 16 channel pairs x 16
// output channels of U each. The configuration is per thread and oneDNN's kernels load their own
// on the same threads, so each work item loads ours and releases it when done.
struct alignas(64) AmxConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

static inline void amx_configure() {
  AmxConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kAmxRows;
  }
  _tile_loadconfig(&cfg);
}

// The next 32 channels' B operands (2 KiB, contiguous) into L1 while this step's dot products run:
// a tile load that misses L1 stalls the tiles that wait on it (no renaming), and U streams from
// L2/L3. Measured 1.1-1.2x on 128- to 512-channel layers; prefetching A (V, in L2) did not pay.
// Past the block's end this fetches the next block's first operands, which come next anyway.
static inline void prefetch_b(const uint16_t* next) {
  const char* p = reinterpret_cast<const char*>(next);
  for (int line = 0; line < 32; ++line) _mm_prefetch(p + line * 64, _MM_HINT_T0);
}

// `Blocks` (1 or 2) 16-row tiles of M (row stride P * 32) = V rows (Kp apart) times one block's U.
template <int P, int Blocks>
static inline void amx_rows(const uint16_t* a, const uint16_t* U, int64_t Kp, float* c) {
  const int64_t lda = Kp * 2, ldc = P * 32 * 4;
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (Blocks == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t k = 0; k < Kp; k += 32) {
    _tile_loadd(4, a + k, lda);
    if constexpr (Blocks == 2) _tile_loadd(5, a + kAmxRows * Kp + k, lda);
    _tile_loadd(6, U + k * 32, 128);
    _tile_loadd(7, U + k * 32 + 32, 128);
    prefetch_b(U + (k + 32) * 32);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (Blocks == 2) {
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, ldc);
  _tile_stored(1, c + 16, ldc);
  if constexpr (Blocks == 2) {
    _tile_stored(2, c + kAmxRows * P * 32, ldc);
    _tile_stored(3, c + kAmxRows * P * 32 + 16, ldc);
  }
}

// One point's GEMM on AMX: M[rows][32] (row stride P * 32) = V[rows][Kp] U[Kp/2][32][2], with
// rows a multiple of 16 and Kp of 32. U's [Kp/2][32][2] is already the pair-interleaved layout
// AMX's B operand takes: rows of 64 bytes (16 output channels), 128 bytes apart.
template <int P>
static inline void gemm_point_amx(int64_t rows, const uint16_t* Vp, const uint16_t* U, int64_t Kp,
                                  float* Mp) {
  int64_t r0 = 0;
  for (; r0 + 2 * kAmxRows <= rows; r0 += 2 * kAmxRows)
    amx_rows<P, 2>(Vp + r0 * Kp, U, Kp, Mp + r0 * P * 32);
  if (r0 < rows) amx_rows<P, 1>(Vp + r0 * Kp, U, Kp, Mp + r0 * P * 32);  // the last 16 rows
}
#endif

// Ur[b][k][32] = sum_j G[b][j] sum_i G[a][i] g[k][i][j][32]: row `a` of points of one block's
// transformed weights from its 3x3 taps (g: [Kp][9][32]), in float32. Separable, 3 multiply-adds
// per tap and point (a tenth of the F(4x4) GEMM's per input-output pair on the 49-tile layers);
// reading 9 values per pair instead of 36 is what makes it pay where U would stream from memory.
template <int M>
static void weight_row(const float* g, int64_t Kp, int a, float* Ur) {
  constexpr int A = Transform<M>::kAlpha;
  const float ga0 = Transform<M>::kG[a][0], ga1 = Transform<M>::kG[a][1],
              ga2 = Transform<M>::kG[a][2];
  for (int64_t k = 0; k < Kp; ++k) {
    const float* gk = g + k * 9 * 32;
    for (int h = 0; h < 32; h += kLanes) {
      vf t[3];
      for (int j = 0; j < 3; ++j) {
        t[j] = ga0 * load(gk + j * 32 + h) + ga1 * load(gk + (3 + j) * 32 + h) +
               ga2 * load(gk + (6 + j) * 32 + h);
      }
      for (int b = 0; b < A; ++b) {
        const float* gb = Transform<M>::kG[b];
        store(Ur + (b * Kp + k) * 32 + h, gb[0] * t[0] + gb[1] * t[1] + gb[2] * t[2]);
      }
    }
  }
}

// Transposes the 16x16 matrix whose rows are r[0..15]: four rounds of interleaving row i with
// row i + 8 (each round is 16 two-source permutes).
static inline void transpose16(vf r[16]) {
  const vu lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
  const vu hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  for (int round = 0; round < 4; ++round) {
    vf t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = __builtin_shuffle(r[i], r[i + 8], lo);
      t[2 * i + 1] = __builtin_shuffle(r[i], r[i + 8], hi);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
}

// g[k][tap][o] = w[cob * 32 + o][k][tap] for one block of 32 output channels of a (C_out, C_in,
// 3, 3) weight, zero beyond C_out and C_in (up to Kp): the layout weight_row reads, built per
// block and work item so the layer needs no packed copy of its weights. Runs of 16 (k, tap)
// values of 16 output channels are transposed in registers.
static void block_taps(const float* w, int64_t cin, int64_t cout, int64_t cob, int64_t Kp,
                       float* g) {
  const int64_t n = cin * 9;
  for (int64_t q0 = 0; q0 < n; q0 += kLanes) {
    const int64_t nq = n - q0 < kLanes ? n - q0 : kLanes;
    for (int half = 0; half < 2; ++half) {
      vf r[16];
      for (int l = 0; l < kLanes; ++l) {
        const int64_t co = cob * 32 + half * kLanes + l;
        const float* src = w + co * n + q0;
        if (co < cout && nq == kLanes) {
          r[l] = load(src);
        } else {
          r[l] = splat(0.f);
          if (co < cout) {
            for (int64_t q = 0; q < nq; ++q) r[l][q] = src[q];
          }
        }
      }
      transpose16(r);
      for (int64_t q = 0; q < nq; ++q) store(g + (q0 + q) * 32 + half * kLanes, r[q]);
    }
  }
  std::memset(g + n * 32, 0, (Kp - cin) * 9 * 32 * sizeof(float));
}

template <int M, typename T>
static void run_item(const WinoParams& prm, int64_t t_begin, int64_t t_end, int64_t cob_begin,
                     int64_t cob_end, void* scratch) {
  constexpr int A = Transform<M>::kAlpha;
  constexpr int P = A * A;
  using VT = T;  // transformed input stored in the compute dtype (bf16 operands, fp32 otherwise)
  const int64_t n_rows = t_end - t_begin;
  const int64_t rows = wino_row_stride(prm, n_rows);  // V's and M's rows per point
  const int64_t Kp = prm.kp, ncob = (prm.cout + 31) / 32, nc = cob_end - cob_begin;
  VT* V = static_cast<VT*>(scratch);
  float* Mbuf = reinterpret_cast<float*>(static_cast<char*>(scratch) +
                                         ((P * rows * Kp * sizeof(VT) + 63) / 64) * 64);
  if (rows > n_rows) {  // AMX's padding rows: zero, so they multiply to finite values
    for (int p = 0; p < P; ++p)
      std::memset(V + (p * rows + n_rows) * Kp, 0, (rows - n_rows) * Kp * sizeof(VT));
  }
  const Source<T> a{static_cast<const T*>(prm.a), prm.a_sh, prm.a_sw, prm.a_h, prm.a_w,
                    prm.a_c, prm.a_oy, prm.a_ox, 0};
  const Source<T> b{static_cast<const T*>(prm.b), prm.b_sh, prm.b_sw, prm.b_h, prm.b_w,
                    prm.b_c, prm.b_oy, prm.b_ox, prm.a_c};
  const int64_t per_image = prm.tiles_y * prm.tiles_x;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t n = t / per_image, r = t % per_image;
    input_tile<M>(prm, a, b, n, (r / prm.tiles_x) * M, (r % prm.tiles_x) * M, V, t - t_begin, rows);
  }
  if (sizeof(VT) == 4 && prm.raw_u) {  // float only (checked by the op)
    // Block-major: each block's taps are laid out once (block_taps), then each row of its points
    // is transformed into Ur (alpha x Kp x 32, L2-sized) and multiplied by those points'
    // transformed input (V is re-read per block). Measured on the paper network's layers, this
    // order beats transforming rows of points for all blocks first (1.1-1.7x from 512 channels).
    float* Ur = Mbuf + nc * rows * P * 32;
    float* taps = Ur + A * Kp * 32;
    for (int64_t c = 0; c < nc; ++c) {
      block_taps(static_cast<const float*>(prm.u), prm.a_c + prm.b_c, prm.cout, cob_begin + c,
                 Kp, taps);
      for (int a_row = 0; a_row < A; ++a_row) {
        weight_row<M>(taps, Kp, a_row, Ur);
        for (int bcol = 0; bcol < A; ++bcol) {
          const int p = a_row * A + bcol;
          const VT* Vp = V + p * rows * Kp;
          float* Mp = Mbuf + c * rows * P * 32 + p * 32;
          gemm_point<VT, P>(rows, Vp, reinterpret_cast<const VT*>(Ur + bcol * Kp * 32), Kp, Mp);
        }
      }
    }
  } else {
    // Point-major: one point's transformed input (rows x Kp) stays in L2 while every block of
    // output channels multiplies it, and each block's weights (Kp x 32) stay in L1/L2 over all rows.
#if defined(UNET_FAST_WINO_AMX)
    const bool amx = sizeof(VT) == 2 && prm.amx;  // (the op sets prm.amx for bf16 only)
    if (amx) amx_configure();
#endif
    for (int p = 0; p < P; ++p) {
      const VT* Vp = V + p * rows * Kp;
      for (int64_t c = 0; c < nc; ++c) {
        float* Mp = Mbuf + c * rows * P * 32 + p * 32;
        const VT* U = static_cast<const VT*>(prm.u) + (p * ncob + cob_begin + c) * Kp * 32;
#if defined(UNET_FAST_WINO_AMX)
        if (amx) {
          gemm_point_amx<P>(rows, reinterpret_cast<const uint16_t*>(Vp),
                            reinterpret_cast<const uint16_t*>(U), Kp, Mp);
          continue;
        }
#endif
        gemm_point<VT, P>(rows, Vp, U, Kp, Mp);
      }
    }
#if defined(UNET_FAST_WINO_AMX)
    if (amx) _tile_release();
#endif
  }
  for (int64_t c = 0; c < nc; ++c) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t / per_image, r = t % per_image;
      output_tile<M>(prm, Mbuf + c * P * rows * 32, t - t_begin, rows, cob_begin + c,
                     static_cast<T*>(prm.out), n, (r / prm.tiles_x) * M, (r % prm.tiles_x) * M);
    }
  }
}

// The entry point of this instantiation (declared in winograd_params.h).
void run_work_item(const WinoParams& prm, int64_t t_begin, int64_t t_end, int64_t cob_begin,
                   int64_t cob_end, void* scratch) {
  const bool bf16 = prm.bf16;
  if (prm.m == 4) {
    if (bf16) run_item<4, uint16_t>(prm, t_begin, t_end, cob_begin, cob_end, scratch);
    else run_item<4, float>(prm, t_begin, t_end, cob_begin, cob_end, scratch);
  } else {
    if (bf16) run_item<2, uint16_t>(prm, t_begin, t_end, cob_begin, cob_end, scratch);
    else run_item<2, float>(prm, t_begin, t_end, cob_begin, cob_end, scratch);
  }
}

}  // namespace UNET_FAST_WINO_NS
}  // namespace unet_fast
