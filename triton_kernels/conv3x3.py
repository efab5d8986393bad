"""3x3 convolution + bias + ReLU as an implicit GEMM over NHWC activations.

GEMM view: M = output pixels of one image, tiled as a ``BLOCK_H x BLOCK_W`` rectangle; N = C_out;
K = 9 * C_in, ordered ``(tap, channel)`` so that the packed weight is ``[9 * C_in, C_out]``, stored
K-contiguous (see :func:`pack_conv3x3_weight`; the kernel takes the weight's strides).
Accumulation is fp32 whatever the operand dtype. With few input channels (9 * C_in <= 64: the
first conv of the network) all (tap, channel) pairs form one K block instead of nine.

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

import contextlib

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from unet_fast import launch_hints

from . import tuning
from ._common import (
    INTERPRET,
    dot_precision,
    interpreter_upcast,
    next_pow2,
    pack_k_contiguous,
    round_tf32,
    round_to_bf16_exact,
)


@triton.jit
def _accumulate_source(acc, src_ptr, s_n, s_h, s_w, s_c, C, H, W, sy, sx, m_ok, n,
                       w_ptr, w_sk, w_sn, w_row0, c_in, co, n_ok,
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
        a = tl.load(img + pix[:, None] + c.to(tl.int64)[None, :] * s_c, mask=ok[:, None] & c_ok[None, :],
                    other=0.0)
        w = tl.load(w_ptr + (tap * c_in + w_row0 + c)[:, None] * w_sk + co[None, :] * w_sn,
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _accumulate_flat(acc, src_ptr, s_n, s_h, s_w, s_c, C, H, W, sy, sx, m_ok, n,
                     w_ptr, w_sk, w_sn, co, n_ok,
                     PAD: tl.constexpr, PRECISION: tl.constexpr, FLAT_K: tl.constexpr,
                     UPCAST: tl.constexpr):
    """``acc += im2col(x) @ W`` with all ``9 * C`` (tap, channel) pairs in one K block.

    For the first convolution (1 or 3 input channels) the per-tap loop would run 9 dot products
    whose K is mostly masked-out channels; here K = ``FLAT_K`` >= 9 * C, row ``k`` being the packed
    weight's row ``tap * C + c``.
    """
    k = tl.arange(0, FLAT_K)
    tap = k // C
    c = k % C
    k_ok = k < 9 * C
    iy = sy[:, None] + (tap // 3 - PAD)[None, :]
    ix = sx[:, None] + (tap % 3 - PAD)[None, :]
    ok = m_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    off = iy.to(tl.int64) * s_h + ix.to(tl.int64) * s_w + c.to(tl.int64)[None, :] * s_c
    a = tl.load(src_ptr + n * s_n + off, mask=ok, other=0.0)
    if PRECISION == "tf32":
        a = round_tf32(a)  # the network's input is not on the TF32 grid (a few channels: cheap)
    w = tl.load(w_ptr + k[:, None] * w_sk + co[None, :] * w_sn, mask=k_ok[:, None] & n_ok[None, :],
                other=0.0)
    if UPCAST:
        a = a.to(tl.float32)
        w = w.to(tl.float32)
    return tl.dot(a, w, acc, input_precision=PRECISION)


# BATCH_BUCKET only keys the autotuner's cache (batch_bucket); unspecialised, so batch 1 and 16 do
# not compile two copies of the same code.
@triton.jit(do_not_specialize=["BATCH_BUCKET"])
def conv3x3_kernel(
    x_ptr, x_sn, x_sh, x_sw, x_sc, C1, H1, W1, oy1, ox1,
    x2_ptr, x2_sn, x2_sh, x2_sw, x2_sc, C2, H2, W2, oy2, ox2,
    w_ptr, w_sk, w_sn, b_ptr, C_out,
    y_ptr, y_sn, y_sh, y_sw, y_sc, H_out, W_out,
    p_ptr, p_sn, p_sh, p_sw, p_sc,
    hw_ptr, hb_ptr, NUM_CLASSES, BATCH_BUCKET,
    PAD: tl.constexpr, HAS_X2: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    POOL: tl.constexpr, HEAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_CLS: tl.constexpr, UPCAST: tl.constexpr = False, FLAT_K: tl.constexpr = 0,
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
    if FLAT_K > 0:
        acc = _accumulate_flat(acc, x_ptr, x_sn, x_sh, x_sw, x_sc, C1, H1, W1, oy + oy1,
                               ox + ox1, m_ok, n, w_ptr, w_sk, w_sn, co, n_ok,
                               PAD, PRECISION, FLAT_K, UPCAST)
    else:
        acc = _accumulate_source(acc, x_ptr, x_sn, x_sh, x_sw, x_sc, C1, H1, W1, oy + oy1,
                                 ox + ox1, m_ok, n, w_ptr, w_sk, w_sn, 0, c_in, co, n_ok,
                                 PAD, PRECISION, BLOCK_K, UPCAST)
    if HAS_X2:
        acc = _accumulate_source(acc, x2_ptr, x2_sn, x2_sh, x2_sw, x2_sc, C2, H2, W2, oy + oy2,
                                 ox + ox2, m_ok, n, w_ptr, w_sk, w_sn, C1, c_in, co, n_ok,
                                 PAD, PRECISION, BLOCK_K, UPCAST)

    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    # Round to the storage dtype once, as an unfused network would between layers.
    if UPCAST:
        acc = round_to_bf16_exact(acc)
    if PRECISION == "tf32":
        # the output is only ever a TF32 operand (next conv, pooled, head): round it to nearest
        # here, once, instead of letting the tensor cores truncate it at every use
        acc = round_tf32(acc)
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
        tl.store(y_ptr + y_off + j.to(tl.int64)[None, :] * y_sc, logits.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & j_ok[None, :])
    else:
        y_off = n * y_sn + oy.to(tl.int64)[:, None] * y_sh + ox.to(tl.int64)[:, None] * y_sw
        tl.store(y_ptr + y_off + co.to(tl.int64)[None, :] * y_sc, out, mask=m_ok[:, None] & n_ok[None, :])

    if POOL:
        pooled = tl.max(tl.reshape(out, (4, QUARTER, BLOCK_N)), axis=0)
        pp = tl.arange(0, QUARTER)
        py = ty0 // 2 + pp // (BLOCK_W // 2)
        px = tx0 // 2 + pp % (BLOCK_W // 2)
        p_ok = (py < H_out // 2) & (px < W_out // 2)
        p_off = n * p_sn + py.to(tl.int64)[:, None] * p_sh + px.to(tl.int64)[:, None] * p_sw
        tl.store(p_ptr + p_off + co.to(tl.int64)[None, :] * p_sc, pooled, mask=p_ok[:, None] & n_ok[None, :])


def pack_conv3x3_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[C_out, C_in, 3, 3]`` -> the GEMM layout ``[9 * C_in, C_out]`` (row = tap * C_in + c),
    stored K-contiguous (:func:`pack_k_contiguous`), for every dtype: bf16/fp16 copy in 16-byte
    pieces either way, TF32 only this way. The launcher takes any strides."""
    c_out, c_in = weight.shape[:2]
    return pack_k_contiguous(weight.permute(0, 2, 3, 1).reshape(c_out, 9 * c_in))


