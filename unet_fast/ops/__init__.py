"""The fused ops as functions (``torch.ops.unet_fast.*`` underneath), usable on their own.

Tiling ops (mirror pad, tile extraction, stitching) come from the native extension; the fused
convolution ops from the Triton kernels.
"""

from __future__ import annotations

from .fused import (
    conv3x3,
    conv3x3_cat,
    conv3x3_head,
    conv3x3_pool,
    crop_concat,
    maxpool2x2,
    upconv2x2,
    upsample_bilinear2x,
)

__all__ = ["conv3x3", "conv3x3_cat", "conv3x3_head", "conv3x3_pool", "crop_concat",
           "maxpool2x2", "upconv2x2", "upsample_bilinear2x"]
