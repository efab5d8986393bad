"""The first-call check of the Triton kernels against stock PyTorch on the user's own GPU.

No amount of testing elsewhere proves that the custom kernels compile and compute correctly on a
given GPU, driver and Triton build. So before the Triton backend first serves a (device, dtype,
TF32 setting, network shape), it runs the user's model on a small random input three ways: through
the Triton kernels, through stock PyTorch in the same precision, and through stock PyTorch in
float64 (the oracle). The kernels pass when their relative L2 error against float64 is within
DESIGN.md's bound: at most 2x stock PyTorch's own error in the same precision (TF32, fp16, bf16),
and at most 1e-5 for IEEE fp32. A failure, or an exception from the kernels, switches that key to
the stock path (:mod:`.stock`) with one warning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import sizes
from . import stock

if TYPE_CHECKING:
    from ..model import UNet

# DESIGN.md Numerics: fp32 without TF32 <= 1e-5 relative L2 against float64.
FP32_BOUND = 1e-5
ENV = "UNET_FAST_SELF_CHECK"


def enabled_by_env() -> bool:
    """``UNET_FAST_SELF_CHECK=0`` turns the check (and the fallback) off."""
    return os.environ.get(ENV, "1") != "0"


@dataclass(frozen=True)
class Verdict:
    """Outcome of one self-check: ``ok``, the two errors against float64, and why it failed."""

    ok: bool
    error: float
    torch_error: float
    reason: str = ""


def check_input_size(model: UNet) -> int:
    """A small spatial size the network accepts: the smallest valid size one pooling step up
    (valid padding), or an odd size a few pooling grids wide (same padding: exercises the
    zero-padded join)."""
    depth, padding = model.config.depth, model.config.padding
    if padding == "same":
        return 3 * 2**depth + 1
    return sizes.min_input_size(depth, padding) + 2**depth


def check_input(model: UNet, device: torch.device) -> torch.Tensor:
    """The random float32 input of the check (fixed seed; the global RNG is left alone)."""
    n = check_input_size(model)
    gen = torch.Generator().manual_seed(20240521)
    return torch.randn(1, model.config.in_channels, n, n, generator=gen).to(device)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def bound(torch_error: float) -> float:
    """The largest error the kernels may make (DESIGN.md Numerics): 2x stock PyTorch's own error
    in the same precision, and never less than IEEE fp32's 1e-5 (which also keeps a degenerate
    network whose stock error is 0 from failing on rounding)."""
    return max(FP32_BOUND, 2 * torch_error)


def run_check(model: UNet, device: torch.device, dtype: torch.dtype,
              kernels: Callable[[torch.Tensor], torch.Tensor]) -> Verdict:
    """Run ``kernels`` (the Triton forward: an input in ``dtype``, channels_last, to logits) on
    the check input and judge it against float64. Exceptions from ``kernels`` propagate."""
    x = check_input(model, device)
    same = model.config.padding == "same"
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        y = kernels(x.to(dtype).contiguous(memory_format=torch.channels_last))
        expected = stock.run(stock.pack(model, torch.float64), x.double(), same)
        y_torch = stock.run(stock.pack(model, dtype), x.to(dtype), same)
    if y.shape != expected.shape:
        return Verdict(False, math.nan, math.nan,
                       f"output shape {tuple(y.shape)}, expected {tuple(expected.shape)}")
    error, torch_error = _rel_l2(y, expected), _rel_l2(y_torch, expected)
    limit = bound(torch_error)
    if not error <= limit:  # NaN fails too
        return Verdict(False, error, torch_error,
                       f"relative L2 error {error:.3g} against float64 > {limit:.3g} "
                       f"(stock PyTorch: {torch_error:.3g})")
    return Verdict(True, error, torch_error)
