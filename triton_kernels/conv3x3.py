"""3x3 convolution + bias + ReLU as an implicit GEMM over NHWC activations.

GEMM view: M = output pixels of one image, tiled as a ``BLOCK_H x BLOCK_W`` rectangle; N = C_out;
K = 9 * C_in, ordered ``(tap, channel)`` so that the packed weight is ``[9 * C_in, C_out]``.
Accumulation is fp32 whatever the operand dtype.

The K dimension may come from two sources (``x`` then ``x2``), each read at its own pixel offset
and zero outside its bounds. That is how the decoder's first convolution reads
``cat([cropped skip, up-sampled])`` without the concatenated tensor ever existing: the skip is read
at the crop offset (valid padding) and the up-sampled map at minus its zero-padding offset (same
padding, odd sizes; see :func:`unet_fast.reference.join_skip`).

Optional epilogues:

* ``pool``: also write the 2x2/stride-2 max-pool of the (post-ReLU) output. The rows of an M tile
  are ordered quadrant-major (the four pixels of every pool window sit in four row blocks), so the
  pool is a max over a ``[4, BLOCK_M / 4, BLOCK_N]`` reshape; it works for every tile because tile
  origins are even.
* ``head``: the final 1x1 convolution applied to the ReLU output while it is still in registers;
  needs the whole C_out in one N tile. The 3x3 output itself is then never written.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    dot_precision,
    interpreter_upcast,
    next_pow2,
    round_to_bf16_exact,
)


@triton.jit
def _accumulate_source(acc, src_ptr, s_n, s_h, s_w, s_c, C, H, W, sy, sx, m_ok, n,
                       w_ptr, w_row0, c_in, co, n_ok, C_out,
                       PAD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
                       UPCAST: tl.constexpr):
    """``acc += im2col(source) @ W[rows of this source]`` for one source's channels.

    ``(sy, sx)`` are the output pixels already moved into this source's coordinates. The
    (tap, channel-block) loop is flattened into one loop so the compiler can software-pipeline
    the loads across taps, not only across the few channel blocks of one tap.
    """
    kk = tl.arange(0, BLOCK_K)
    blocks = tl.cdiv(C, BLOCK_K)
    img = src_ptr + n * s_n
    for it in range(0, 9 * blocks):
        tap = it // blocks
        c = (it % blocks) * BLOCK_K + kk
        iy = sy + (tap // 3 - PAD)
        ix = sx + (tap % 3 - PAD)
        ok = m_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        c_ok = c < C
        pix = iy.to(tl.int64) * s_h + ix.to(tl.int64) * s_w
        a = tl.load(img + pix[:, None] + c[None, :] * s_c, mask=ok[:, None] & c_ok[None, :],
                    other=0.0)
        w = tl.load(w_ptr + (tap * c_in + w_row0 + c)[:, None] * C_out + co[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def conv3x3_kernel(
    x_ptr, x_sn, x_sh, x_sw, x_sc, C1, H1, W1, oy1, ox1,
    x2_ptr, x2_sn, x2_sh, x2_sw, x2_sc, C2, H2, W2, oy2, ox2,
    w_ptr, b_ptr, C_out,
    y_ptr, y_sn, y_sh, y_sw, y_sc, H_out, W_out,
    p_ptr, p_sn, p_sh, p_sw, p_sc,
    hw_ptr, hb_ptr, NUM_CLASSES,
    PAD: tl.constexpr, HAS_X2: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    POOL: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_CLS: tl.constexpr, UPCAST: tl.constexpr = False,
):
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    QUARTER: tl.constexpr = BLOCK_M // 4
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # derived here, not passed, so that autotuning may change the tile shape
    tiles_w = tl.cdiv(W_out, BLOCK_W)
    tiles_per_image = tl.cdiv(H_out, BLOCK_H) * tiles_w
    n = (pid_m // tiles_per_image).to(tl.int64)
    tile = pid_m % tiles_per_image
    ty0 = (tile // tiles_w) * BLOCK_H
    tx0 = (tile % tiles_w) * BLOCK_W

    r = tl.arange(0, BLOCK_M)
    if POOL:
        q = r // QUARTER
        p = r % QUARTER
        oy = ty0 + 2 * (p // (BLOCK_W // 2)) + q // 2
        ox = tx0 + 2 * (p % (BLOCK_W // 2)) + q % 2
    else:
        oy = ty0 + r // BLOCK_W
        ox = tx0 + r % BLOCK_W
    m_ok = (oy < H_out) & (ox < W_out)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = co < C_out
    c_in = C1 + C2

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _accumulate_source(acc, x_ptr, x_sn, x_sh, x_sw, x_sc, C1, H1, W1, oy + oy1, ox + ox1,
                             m_ok, n, w_ptr, 0, c_in, co, n_ok, C_out,
                             PAD, PRECISION, BLOCK_K, UPCAST)
    if HAS_X2:
        acc = _accumulate_source(acc, x2_ptr, x2_sn, x2_sh, x2_sw, x2_sc, C2, H2, W2, oy + oy2,
                                 ox + ox2, m_ok, n, w_ptr, C1, c_in, co, n_ok, C_out,
                                 PAD, PRECISION, BLOCK_K, UPCAST)

    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    # Round to the storage dtype once, as an unfused network would between layers.
    if UPCAST:
        acc = round_to_bf16_exact(acc)
    out = acc.to(y_ptr.dtype.element_ty)

    if HEAD:
        j = tl.arange(0, BLOCK_CLS)
        j_ok = j < NUM_CLASSES
        hw = tl.load(hw_ptr + co[:, None] * NUM_CLASSES + j[None, :],
                     mask=n_ok[:, None] & j_ok[None, :], other=0.0)
        if UPCAST:
            logits = tl.dot(out.to(tl.float32), hw.to(tl.float32), input_precision=PRECISION)
        else:
            logits = tl.dot(out, hw, input_precision=PRECISION)
        logits += tl.load(hb_ptr + j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
        if UPCAST:
            logits = round_to_bf16_exact(logits)
        y_off = n * y_sn + oy.to(tl.int64)[:, None] * y_sh + ox.to(tl.int64)[:, None] * y_sw
        tl.store(y_ptr + y_off + j[None, :] * y_sc, logits.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & j_ok[None, :])
    else:
        y_off = n * y_sn + oy.to(tl.int64)[:, None] * y_sh + ox.to(tl.int64)[:, None] * y_sw
        tl.store(y_ptr + y_off + co[None, :] * y_sc, out, mask=m_ok[:, None] & n_ok[None, :])

    if POOL:
        pooled = tl.max(tl.reshape(out, (4, QUARTER, BLOCK_N)), axis=0)
        pp = tl.arange(0, QUARTER)
        py = ty0 // 2 + pp // (BLOCK_W // 2)
        px = tx0 // 2 + pp % (BLOCK_W // 2)
        p_ok = (py < H_out // 2) & (px < W_out // 2)
        p_off = n * p_sn + py.to(tl.int64)[:, None] * p_sh + px.to(tl.int64)[:, None] * p_sw
        tl.store(p_ptr + p_off + co[None, :] * p_sc, pooled, mask=p_ok[:, None] & n_ok[None, :])


def pack_conv3x3_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[C_out, C_in, 3, 3]`` -> the GEMM layout ``[9 * C_in, C_out]`` (row = tap * C_in + c)."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out).contiguous()


def pack_head_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[num_classes, C, 1, 1]`` -> ``[C, num_classes]``."""
    return weight.reshape(weight.shape[0], weight.shape[1]).t().contiguous()


