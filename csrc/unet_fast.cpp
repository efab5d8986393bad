// The one schema file of the native library: every op of the unet_fast namespace is declared
// here; cpu/ and cuda/ register implementations with TORCH_LIBRARY_IMPL, and unet_fast/ops
// registers the fake (meta) implementations used by torch.compile.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing unet_fast._C only has to run the static registrations below; the module itself is
// empty, so it is declared with the bare CPython API (no pybind11 needed).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(unet_fast, m) {
  // Tiling (overlap-tile segmentation). `mode` is "reflect" or "symmetric" (numpy.pad's modes,
  // pads larger than the image fold back and forth). Images are (N, C, H, W) with any strides
  // (channels_last included). `origins` is a (T, 3) int64 tensor of (batch, y0, x0) rows on the
  // image's device: (y0, x0) is a tile's top-left corner in coordinates of the unpadded image.

  // pad = (top, bottom, left, right); the output keeps the input's memory format.
  m.def("mirror_pad(Tensor image, int[4] pad, str mode) -> Tensor");
  // (T, C, tile_h, tile_w) gathered straight from the unpadded image: tile t is the window of
  // image origins[t, 0] at (origins[t, 1], origins[t, 2]) of its mirror extension.
  m.def(
      "extract_tiles(Tensor image, Tensor origins, int tile_h, int tile_w, str mode, "
      "bool channels_last) -> Tensor");
  // Writes tiles (T, K, th, tw) into out (N, K, H, W) at the origins, clipped to out: exact
  // placement (out = tile) without weight, weighted accumulation (out += tile * weight) with a
  // (th, tw) weight map. Tiles are applied in order, so the result is deterministic.
  m.def("stitch_tiles(Tensor(a!) out, Tensor tiles, Tensor origins, Tensor? weight) -> ()");

  // CPU inference. A 3x3 convolution by Winograd's minimal filtering F(m x m, 3x3), m = 2 or 4,
  // with bias and an optional ReLU fused, over the virtual input the reference would build: the
  // channels of `a` then those of `b` (no concatenation is made), `size` = (H, W) of that input,
  // `offsets` = (a_oy, a_ox, b_oy, b_ox): virtual pixel (y, x) reads a at (y + a_oy, x + a_ox) and
  // b at (y + b_oy, x + b_ox), zero outside each source (a crop is a positive offset, a pad a
  // negative one). `weight` and `bias` are packed by unet_fast.winograd.pack. `isa` is "auto",
  // "amx" (bfloat16: AMX tile GEMMs), "avx512" or "portable". Output NHWC (channels_last), in the input's dtype (float or bfloat16).
  m.def(
      "winograd_conv3x3(Tensor a, Tensor? b, int[4] offsets, int[2] size, Tensor weight, "
      "Tensor bias, int in_channels, int out_channels, int padding, int m, bool relu, str isa=\"auto\") -> Tensor");
}