def pack_head_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[num_classes, C, 1, 1]`` -> ``[C, num_classes]``."""
    return weight.reshape(weight.shape[0], weight.shape[1]).t().contiguous()


def conv_output_size(n: int, padding: int) -> int:
    """Output extent of a 3x3 stride-1 convolution with ``padding`` zeros per side."""
    return n + 2 * padding - 2


def flat_k(c_in: int, dual_source: bool) -> int:
    """K block of the one-step path for few input channels (0: the per-tap loop instead)."""
    if dual_source or 9 * c_in > 64:
        return 0
    return max(16, next_pow2(9 * c_in))


def uses_fma(dtype: torch.dtype, allow_tf32: bool) -> bool:
    """IEEE fp32 products run on the FMA units, not the tensor cores: smaller tiles suit them."""
    return dot_precision(dtype, allow_tf32) == "ieee" and dtype == torch.float32


# Interpreter: one small config; its cost grows with the number of programs, not the tile size.
_INTERPRET_CONFIG = {"BLOCK_H": 8, "BLOCK_W": 8, "BLOCK_K": 16, "num_warps": 1, "num_stages": 1}

# GPU tile shapes (BLOCK_H, BLOCK_W, BLOCK_K, warps, stages); M tile = BLOCK_H x BLOCK_W output
# pixels, all even for the pool epilogue. Tensor-core precisions (bf16, fp16, TF32):
_TC_SHAPES = [(8, 16, 32, 4, 3), (8, 16, 64, 8, 3), (16, 16, 32, 8, 3), (8, 8, 32, 4, 4),
              (4, 16, 64, 4, 4), (4, 16, 16, 4, 3)]
# ... and, for layers of >= 128 output channels, these shapes with 64-channel N tiles too: twice
# the CTAs, for the small bottom layers that leave most SMs idle at batch 1 (benchmarks/NOTES.md).
_TC_NARROW_SHAPES = [(8, 16, 32, 4, 3), (16, 16, 32, 8, 3), (8, 8, 32, 4, 4)]
# ... and, for layers of >= 256 output channels (most of the FLOPs at a throughput batch), larger
# tiles with a deeper K step: (shape, BLOCK_N).
_TC_BIG_TILES = [((8, 16, 64, 8, 3), 256), ((8, 16, 32, 8, 4), 256), ((16, 16, 64, 8, 3), 128)]
# IEEE fp32 (FMA units): the tensor-core tiles leave each thread 64-128 fp32 accumulators plus
# operands and spill (benchmarks/compile_report.py --dtypes fp32); these, with N <= 64, do not.
_FMA_SHAPES = [(8, 8, 32, 4, 3), (8, 8, 16, 4, 3), (4, 16, 16, 4, 3), (8, 16, 16, 8, 3)]
# ... and for a fused head of more than 128 channels (one 256-wide N tile): 8 warps over 64
# pixels, 64 accumulators per thread (the FMA tiles above spill 1.7 KB there)
_FMA_WIDE_HEAD_SHAPES = [(8, 8, 16, 8, 3), (4, 16, 16, 8, 3), (8, 8, 32, 8, 3)]
_BLOCK_NS = (16, 32, 64, 128, 256)
# Hopper's shared memory per block (227 KiB); a candidate whose pipeline would not fit is left out
# (TF32 operands are twice the bytes of bf16 ones: some bf16 candidates do not fit in TF32).
_SHARED_LIMIT = 232448


def _pipeline_bytes(c: triton.Config, element_size: int) -> int:
    """Shared memory of a candidate's software pipeline: ``stages`` A and B tiles."""
    m = c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"]
    k, n = c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"]
    return c.num_stages * (m * k + k * n) * element_size


