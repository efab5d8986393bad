"""How much memory the CPU backend's Winograd weights may take, and the plan that respects it.

A Winograd form holds more than the layer's direct (oneDNN) weights: F(4x4, 3x3) 36/9 = 4x,
F(2x2, 3x3) 16/9 = 1.8x (a little more where the channels are padded to the kernel's blocks).
On the paper network the layers that gain least time per extra byte are the 512- and
1024-channel ones that hold most of the weights, and a plan that takes the fastest form
everywhere holds 3.6x the direct weights (427 MB against 118 MB in float32). The budget caps
the bytes the 3x3 layers' forms add beyond their cheapest form, summed over the layers, at
``UNET_FAST_CPU_CONV_MEMORY`` times the bytes of all 3x3 layers' direct weights (default
``_DEFAULT_BUDGET``; ``inf`` for no cap, ``0`` for direct wherever Winograd costs memory), and
:func:`budget_plan` spends it where the measured time saved per extra byte is largest. The
cheapest form is direct; where folding changes nothing (no BatchNorm, the module already in the
compute dtype, as the paper network in float32) direct runs from the module's own weight and
adds nothing, so there the budget caps the Winograd forms' whole size.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from collections.abc import Sequence

import torch

# No cap by default: speed is the default. Measured on the paper tile in fp32 (2 threads, one
# interleaved process, 2026-12-03, after the Winograd work split): budget 0.5 / 1.0 / 1.5 are
# 1.34x / 1.26x / 1.18x the uncapped plan's time (the 512- and 1024-channel layers lose F(4x4)),
# and the benchmark's peak is 584 / 632 / 673 MB against the uncapped 915 (eager NCHW ~610-670).
# A user who needs eager's peak sets UNET_FAST_CPU_CONV_MEMORY=0.5 (benchmarks/NOTES.md, "CPU
# peak memory").
_DEFAULT_BUDGET = math.inf
_ENV = "UNET_FAST_CPU_CONV_MEMORY"


def memory_budget() -> float:
    """The budget factor: ``UNET_FAST_CPU_CONV_MEMORY`` (a number >= 0 or ``inf``), else the
    default. Raises ValueError naming the variable for anything else."""
    value = os.environ.get(_ENV, "").strip().lower()
    if not value:
        return _DEFAULT_BUDGET
    try:
        factor = float(value)
    except ValueError:
        factor = math.nan
    if not factor >= 0:  # also rejects nan
        raise ValueError(f"{_ENV} must be a number >= 0 or 'inf'; got {value!r}")
    return factor


def form_bytes(tactic: str, in_channels: int, out_channels: int, dtype: torch.dtype) -> int:
    """Bytes of one 3x3 layer's packed weights in ``tactic`` (bias included): direct, or F(m x m)
    with input channels padded to 16 and output channels to 32 (see unet_fast.winograd.pack)."""
    size = torch.empty((), dtype=dtype).element_size()
    if tactic == "direct":
        return out_channels * in_channels * 9 * size + out_channels * size
    kp, np_ = -(-in_channels // 16) * 16, -(-out_channels // 32) * 32
    if tactic == "winograd4otf":  # the raw taps, transformed by the kernel on the fly
        return 9 * kp * np_ * size + np_ * 4
    m = {"winograd4": 4, "winograd2": 2}[tactic]
    return (m + 2) ** 2 * kp * np_ * size + np_ * 4


def budget_plan(seconds: Sequence[dict[str, float]], extra: Sequence[dict[str, int]],
                fastest: Sequence[str], budget: float) -> list[str]:
    """Each layer's tactic under a cap of ``budget`` extra bytes.

    ``seconds[i]``: the measured time of each candidate of layer ``i`` (empty: not measured, the
    layer keeps ``fastest[i]``); ``extra[i]``: each candidate's bytes over the layer's cheapest
    form; ``fastest[i]``: the choice without a cap. Every layer starts at its cheapest form; then,
    repeatedly, the upgrade (to a form no larger than ``fastest[i]``'s and at least 5% faster than
    the current one, as :func:`unet_fast.backends.cpu_conv3x3.fastest` asks of a larger form)
    that saves the most time per extra byte and still fits is taken. With no cap this ends at
    ``fastest`` everywhere.
    """
    plan = list(fastest)
    left = budget
    for i, times in enumerate(seconds):
        if times:
            plan[i] = min(times, key=lambda t, i=i: extra[i][t])
        left -= extra[i][plan[i]]
    while True:
        best: tuple[float, int, str] | None = None
        for i, times in enumerate(seconds):
            if not times:
                continue
            now, cap = plan[i], extra[i][fastest[i]]
            for t, sec in times.items():
                more = extra[i][t] - extra[i][now]
                if more <= 0 or extra[i][t] > cap or more > left or not sec < 0.95 * times[now]:
                    continue
                ratio = (times[now] - sec) / more
                if best is None or ratio > best[0]:
                    best = (ratio, i, t)
        if best is None:
            return plan
        _, i, t = best
        left -= extra[i][t] - extra[i][plan[i]]
        plan[i] = t


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``; nothing elsewhere).

    Called once after a plan is made: measuring builds every candidate's weights and output and
    frees most of them, and glibc keeps such freed chunks resident when live ones sit above them
    (about 400 MB after planning the paper network in float32), which the process would then
    carry for good.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
