// CPU kernels of the tiling ops (schemas in csrc/unet_fast.cpp, index math in tiling_index.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "tiling_checks.h"
#include "tiling_index.h"

namespace unet_fast {
namespace {

// Roughly how many elements one parallel_for chunk should copy before splitting pays off.
constexpr int64_t kGrainElems = 32768;

// out[t, c, y, x] = image[b, c, mirror(y0 + y), mirror(x0 + x)] for every tile t; one pass, no
// padded copy of the image. Parallel over output rows (t, y); the column source indices of a row
// are computed once per row and reused for every channel.
template <typename scalar_t>
void gather_tiles_kernel(const at::Tensor& image, const int64_t* origins, int64_t uy, int64_t ux,
                         MirrorMode mode, at::Tensor& out) {
  const int64_t T = out.size(0), C = out.size(1), th = out.size(2), tw = out.size(3);
  const int64_t H = image.size(2), W = image.size(3);
  const int64_t isN = image.stride(0), isC = image.stride(1), isH = image.stride(2),
                isW = image.stride(3);
  const int64_t osT = out.stride(0), osC = out.stride(1), osH = out.stride(2),
                osW = out.stride(3);
  const bool channel_inner = osC == 1 && C > 1;  // channels_last output: write pixels in order
  const scalar_t* src = image.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, tw * C));
  at::parallel_for(0, T * th, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> col_offset(tw);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row / th, y = row % th;
      const TileOrigin o = tile_origin(origins, t, uy, ux);
      const scalar_t* src_row = src + o.b * isN + mirror_index(o.y0 + y, H, mode) * isH;
      for (int64_t x = 0; x < tw; ++x) col_offset[x] = mirror_index(o.x0 + x, W, mode) * isW;
      scalar_t* dst_row = dst + t * osT + y * osH;
      if (channel_inner) {
        for (int64_t x = 0; x < tw; ++x) {
          const scalar_t* s = src_row + col_offset[x];
          scalar_t* d = dst_row + x * osW;
          for (int64_t c = 0; c < C; ++c) d[c] = s[c * isC];
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* s = src_row + c * isC;
          scalar_t* d = dst_row + c * osC;
          for (int64_t x = 0; x < tw; ++x) d[x * osW] = s[col_offset[x]];
        }
      }
    }
  });
}

void gather_tiles(const at::Tensor& image, const int64_t* origins, int64_t uy, int64_t ux,
                  MirrorMode mode, at::Tensor& out) {
  if (out.numel() == 0) return;
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, image.scalar_type(),
                             "unet_fast_gather_tiles", [&] {
                               gather_tiles_kernel<scalar_t>(image, origins, uy, ux, mode, out);
                             });
}

at::Tensor mirror_pad_cpu(const at::Tensor& image, at::IntArrayRef pad, c10::string_view mode) {
  check_image(image);
  check_pad(pad);
  const MirrorMode m = parse_mirror_mode(std::string(mode));
  const bool cl = image.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out = new_tiles(image, image.size(0), image.size(2) + pad[0] + pad[1],
                             image.size(3) + pad[2] + pad[3], cl);
  gather_tiles(image, nullptr, -pad[0], -pad[2], m, out);
  return out;
}

at::Tensor extract_tiles_cpu(const at::Tensor& image, const at::Tensor& origins, int64_t tile_h,
                             int64_t tile_w, c10::string_view mode, bool channels_last) {
  check_image(image);
  check_tile_size(tile_h, tile_w);
  check_origins(origins, image.device(), "image");
  const MirrorMode m = parse_mirror_mode(std::string(mode));
  const at::Tensor o = origins.contiguous();
  check_batch_indices_cpu(o, image.size(0), "image");
  at::Tensor out = new_tiles(image, o.size(0), tile_h, tile_w, channels_last);
  gather_tiles(image, o.const_data_ptr<int64_t>(), 0, 0, m, out);
  return out;
}

// Tiles are applied one after another (parallel inside a tile), so overlapping tiles accumulate
// or overwrite in a fixed order and the result is bitwise reproducible.
template <typename scalar_t>
void stitch_kernel(at::Tensor& out, const at::Tensor& tiles, const int64_t* origins,
                   const scalar_t* weight, int64_t wsH, int64_t wsW) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = tiles.size(0), K = tiles.size(1), th = tiles.size(2), tw = tiles.size(3);
  const int64_t H = out.size(2), W = out.size(3);
  const int64_t osN = out.stride(0), osK = out.stride(1), osH = out.stride(2),
                osW = out.stride(3);
  const int64_t tsT = tiles.stride(0), tsK = tiles.stride(1), tsH = tiles.stride(2),
                tsW = tiles.stride(3);
  const scalar_t* src = tiles.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  for (int64_t t = 0; t < T; ++t) {
    const TileOrigin o = tile_origin(origins, t, 0, 0);
    const ClippedWindow cw = clip_window(o.y0, o.x0, th, tw, H, W);
    const int64_t rows = cw.ty_end - cw.ty_begin, cols = cw.tx_end - cw.tx_begin;
    if (rows <= 0 || cols <= 0) continue;
    const int64_t grain = std::max<int64_t>(1, kGrainElems / cols);
    at::parallel_for(0, K * rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t k = r / rows, ty = cw.ty_begin + r % rows;
        const scalar_t* s = src + t * tsT + k * tsK + ty * tsH;
        scalar_t* d = dst + o.b * osN + k * osK + (o.y0 + ty) * osH + o.x0 * osW;
        if (weight == nullptr) {
          for (int64_t tx = cw.tx_begin; tx < cw.tx_end; ++tx) d[tx * osW] = s[tx * tsW];
        } else {
          const scalar_t* w = weight + ty * wsH;
          for (int64_t tx = cw.tx_begin; tx < cw.tx_end; ++tx) {
            d[tx * osW] = static_cast<scalar_t>(static_cast<acc_t>(d[tx * osW]) +
                                                static_cast<acc_t>(s[tx * tsW]) *
                                                    static_cast<acc_t>(w[tx * wsW]));
          }
        }
      }
    });
  }
}

void stitch_tiles_cpu(const at::Tensor& out, const at::Tensor& tiles, const at::Tensor& origins,
                      const c10::optional<at::Tensor>& weight) {
  check_stitch_args(out, tiles, origins, weight);
  const at::Tensor o = origins.contiguous();
  check_batch_indices_cpu(o, out.size(0), "out");
  if (tiles.numel() == 0 || out.numel() == 0) return;
  at::Tensor out_ = out;  // the op mutates `out` in place through its data pointer
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "unet_fast_stitch_tiles", [&] {
    const scalar_t* w = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
    const int64_t wsH = weight.has_value() ? weight->stride(0) : 0;
    const int64_t wsW = weight.has_value() ? weight->stride(1) : 0;
    stitch_kernel<scalar_t>(out_, tiles, o.const_data_ptr<int64_t>(), w, wsH, wsW);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("mirror_pad", &mirror_pad_cpu);
  m.impl("extract_tiles", &extract_tiles_cpu);
  m.impl("stitch_tiles", &stitch_tiles_cpu);
}

}  // namespace unet_fast
