"""The fused ops as functions (``torch.ops.unet_fast.*`` underneath), usable on their own.

Tiling ops (mirror pad, tile extraction, stitching) come from the native extension; the fused
convolution ops from the Triton kernels.
"""

from __future__ import annotations

from typing import Any

from .tiling import extract_tiles, mirror_pad, stitch_tiles, tile_origins

# The Triton ops import triton (heavy, and absent from CPU-only installs): load them on first use.
_FUSED = ("conv3x3", "conv3x3_cat", "conv3x3_head", "conv3x3_pool", "crop_concat", "maxpool2x2",
          "upconv2x2", "upsample_bilinear2x")


def __getattr__(name: str) -> Any:
    if name in _FUSED:
        from . import fused

        return getattr(fused, name)
    raise AttributeError(f"module 'unet_fast.ops' has no attribute {name!r}")


__all__ = ["extract_tiles", "mirror_pad", "stitch_tiles", "tile_origins", *_FUSED]