def conv_output_size(n: int, padding: int) -> int:
    """Output extent of a 3x3 stride-1 convolution with ``padding`` zeros per side."""
    return n + 2 * padding - 2


def _block_n(c_out: int, head: bool) -> int:
    if head:
        return max(16, next_pow2(c_out))
    return min(32 if INTERPRET else 128, max(16, next_pow2(c_out)))


# Interpreter: one small config; its cost grows with the number of programs, not the tile size.
_INTERPRET_CONFIG = {"BLOCK_H": 8, "BLOCK_W": 8, "BLOCK_K": 16, "num_warps": 1, "num_stages": 1}

# GPU: a few sane shapes (M tile = BLOCK_H x BLOCK_W output pixels, all even for the pool
# epilogue); BLOCK_N is fixed by the launcher (the fused head needs all of C_out in one tile).
_GPU_CONFIGS = [
    triton.Config({"BLOCK_H": 8, "BLOCK_W": 16, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_H": 8, "BLOCK_W": 16, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_H": 16, "BLOCK_W": 16, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_H": 8, "BLOCK_W": 8, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_H": 4, "BLOCK_W": 16, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_H": 4, "BLOCK_W": 16, "BLOCK_K": 16}, num_warps=4, num_stages=3),
]

AUTOTUNE = not INTERPRET and os.environ.get("UNET_FAST_AUTOTUNE", "1") != "0"

conv3x3_kernel_autotuned = triton.autotune(
    configs=_GPU_CONFIGS,
    key=["C1", "C2", "C_out", "H_out", "W_out", "PAD", "HAS_X2", "POOL", "HEAD", "BLOCK_N"],
)(conv3x3_kernel)


def default_kernel():
    """The kernel the launcher runs by default: autotuned on a GPU, plain under the interpreter
    (or with ``UNET_FAST_AUTOTUNE=0``, which uses the first GPU config)."""
    return conv3x3_kernel_autotuned if AUTOTUNE else conv3x3_kernel


def _nhwc_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of a logical NCHW tensor in (n, h, w, c) order."""
    return t.stride(0), t.stride(2), t.stride(3), t.stride(1)


def join_offsets(skip_hw: tuple[int, int], up_hw: tuple[int, int], same: bool
                 ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Where the two halves of ``join_skip(skip, up, same)`` are read from.

    Returns ``(out_hw, skip_offset, up_offset)``: the joined map's size and, per source, the
    offset added to a joined-map coordinate to get that source's coordinate.
    """
    dh, dw = skip_hw[0] - up_hw[0], skip_hw[1] - up_hw[1]
    if same:
        return skip_hw, (0, 0), (-(dh // 2), -(dw // 2))
    return up_hw, (dh // 2, dw // 2), (0, 0)


def conv3x3_launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    *,
    padding: int,
    relu: bool = True,
    x2: torch.Tensor | None = None,
    in_hw: tuple[int, int] | None = None,
    offsets: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
    pooled: torch.Tensor | None = None,
    head_weight: torch.Tensor | None = None,
    head_bias: torch.Tensor | None = None,
    allow_tf32: bool = False,
    kernel=None,
) -> None:
    """Launch :func:`conv3x3_kernel`; every tensor is logical NCHW with any strides.

    ``weight`` is packed (:func:`pack_conv3x3_weight`) for ``C(x) + C(x2)`` input channels.
    ``in_hw`` is the size of the (virtual) joined input; ``offsets`` the per-source offsets from
    :func:`join_offsets`. ``out`` receives the conv output, or the logits when ``head_weight`` is
    given. ``kernel`` lets :mod:`unet_fast.ops.fused` pass the kernel through ``wrap_triton``.
    """
    if out.numel() == 0:
        return
    kernel = default_kernel() if kernel is None else kernel
    n, c1 = x.shape[:2]
    in_h, in_w = in_hw if in_hw is not None else x.shape[2:]
    h_out, w_out = conv_output_size(in_h, padding), conv_output_size(in_w, padding)
    c2 = x2.shape[1] if x2 is not None else 0
    c_out = weight.shape[1]
    head = head_weight is not None
    block_n = _block_n(c_out, head)
    if INTERPRET:
        meta = dict(_INTERPRET_CONFIG)
    elif not AUTOTUNE:
        cfg = _GPU_CONFIGS[0]
        meta = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    else:
        meta = {}

    def grid(m):
        m = {**m, **meta}
        return (n * triton.cdiv(h_out, m["BLOCK_H"]) * triton.cdiv(w_out, m["BLOCK_W"]),
                triton.cdiv(c_out, block_n))

    (oy1, ox1), (oy2, ox2) = offsets
    src2 = x2 if x2 is not None else x
    p = pooled if pooled is not None else out
    num_classes = head_weight.shape[1] if head else 1
    kernel[grid](
        x, *_nhwc_strides(x), c1, x.shape[2], x.shape[3], oy1, ox1,
        src2, *_nhwc_strides(src2), c2, src2.shape[2], src2.shape[3], oy2, ox2,
        weight, bias if bias is not None else weight, c_out,
        out, *_nhwc_strides(out), h_out, w_out,
        p, *_nhwc_strides(p),
        head_weight if head else weight, head_bias if head_bias is not None else weight,
        num_classes,
        PAD=padding, HAS_X2=x2 is not None, HAS_BIAS=bias is not None, RELU=relu,
        POOL=pooled is not None, HEAD=head,
        PRECISION=dot_precision(x.dtype, allow_tf32), UPCAST=interpreter_upcast(x.dtype),
        BLOCK_N=block_n, BLOCK_CLS=max(16, next_pow2(num_classes)),
        **meta,
    )


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      padding: int, relu: bool = True) -> torch.Tensor:
    """Plain-torch reference: ``relu(conv2d(x, weight, bias, padding))`` (weight unpacked)."""
    y = F.conv2d(x, weight, bias, padding=padding)
    return F.relu(y) if relu else y
