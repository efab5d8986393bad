"""2x2 stride-2 up-convolution (``ConvTranspose2d(k=2, s=2)``) as one GEMM with a scattered store.

Every output pixel sees exactly one tap of every input channel, so the whole layer is
``[pixels, C_in] x [C_in, 4 * C_out]``; column ``(dy * 2 + dx) * C_out + co`` of the product goes to
output pixel ``(2 * iy + dy, 2 * ix + dx)``, channel ``co``. Bias fused, fp32 accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    dot_precision,
    interpreter_upcast,
    pack_k_contiguous,
    round_tf32,
    round_to_bf16_exact,
)


@triton.jit
def upconv2x2_kernel(
    x_ptr, x_sn, x_sh, x_sw, x_sc, C_in, H, W,
    w_ptr, w_sk, w_sn, b_ptr, C_out,
    y_ptr, y_sn, y_sh, y_sw, y_sc,
    num_pixels,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < num_pixels
    hw = H * W
    n = (m // hw).to(tl.int64)
    iy = (m % hw) // W
    ix = m % W
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n4 = 4 * C_out
    j_ok = j < n4
    kk = tl.arange(0, BLOCK_K)
    base = x_ptr + n * x_sn + iy.to(tl.int64) * x_sh + ix.to(tl.int64) * x_sw

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C_in, BLOCK_K):
        c = c0 + kk
        c_ok = c < C_in
        a = tl.load(base[:, None] + c.to(tl.int64)[None, :] * x_sc, mask=m_ok[:, None] & c_ok[None, :],
                    other=0.0)
        w = tl.load(w_ptr + c[:, None] * w_sk + j[None, :] * w_sn,
                    mask=c_ok[:, None] & j_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)

    tap = j // C_out
    co = j % C_out
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    oy = 2 * iy[:, None] + (tap // 2)[None, :]
    ox = 2 * ix[:, None] + (tap % 2)[None, :]
    off = (n[:, None] * y_sn + oy.to(tl.int64) * y_sh + ox.to(tl.int64) * y_sw
           + co.to(tl.int64)[None, :] * y_sc)
    if UPCAST:
        acc = round_to_bf16_exact(acc)
    if PRECISION == "tf32":
        acc = round_tf32(acc)  # a TF32 operand of the next conv: rounded once, not truncated
    tl.store(y_ptr + off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & j_ok[None, :])


def pack_upconv_weight(weight: torch.Tensor) -> torch.Tensor:
    """``ConvTranspose2d`` weight ``[C_in, C_out, 2, 2]`` -> ``[C_in, 4 * C_out]`` (tap-major),
    stored K-contiguous like the 3x3 weights (:func:`._common.pack_k_contiguous`: 16-byte copies
    in TF32 too). The launcher takes any strides."""
    c_in, c_out = weight.shape[:2]
    return pack_k_contiguous(weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in))


def upconv2x2_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     out: torch.Tensor, *, allow_tf32: bool = False, kernel=None) -> None:
    """Launch :func:`upconv2x2_kernel`: ``x`` logical NCHW (any strides), ``weight`` packed,
    ``out`` ``(N, C_out, 2H, 2W)`` with any strides."""
    if out.numel() == 0:
        return
    kernel = upconv2x2_kernel if kernel is None else kernel
    n, c_in, h, w = x.shape
    c_out = weight.shape[1] // 4
    if INTERPRET:
        cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1, "num_stages": 1}
    else:
        cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3}
    pixels = n * h * w
    grid = (triton.cdiv(pixels, cfg["BLOCK_M"]), triton.cdiv(4 * c_out, cfg["BLOCK_N"]))
    kernel[grid](
        x, x.stride(0), x.stride(2), x.stride(3), x.stride(1), c_in, h, w,
        weight, *weight.stride(), bias if bias is not None else weight, c_out,
        out, out.stride(0), out.stride(2), out.stride(3), out.stride(1),
        pixels,
        HAS_BIAS=bias is not None, PRECISION=dot_precision(x.dtype, allow_tf32),
        UPCAST=interpreter_upcast(x.dtype), **cfg,
    )


def upconv2x2_reference(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """Plain-torch reference (weight unpacked, ``[C_in, C_out, 2, 2]``)."""
    return F.conv_transpose2d(x, weight, bias, stride=2)
