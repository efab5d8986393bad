"""Shared helpers of the Triton tests: the device the kernels run on, layouts, tolerances."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Interpreter: CPU tensors; otherwise the compiled kernels need CUDA tensors.
DEVICE = "cpu" if INTERPRET else "cuda"

needs_triton = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1",
)


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` as a contiguous NCHW, channels_last, or non-contiguous (strided view) tensor."""
    if kind == "nchw":
        return x.contiguous()
    if kind == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        # every other column of a wider tensor, channels permuted in memory: no unit stride on W
        wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        view = wide[..., ::2]
        assert not view.is_contiguous() and not view.is_contiguous(
            memory_format=torch.channels_last)
        return view
    raise ValueError(kind)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against ``b`` (computed in float64)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_matches(y: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype) -> None:
    """``y`` (computed in ``dtype``) against a float64 reference of the same computation.

    fp32: the DESIGN.md bound, <= 1e-5 relative L2. fp16/bf16: every element within a few ulps
    of the exact result (the kernel rounds once from an fp32 accumulator).
    """
    assert y.shape == ref64.shape, (y.shape, ref64.shape)
    assert y.dtype == dtype
    if dtype == torch.float32:
        assert rel_l2(y, ref64) <= 1e-5
    elif dtype == torch.float16:
        torch.testing.assert_close(y.double(), ref64, rtol=4e-3, atol=4e-3)
    else:
        torch.testing.assert_close(y.double(), ref64, rtol=1e-2, atol=1e-2)
