"""Standalone 2x2/stride-2 max-pool and 2x bilinear up-sampling (``align_corners=True``), NHWC.

The max-pool is normally fused into the encoder convolution's epilogue (see :mod:`.conv3x3`);
this kernel serves :mod:`unet_fast.ops`. Bilinear up-sampling is the weight-free ``upsample``
option of the U-Net; it interpolates in fp32 and rounds once, as PyTorch's CUDA kernel does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    interpreter_upcast,
    needs_int64,
    nhwc_block,
    round_to_bf16_exact,
)


@triton.jit
def maxpool2x2_kernel(
    x_ptr, x_sn, x_sh, x_sw, x_sc, C,
    y_ptr, y_sn, y_sh, y_sw, y_sc, H, W, total,
    BLOCK: tl.constexpr, WIDE: tl.constexpr,
):
    ok, n, y, x, c = nhwc_block(total, C, H, W, BLOCK, WIDE)
    base = x_ptr + n * x_sn + (2 * y) * x_sh + (2 * x) * x_sw + c * x_sc
    v = tl.load(base, mask=ok, other=0.0)
    v = tl.maximum(v, tl.load(base + x_sw, mask=ok, other=0.0))
    v = tl.maximum(v, tl.load(base + x_sh, mask=ok, other=0.0))
    v = tl.maximum(v, tl.load(base + x_sh + x_sw, mask=ok, other=0.0))
    tl.store(y_ptr + n * y_sn + y * y_sh + x * y_sw + c * y_sc, v, mask=ok)


@triton.jit
def upsample_bilinear2x_kernel(
    x_ptr, x_sn, x_sh, x_sw, x_sc, C, H_in, W_in,
    y_ptr, y_sn, y_sh, y_sw, y_sc, H, W, total, scale_h, scale_w,
    BLOCK: tl.constexpr, WIDE: tl.constexpr, FIX_BF16: tl.constexpr = False,
):
    ok, n, y, x, c = nhwc_block(total, C, H, W, BLOCK, WIDE)
    fy = y.to(tl.float32) * scale_h
    fx = x.to(tl.float32) * scale_w
    y0 = tl.minimum(fy.to(c.dtype), H_in - 1)
    x0 = tl.minimum(fx.to(c.dtype), W_in - 1)
    y1 = tl.minimum(y0 + 1, H_in - 1)
    x1 = tl.minimum(x0 + 1, W_in - 1)
    ly = fy - y0.to(tl.float32)
    lx = fx - x0.to(tl.float32)
    base = x_ptr + n * x_sn + c * x_sc
    v00 = tl.load(base + y0 * x_sh + x0 * x_sw, mask=ok, other=0.0).to(tl.float32)
    v01 = tl.load(base + y0 * x_sh + x1 * x_sw, mask=ok, other=0.0).to(tl.float32)
    v10 = tl.load(base + y1 * x_sh + x0 * x_sw, mask=ok, other=0.0).to(tl.float32)
    v11 = tl.load(base + y1 * x_sh + x1 * x_sw, mask=ok, other=0.0).to(tl.float32)
    v = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
    if FIX_BF16:
        v = round_to_bf16_exact(v)
    tl.store(y_ptr + n * y_sn + y * y_sh + x * y_sw + c * y_sc, v.to(y_ptr.dtype.element_ty),
             mask=ok)


def _block() -> int:
    return 256 if INTERPRET else 1024


def maxpool2x2_launch(x: torch.Tensor, out: torch.Tensor, kernel=None) -> None:
    """Launch :func:`maxpool2x2_kernel` (floor mode); tensors logical NCHW, any strides."""
    if out.numel() == 0:
        return
    kernel = maxpool2x2_kernel if kernel is None else kernel
    n, c, h, w = out.shape
    total = n * c * h * w
    kernel[(triton.cdiv(total, _block()),)](
        x, x.stride(0), x.stride(2), x.stride(3), x.stride(1), c,
        out, out.stride(0), out.stride(2), out.stride(3), out.stride(1), h, w, total,
        BLOCK=_block(), WIDE=needs_int64(x, out),
    )


def upsample_bilinear2x_launch(x: torch.Tensor, out: torch.Tensor, kernel=None) -> None:
    """Launch :func:`upsample_bilinear2x_kernel`; ``out`` is ``(N, C, 2H, 2W)``, any strides."""
    kernel = upsample_bilinear2x_kernel if kernel is None else kernel
    n, c, h, w = out.shape
    h_in, w_in = x.shape[2:]
    total = n * c * h * w
    # align_corners=True: output corner pixels land exactly on input corner pixels.
    scale_h = (h_in - 1) / (h - 1) if h > 1 else 0.0
    scale_w = (w_in - 1) / (w - 1) if w > 1 else 0.0
    kernel[(triton.cdiv(total, _block()),)](
        x, x.stride(0), x.stride(2), x.stride(3), x.stride(1), c, h_in, w_in,
        out, out.stride(0), out.stride(2), out.stride(3), out.stride(1), h, w, total,
        scale_h, scale_w,
        BLOCK=_block(), WIDE=needs_int64(x, out), FIX_BF16=interpreter_upcast(x.dtype),
    )


def maxpool2x2_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference."""
    return F.max_pool2d(x, 2)


def upsample_bilinear2x_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain-torch reference (the U-Net's ``upsample="bilinear"``)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
