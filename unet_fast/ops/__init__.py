"""The fused ops as functions (``torch.ops.unet_fast.*`` underneath), usable on their own.

Tiling ops (mirror pad, tile extraction, stitching) come from the native extension; the fused
convolution ops from the Triton kernels.
"""

from .tiling import extract_tiles, mirror_pad, stitch_tiles, tile_origins

__all__ = ["extract_tiles", "mirror_pad", "stitch_tiles", "tile_origins"]
