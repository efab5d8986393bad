// CUDA kernels of the tiling ops (schemas in csrc/unet_fast.cpp, index math in tiling_index.h,
// the same argument checks as the CPU kernels in tiling_checks.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include "tiling_checks.h"
#include "tiling_index.h"

namespace unet_fast {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
}

struct Strides4 {
  int64_t s0, s1, s2, s3;
};

inline Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// One thread per output element, enumerated in the output's memory order (channel fastest for
// channels_last outputs) so the stores coalesce; the loads follow the mirrored source.
template <typename scalar_t>
__global__ void gather_tiles_kernel(const scalar_t* __restrict__ src, Strides4 is, int64_t N,
                                    int64_t H, int64_t W, const int64_t* __restrict__ origins,
                                    int64_t uy, int64_t ux, MirrorMode mode,
                                    scalar_t* __restrict__ dst, Strides4 os, int64_t T, int64_t C,
                                    int64_t th, int64_t tw, bool channel_inner) {
  const int64_t total = T * C * th * tw;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t, c, y, x, r = i;
    if (channel_inner) {
      c = r % C; r /= C; x = r % tw; r /= tw; y = r % th; t = r / th;
    } else {
      x = r % tw; r /= tw; y = r % th; r /= th; c = r % C; t = r / C;
    }
    const TileOrigin o = tile_origin(origins, t, uy, ux);
    CUDA_KERNEL_ASSERT(o.b >= 0 && o.b < N);
    const int64_t sy = mirror_index(o.y0 + y, H, mode), sx = mirror_index(o.x0 + x, W, mode);
    dst[t * os.s0 + c * os.s1 + y * os.s2 + x * os.s3] =
        src[o.b * is.s0 + c * is.s1 + sy * is.s2 + sx * is.s3];
  }
}

void gather_tiles(const at::Tensor& image, const int64_t* origins, int64_t uy, int64_t ux,
                  MirrorMode mode, at::Tensor& out) {
  if (out.numel() == 0) return;
  const bool channel_inner = out.stride(1) == 1 && out.size(1) > 1;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, image.scalar_type(),
                             "unet_fast_gather_tiles_cuda", [&] {
    gather_tiles_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        image.const_data_ptr<scalar_t>(), strides_of(image), image.size(0), image.size(2),
        image.size(3), origins, uy, ux, mode, out.mutable_data_ptr<scalar_t>(), strides_of(out),
        out.size(0), out.size(1), out.size(2), out.size(3), channel_inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor mirror_pad_cuda(const at::Tensor& image, at::IntArrayRef pad, c10::string_view mode) {
  check_image(image);
  check_pad(pad);
  const MirrorMode m = parse_mirror_mode(std::string(mode));
  const c10::cuda::CUDAGuard guard(image.device());
  const bool cl = image.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out = new_tiles(image, image.size(0), image.size(2) + pad[0] + pad[1],
                             image.size(3) + pad[2] + pad[3], cl);
  gather_tiles(image, nullptr, -pad[0], -pad[2], m, out);
  return out;
}

at::Tensor extract_tiles_cuda(const at::Tensor& image, const at::Tensor& origins, int64_t tile_h,
                              int64_t tile_w, c10::string_view mode, bool channels_last) {
  check_image(image);
  check_tile_size(tile_h, tile_w);
  check_origins(origins, image.device(), "image");
  const MirrorMode m = parse_mirror_mode(std::string(mode));
  const c10::cuda::CUDAGuard guard(image.device());
  const at::Tensor o = origins.contiguous();
  at::Tensor out = new_tiles(image, o.size(0), tile_h, tile_w, channels_last);
  gather_tiles(image, o.const_data_ptr<int64_t>(), 0, 0, m, out);
  return out;
}

// One launch per tile, in order: overlapping tiles then accumulate (or overwrite) in a fixed
// order, which keeps blending bitwise reproducible (atomics would not). The origin is read on the
// device, so the host never waits for it.
template <typename scalar_t>
__global__ void stitch_tile_kernel(scalar_t* __restrict__ dst, Strides4 os, int64_t N, int64_t H,
                                   int64_t W, const scalar_t* __restrict__ src, Strides4 ts,
                                   int64_t K, int64_t th, int64_t tw,
                                   const int64_t* __restrict__ origins, int64_t t,
                                   const scalar_t* __restrict__ weight, int64_t wsH,
                                   int64_t wsW) {
  using acc_t = at::opmath_type<scalar_t>;
  const TileOrigin o = tile_origin(origins, t, 0, 0);
  CUDA_KERNEL_ASSERT(o.b >= 0 && o.b < N);
  const int64_t total = K * th * tw;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t tx = i % tw, ty = (i / tw) % th, k = i / (tw * th);
    const int64_t y = o.y0 + ty, x = o.x0 + tx;
    if (y < 0 || y >= H || x < 0 || x >= W) continue;
    const scalar_t v = src[t * ts.s0 + k * ts.s1 + ty * ts.s2 + tx * ts.s3];
    scalar_t* d = dst + o.b * os.s0 + k * os.s1 + y * os.s2 + x * os.s3;
    if (weight == nullptr) {
      *d = v;
    } else {
      *d = static_cast<scalar_t>(static_cast<acc_t>(*d) +
                                 static_cast<acc_t>(v) *
                                     static_cast<acc_t>(weight[ty * wsH + tx * wsW]));
    }
  }
}

void stitch_tiles_cuda(const at::Tensor& out, const at::Tensor& tiles, const at::Tensor& origins,
                       const c10::optional<at::Tensor>& weight) {
  check_stitch_args(out, tiles, origins, weight);
  if (tiles.numel() == 0 || out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor o = origins.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor out_ = out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "unet_fast_stitch_tiles_cuda", [&] {
    const scalar_t* w = weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr;
    const int64_t wsH = weight.has_value() ? weight->stride(0) : 0;
    const int64_t wsW = weight.has_value() ? weight->stride(1) : 0;
    const int64_t per_tile = tiles.size(1) * tiles.size(2) * tiles.size(3);
    for (int64_t t = 0; t < tiles.size(0); ++t) {
      stitch_tile_kernel<scalar_t><<<blocks_for(per_tile), kThreads, 0, stream>>>(
          out_.mutable_data_ptr<scalar_t>(), strides_of(out_), out_.size(0), out_.size(2),
          out_.size(3), tiles.const_data_ptr<scalar_t>(), strides_of(tiles), tiles.size(1),
          tiles.size(2), tiles.size(3), o.const_data_ptr<int64_t>(), t, w, wsH, wsW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("mirror_pad", &mirror_pad_cuda);
  m.impl("extract_tiles", &extract_tiles_cuda);
  m.impl("stitch_tiles", &stitch_tiles_cuda);
}

}  // namespace unet_fast
