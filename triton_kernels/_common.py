"""Small helpers shared by the kernel launchers."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Read once: the interpreter path picks single small tile configs (see each launcher).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# Flat indices and element offsets stay int32 below this (with a block's worth of headroom): int64
# division is a software routine on NVIDIA GPUs, several times the cost of int32's.
_INT32_LIMIT = 2**31 - 2**16


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether a flat index over, or an element offset into, any of ``tensors`` may pass int32."""
    for t in tensors:
        last = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))
        if t.numel() >= _INT32_LIMIT or last >= _INT32_LIMIT:
            return True
    return False


@triton.jit
def nhwc_block(total, C, H, W, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """Mask and (n, y, x, c) coordinates of this program's ``BLOCK`` outputs, flat-indexed in NHWC
    order so that consecutive lanes walk channels (contiguous for NHWC); int64 only if ``WIDE``."""
    if WIDE:
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pix = i // C
    return i < total, pix // (W * H), (pix // W) % H, pix % W, i % C


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


# Row padding of the packed weights, in elements (a multiple of 16 bytes for every dtype).
K_ALIGN = 16


def pack_k_contiguous(w: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` -> the same values as a ``[K, N]`` GEMM operand stored K-contiguous: strides
    ``(1, K')``, each of the N rows padded to ``K'``, a multiple of :data:`K_ALIGN` elements.

    Hopper's wgmma reads a TF32 B operand only K-major from shared memory; a weight that is
    K-contiguous in global memory too is then copied there in 16-byte pieces (N-contiguous ones
    went 4 bytes at a time: benchmarks/compile_report.py). The padding keeps every row 16-byte
    aligned for any K, and lets Triton see that (it specialises strides divisible by 16).
    """
    n, k = w.shape
    if k % K_ALIGN == 0:
        return w.contiguous().t()
    rows = w.new_zeros((n, k + -k % K_ALIGN))  # zeros, not garbage, in the padding
    rows[:, :k] = w
    return rows[:, :k].t()


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``tl.dot`` input precision: TF32 only for fp32 operands when PyTorch would allow it."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def interpreter_upcast(dtype: torch.dtype) -> bool:
    """Whether the bf16 work-arounds for the interpreter apply (only bf16 under the interpreter).

    The interpreter multiplies bf16 ``tl.dot`` operands as raw bits and truncates fp32 -> bf16
    casts; the kernels then upcast the dot operands to fp32 (products of bf16 values are exact
    in fp32) and round explicitly (:func:`round_to_bf16_exact`), so the rest of the bf16 path
    (loads, accumulation, rounding, stores) is tested on the CPU. Compiled kernels never take it.
    """
    return INTERPRET and dtype == torch.bfloat16


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 ``t`` rounded to the nearest TF32 value (10 mantissa bits, ties to even), as fp32.

    Tensor cores read fp32 operands of a TF32 product by dropping the low 13 mantissa bits
    (truncation, biased toward zero; triton-lang/triton#4574); operands already on the TF32 grid
    lose nothing, so rounding them first gives round-to-nearest products. NaN and Inf pass.
    """
    bits = t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
    rounded = torch.where((bits & 0x7F800000) == 0x7F800000, bits, rounded)
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded)
    return rounded.to(torch.int32).view(torch.float32).reshape(t.shape)


@triton.jit
def round_tf32(x):
    """In-kernel :func:`round_to_tf32`."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
    finite = (bits & 0x7F800000) != 0x7F800000
    return tl.where(finite, rounded, bits).to(tl.float32, bitcast=True)


@triton.jit
def round_to_bf16_exact(x):
    """fp32 ``x`` rounded to the nearest bf16 value (ties to even), still as fp32.

    Needed only under the interpreter, whose fp32 -> bf16 cast truncates; a following ``.to(bf16)``
    is then exact. (NaN/Inf are not special-cased: the interpreter tests feed finite values.)
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
