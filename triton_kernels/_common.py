"""Small helpers shared by the kernel launchers."""

from __future__ import annotations

import os

import torch

# Read once: the interpreter path picks single small tile configs (see each launcher).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``tl.dot`` input precision: TF32 only for fp32 operands when PyTorch would allow it."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"
