// What one Winograd 3x3 convolution call needs, in plain C types, shared by the torch-facing op
// (winograd_cpu.cpp) and the kernel instantiations (winograd_kernel.h), which include no torch
// header (see there why).
#pragma once

#include <cstdint>

namespace unet_fast {

struct WinoParams {
  int m;      // output tile: 4 for F(4x4, 3x3), 2 for F(2x2, 3x3)
  bool bf16;  // sources, U and output are bfloat16 (else float32)
  bool amx;   // bf16 point GEMMs on AMX tiles (needs kp % 32 == 0; AVX-512 build only)
  bool relu;
  int64_t padding;   // 0 (valid) or 1 (same)
  int64_t vh, vw;    // virtual input size: the concatenation the reference would build
  int64_t oh, ow;    // output size: vh + 2 * padding - 2
  int64_t tiles_y, tiles_x;
  int64_t kp;        // input channels (a_c + b_c) rounded up to 16
  int64_t cout;
  // source a: virtual channels [0, a_c); virtual (y, x) reads a at (y + a_oy, x + a_ox)
  const void* a;
  int64_t a_sn, a_sh, a_sw, a_h, a_w, a_c, a_oy, a_ox;
  // source b (nullptr: none): virtual channels [a_c, a_c + b_c)
  const void* b;
  int64_t b_sn, b_sh, b_sw, b_h, b_w, b_c, b_oy, b_ox;
  const void* u;       // transformed weights, or raw 3x3 taps (layouts in winograd_kernel.h)
  bool raw_u;          // u is the (C_out, C_in, 3, 3) weight (float32): transformed on the fly
  const float* bias;   // cout rounded up to 32, zero-padded
  void* out;           // NHWC, channel stride 1
  int64_t out_sn, out_sh, out_sw;
};

constexpr int kWinoRows = 12;
constexpr int kAmxRows = 16;  // rows of one AMX tile

// Rows of V and M per point for a work item of `rows` tiles: AMX tiles load and store 16 rows,
// so their GEMMs run over rows rounded up to 16 (the extra rows are zero in V, ignored in M).
inline int64_t wino_row_stride(const WinoParams& p, int64_t rows) {
  return p.amx ? (rows + kAmxRows - 1) / kAmxRows * kAmxRows : rows;
}

// Bytes of scratch one work item of `rows` tiles and `blocks` blocks
// of 32 output channels needs.
inline int64_t wino_scratch_bytes(const WinoParams& p, int64_t rows, int64_t blocks) {
  rows = wino_row_stride(p, rows);
  const int64_t points = (p.m + 2) * (p.m + 2);
  const int64_t v = (points * rows * p.kp * (p.bf16 ? 2 : 4) + 63) / 64 * 64;
  const int64_t ur = p.raw_u ? (p.m + 2) * p.kp * 32 * 4 : 0;  // one row of points' weights
  const int64_t taps = p.raw_u ? p.kp * 9 * 32 * 4 : 0;       // one block's taps, packed
  return v + blocks * points * rows * 32 * 4 + ur + taps;
}

namespace wino_avx512 {
void run_work_item(const WinoParams& prm, int64_t t_begin, int64_t t_end, int64_t cob_begin,
                   int64_t cob_end, void* scratch);
bool compiled();  // false where the compiler could not target AVX-512 (the file is then empty)
bool amx_compiled();  // whether this build has the AMX GEMMs (prm.amx)
}  // namespace wino_avx512
namespace wino_portable {
void run_work_item(const WinoParams& prm, int64_t t_begin, int64_t t_end, int64_t cob_begin,
                   int64_t cob_end, void* scratch);
}  // namespace wino_portable

}  // namespace unet_fast