# fp32 accumulators per thread beyond which a tile spills (the compile report: 255 registers and
# 0.6-1 KB of local memory at 256 per thread, none at 128)
_MAX_ACCUMULATORS = 128


def _accumulators_per_thread(c: triton.Config) -> int:
    m = c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"]
    return m * c.kwargs["BLOCK_N"] // (32 * c.num_warps)


def _config(shape: tuple[int, int, int, int, int], block_n: int) -> triton.Config:
    bh, bw, bk, warps, stages = shape
    return triton.Config({"BLOCK_H": bh, "BLOCK_W": bw, "BLOCK_K": bk, "BLOCK_N": block_n},
                         num_warps=warps, num_stages=stages)


def gpu_configs(dtype: torch.dtype, allow_tf32: bool, c_out: int,
                head: bool) -> list[triton.Config]:
    """The tile configurations autotuning tries for one launch; the first is what
    ``UNET_FAST_AUTOTUNE=0`` runs. The fused head needs all of C_out in one N tile."""
    full = max(16, next_pow2(c_out))
    fma = uses_fma(dtype, allow_tf32)
    if head:
        shapes = _TC_SHAPES if not fma else _FMA_WIDE_HEAD_SHAPES if full > 128 else _FMA_SHAPES
        configs = [_config(s, full) for s in shapes]
        # the head's tile holds all of C_out: at 256 channels (compile report, sm_90) tiles of
        # more than 128 accumulators per thread spill 0.6-1 KB, and so does (32 bytes) a 4-warp
        # tile with 64-deep K steps
        # (none left only past the head's 256-channel limit, which the op refuses)
        configs = [c for c in configs if _accumulators_per_thread(c) <= _MAX_ACCUMULATORS
                   and (c.kwargs["BLOCK_N"] <= 128 or c.num_warps >= 8
                        or c.kwargs["BLOCK_K"] <= 32)] or configs
    elif fma:
        configs = [_config(s, min(64, full)) for s in _FMA_SHAPES]
    else:
        configs = [_config(s, min(128, full)) for s in _TC_SHAPES]
        if full >= 128:
            configs += [_config(s, 64) for s in _TC_NARROW_SHAPES]
        if full >= 256:
            configs += [_config(s, n) for s, n in _TC_BIG_TILES]
    fits = [c for c in configs if _pipeline_bytes(c, dtype.itemsize) <= _SHARED_LIMIT]
    return fits or configs[-1:]


def _key(c: triton.Config) -> tuple:
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


# Every configuration any launch may use; each launch prunes them to its own gpu_configs.
_ALL_CONFIGS = list({_key(c): c for s in (*_TC_SHAPES, *_FMA_SHAPES, *_FMA_WIDE_HEAD_SHAPES,
                                          *(t for t, _ in _TC_BIG_TILES))
                     for n in _BLOCK_NS for c in [_config(s, n)]}.values())


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The autotuner's early pruning: keep the launch's :func:`gpu_configs`, in their order, as
    the autotuner's own Config objects (callers such as Inductor may look them up)."""
    wanted = gpu_configs(named_args["x_ptr"].dtype, kwargs["PRECISION"] == "tf32",
                         named_args["C_out"], kwargs["HEAD"])
    own = {_key(c): c for c in configs}
    return [own[_key(c)] for c in wanted if _key(c) in own]


