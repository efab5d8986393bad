// Host-side argument checks and output allocation of the tiling ops, shared by the CPU and CUDA
// implementations so both reject the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "tiling_index.h"

namespace unet_fast {

inline MirrorMode parse_mirror_mode(const std::string& mode) {
  if (mode == "reflect") return MirrorMode::kReflect;
  if (mode == "symmetric") return MirrorMode::kSymmetric;
  TORCH_CHECK(false, "mode must be 'reflect' or 'symmetric', got '", mode, "'");
}

inline void check_image(const at::Tensor& image) {
  TORCH_CHECK(image.dim() == 4, "image must be 4-D (N, C, H, W), got ", image.dim(),
              "-D of shape ", image.sizes());
  TORCH_CHECK(image.size(2) >= 1 && image.size(3) >= 1,
              "image must have H, W >= 1 to be mirrored, got shape ", image.sizes());
}

inline void check_tile_size(int64_t tile_h, int64_t tile_w) {
  TORCH_CHECK(tile_h >= 1 && tile_w >= 1, "tile_h and tile_w must be >= 1, got tile_h=", tile_h,
              ", tile_w=", tile_w);
}

// origins: (T, 3) int64 rows (b, y0, x0) on `device`.
inline void check_origins(const at::Tensor& origins, const at::Device& device,
                          const char* other_name) {
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3,
              "origins must be a (T, 3) tensor of (batch, y0, x0) rows, got shape ",
              origins.sizes());
  TORCH_CHECK(origins.scalar_type() == at::kLong, "origins must be int64, got ",
              origins.scalar_type());
  TORCH_CHECK(origins.device() == device, "origins is on ", origins.device(), " but ",
              other_name, " is on ", device);
}

// On the CPU the batch index of every origin is checked here; CUDA kernels assert on the device.
inline void check_batch_indices_cpu(const at::Tensor& origins, int64_t n, const char* name) {
  const int64_t* o = origins.data_ptr<int64_t>();
  for (int64_t t = 0; t < origins.size(0); ++t) {
    TORCH_CHECK(o[3 * t] >= 0 && o[3 * t] < n, "origins[", t, "] has batch index ", o[3 * t],
                ", outside [0, ", n, ") of ", name);
  }
}

inline at::Tensor new_tiles(const at::Tensor& image, int64_t t, int64_t th, int64_t tw,
                            bool channels_last) {
  return at::empty({t, image.size(1), th, tw},
                   image.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
}

inline void check_pad(at::IntArrayRef pad) {
  TORCH_CHECK(pad.size() == 4, "pad must have 4 values (top, bottom, left, right), got ",
              pad.size());
  for (auto p : pad) {
    TORCH_CHECK(p >= 0, "pad values must be >= 0, got ", pad);
  }
}

inline void check_stitch_args(const at::Tensor& out, const at::Tensor& tiles,
                              const at::Tensor& origins, const c10::optional<at::Tensor>& weight) {
  TORCH_CHECK(out.dim() == 4, "out must be 4-D (N, K, H, W), got shape ", out.sizes());
  TORCH_CHECK(tiles.dim() == 4, "tiles must be 4-D (T, K, tile_h, tile_w), got shape ",
              tiles.sizes());
  TORCH_CHECK(tiles.size(1) == out.size(1), "tiles has ", tiles.size(1),
              " channels but out has ", out.size(1));
  TORCH_CHECK(tiles.size(0) == origins.size(0), "tiles has ", tiles.size(0),
              " tiles but origins has ", origins.size(0), " rows");
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "out must be floating point, got ",
              out.scalar_type());
  TORCH_CHECK(tiles.scalar_type() == out.scalar_type(), "tiles dtype ", tiles.scalar_type(),
              " must match out dtype ", out.scalar_type());
  TORCH_CHECK(tiles.device() == out.device(), "tiles is on ", tiles.device(), " but out is on ",
              out.device());
  check_origins(origins, out.device(), "out");
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.dim() == 2 && w.size(0) == tiles.size(2) && w.size(1) == tiles.size(3),
                "weight must be (tile_h, tile_w) = (", tiles.size(2), ", ", tiles.size(3),
                "), got shape ", w.sizes());
    TORCH_CHECK(w.scalar_type() == out.scalar_type(), "weight dtype ", w.scalar_type(),
                " must match out dtype ", out.scalar_type());
    TORCH_CHECK(w.device() == out.device(), "weight is on ", w.device(), " but out is on ",
                out.device());
  }
}

}  // namespace unet_fast
