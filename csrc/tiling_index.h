// Index math of mirror padding and tile windows, shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels so both fold indices identically.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace unet_fast {

// Values of the `mode` string argument, resolved once on the host.
enum class MirrorMode : int { kReflect = 0, kSymmetric = 1 };

// Maps a coordinate of the mirror-extended axis (any integer, negative or past the end) to the
// source coordinate in [0, n). numpy.pad folds pads larger than the image back and forth, which
// makes the extended axis periodic: period 2(n-1) for reflect (edge not repeated), 2n for
// symmetric (edge repeated). A 1-pixel axis repeats its only pixel in both modes, as numpy does.
C10_HOST_DEVICE inline int64_t mirror_index(int64_t i, int64_t n, MirrorMode mode) {
  if (i >= 0 && i < n) return i;  // the common case inside the image, no division
  if (n == 1) return 0;
  const int64_t period = mode == MirrorMode::kReflect ? 2 * (n - 1) : 2 * n;
  int64_t r = i % period;
  if (r < 0) r += period;
  if (r < n) return r;
  return mode == MirrorMode::kReflect ? period - r : period - 1 - r;
}

// One tile window: batch item `b`, top-left corner (y0, x0) in coordinates of the unpadded image
// (negative or past the end where the window reaches into the mirrored border). Origins are stored
// as rows of three int64 (b, y0, x0).
struct TileOrigin {
  int64_t b, y0, x0;
};

// `origins` may be null: then tile t is batch item t with the common corner (uy, ux), which is how
// mirror_pad reuses the tile gather without building an origins tensor on the device.
C10_HOST_DEVICE inline TileOrigin tile_origin(const int64_t* origins, int64_t t, int64_t uy,
                                              int64_t ux) {
  if (origins == nullptr) return TileOrigin{t, uy, ux};
  return TileOrigin{origins[3 * t], origins[3 * t + 1], origins[3 * t + 2]};
}

// The part of a tile of size (th, tw) placed at (y0, x0) that lands inside an (h, w) output:
// tile rows [ty_begin, ty_end) and columns [tx_begin, tx_end); empty when begin >= end.
struct ClippedWindow {
  int64_t ty_begin, ty_end, tx_begin, tx_end;
};

C10_HOST_DEVICE inline int64_t clamp_range(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

C10_HOST_DEVICE inline ClippedWindow clip_window(int64_t y0, int64_t x0, int64_t th, int64_t tw,
                                                 int64_t h, int64_t w) {
  return ClippedWindow{clamp_range(-y0, 0, th), clamp_range(h - y0, 0, th),
                       clamp_range(-x0, 0, tw), clamp_range(w - x0, 0, tw)};
}

}  // namespace unet_fast