# Triton's autotuner over every candidate; :mod:`.tuning` decides when it runs (only when tuning
# is asked for and the launch key has no recorded tile), the launcher otherwise launches
# conv3x3_kernel with one explicit tile.
conv3x3_kernel_autotuned = triton.autotune(
    configs=_ALL_CONFIGS,
    key=["C1", "C2", "C_out", "H_out", "W_out", "BATCH_BUCKET", "PAD", "HAS_X2", "POOL", "HEAD",
         "PRECISION"],
    prune_configs_by={"early_config_prune": prune_configs},
)(conv3x3_kernel)


def batch_bucket(n: int) -> int:
    """The batch size as the tile choice sees it: the next power of two, at most 32, taken of the
    full batch inside :func:`unet_fast.launch_hints.full_batch` (segment()'s last batch)."""
    return launch_hints.batch_bucket(n)


def _nhwc_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of a logical NCHW tensor in (n, h, w, c) order."""
    s = t.stride()  # one call, not four: this runs for four tensors per launch
    return s[0], s[2], s[3], s[1]


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
    wrap=None,
) -> None:
    """Launch :func:`conv3x3_kernel`; every tensor is logical NCHW with any strides.

    ``weight`` is packed (:func:`pack_conv3x3_weight`) for ``C(x) + C(x2)`` input channels.
    ``in_hw`` is the size of the (virtual) joined input; ``offsets`` the per-source offsets from
    :func:`join_offsets`. ``out`` receives the conv output, or the logits when ``head_weight`` is
    given. The tile comes from :func:`.tuning.choose`; ``wrap`` receives the kernel before it is
    launched (``wrap_triton`` in :mod:`unet_fast.ops.fused`, a compile-only stand-in in the
    compile report); ``kernel`` replaces it outright (tests).
    """
    if out.numel() == 0:
        return
    n, c1 = x.shape[:2]
    in_h, in_w = in_hw if in_hw is not None else x.shape[2:]
    h_out, w_out = conv_output_size(in_h, padding), conv_output_size(in_w, padding)
    c2 = x2.shape[1] if x2 is not None else 0
    c_out = weight.shape[1]
    head = head_weight is not None
    precision = dot_precision(x.dtype, allow_tf32)
    bucket = batch_bucket(n)
    tune = None
    if INTERPRET:
        block_n = max(16, next_pow2(c_out)) if head else min(32, max(16, next_pow2(c_out)))
        meta = {**_INTERPRET_CONFIG, "BLOCK_N": block_n}
        chosen = conv3x3_kernel
    else:
        key = tuning.ConvKey(c1, c2, c_out, h_out, w_out, bucket, padding, pooled is not None,
                             head, precision, str(x.dtype).removeprefix("torch."))
        choice = tuning.choose(key, x.dtype, allow_tf32, x.device)
        if choice.config is None:  # tune: the autotuner's configuration, BLOCK_N included
            meta, chosen = {}, conv3x3_kernel_autotuned
            tune = tuning.tuning(key, x.device, conv3x3_kernel_autotuned)
        else:
            meta, chosen = tuning.config_meta(choice.config), conv3x3_kernel
    if kernel is None:
        kernel = chosen if wrap is None else wrap(chosen)

    def grid(m):
        m = {**m, **meta}
        return (n * triton.cdiv(h_out, m["BLOCK_H"]) * triton.cdiv(w_out, m["BLOCK_W"]),
                triton.cdiv(c_out, m["BLOCK_N"]))

    (oy1, ox1), (oy2, ox2) = offsets
    src2 = x2 if x2 is not None else x
    p = pooled if pooled is not None else out
    num_classes = head_weight.shape[1] if head else 1
    with tune if tune is not None else contextlib.nullcontext():
        kernel[grid](
            x, *_nhwc_strides(x), c1, x.shape[2], x.shape[3], oy1, ox1,
            src2, *_nhwc_strides(src2), c2, src2.shape[2], src2.shape[3], oy2, ox2,
            weight, *weight.stride(), bias if bias is not None else weight, c_out,
            out, *_nhwc_strides(out), h_out, w_out,
            p, *_nhwc_strides(p),
            head_weight if head else weight, head_bias if head_bias is not None else weight,
            num_classes, BATCH_BUCKET=bucket,
            PAD=padding, HAS_X2=x2 is not None, HAS_BIAS=bias is not None, RELU=relu,
            POOL=pooled is not None, HEAD=head, PRECISION=precision,
            UPCAST=interpreter_upcast(x.dtype), BLOCK_CLS=max(16, next_pow2(num_classes)),
            FLAT_K=flat_k(c1, x2 is not None), **meta)


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      padding: int, relu: bool = True) -> torch.Tensor:
    """Plain-torch reference: ``relu(conv2d(x, weight, bias, padding))`` (weight unpacked)."""
    y = F.conv2d(x, weight, bias, padding=padding)
    return F.relu(y) if relu else y
