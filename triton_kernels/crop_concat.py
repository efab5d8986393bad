"""Fused crop + concat: ``cat([cropped skip, up], dim=C)`` in one pass (or zero-padded ``up``).

The U-Net forward never needs this (the decoder's first convolution reads both sources directly,
see :mod:`.conv3x3`); it exists for :mod:`unet_fast.ops` users. Semantics are those of
:func:`unet_fast.reference.join_skip`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, needs_int64, nhwc_block


@triton.jit
def crop_concat_kernel(
    s_ptr, s_sn, s_sh, s_sw, s_sc, C1, H1, W1, oy1, ox1,
    u_ptr, u_sn, u_sh, u_sw, u_sc, C2, H2, W2, oy2, ox2,
    y_ptr, y_sn, y_sh, y_sw, y_sc, H, W, total,
    BLOCK: tl.constexpr, WIDE: tl.constexpr,
):
    ok, n, y, x, c = nhwc_block(total, C1 + C2, H, W, BLOCK, WIDE)
    from_skip = c < C1
    sy = y + oy1
    sx = x + ox1
    s_ok = ok & from_skip & (sy >= 0) & (sy < H1) & (sx >= 0) & (sx < W1)
    a = tl.load(s_ptr + n * s_sn + sy * s_sh + sx * s_sw + c * s_sc, mask=s_ok, other=0.0)
    uy = y + oy2
    ux = x + ox2
    c2 = c - C1
    u_ok = ok & (c >= C1) & (uy >= 0) & (uy < H2) & (ux >= 0) & (ux < W2)
    b = tl.load(u_ptr + n * u_sn + uy * u_sh + ux * u_sw + c2 * u_sc, mask=u_ok, other=0.0)
    v = tl.where(from_skip, a, b)
    tl.store(y_ptr + n * y_sn + y * y_sh + x * y_sw + c * y_sc, v, mask=ok)


def crop_concat_launch(skip: torch.Tensor, up: torch.Tensor, out: torch.Tensor,
                       offsets: tuple[tuple[int, int], tuple[int, int]], kernel=None) -> None:
    """Launch :func:`crop_concat_kernel`; tensors logical NCHW with any strides, ``offsets`` from
    :func:`.conv3x3.join_offsets`."""
    if out.numel() == 0:
        return
    kernel = crop_concat_kernel if kernel is None else kernel
    n, c, h, w = out.shape
    total = n * c * h * w
    block = 256 if INTERPRET else 1024
    (oy1, ox1), (oy2, ox2) = offsets
    kernel[(triton.cdiv(total, block),)](
        skip, skip.stride(0), skip.stride(2), skip.stride(3), skip.stride(1),
        skip.shape[1], skip.shape[2], skip.shape[3], oy1, ox1,
        up, up.stride(0), up.stride(2), up.stride(3), up.stride(1),
        up.shape[1], up.shape[2], up.shape[3], oy2, ox2,
        out, out.stride(0), out.stride(2), out.stride(3), out.stride(1), h, w, total,
        BLOCK=block, WIDE=needs_int64(skip, up, out),
    )


def crop_concat_reference(skip: torch.Tensor, up: torch.Tensor, same: bool) -> torch.Tensor:
    """Plain-torch reference: :func:`unet_fast.reference.join_skip`."""
    from unet_fast.reference import join_skip

    return join_skip(skip, up, same)
