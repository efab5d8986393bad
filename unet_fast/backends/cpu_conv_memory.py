"""How much memory the CPU backend's Winograd weights may take, and the plan that respects it.

A Winograd form holds more than the layer's direct (oneDNN) weights: F(4x4, 3x3) 36/9 = 4x,
F(2x2, 3x3) 16/9 = 1.8x (a little more where the channels are padded to the kernel's blocks);
F(4x4) on the fly holds nothing more where it reads the module's own weight.
On the paper network the layers that gain least time per extra byte are the 512- and
1024-channel ones that hold most of the weights (F(4x4) from transformed weights on every layer
would hold 427 MB against 118 MB of direct weights in float32; the uncapped plan, with F(4x4) on
the fly on some of them, measured 376 MB). The budget caps
the bytes the 3x3 layers' forms add beyond their cheapest form, summed over the layers, at
``UNET_FAST_CPU_CONV_MEMORY`` times the bytes of all 3x3 layers' direct weights (default
``_DEFAULT_BUDGET``, 0.5; ``inf`` for no cap, ``0`` for only the forms that cost nothing more
than direct), and :func:`budget_plan` spends it where the measured time saved per extra byte is
largest. The cheapest forms are direct and F(4x4) on the fly: where folding changes nothing (no
BatchNorm, the module already in the compute dtype, as the paper network in float32) both run
from the module's own weight and add nothing, so there the budget caps the transformed forms'
whole size.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from collections.abc import Sequence

import torch

# Half the direct weights by default. Measured on the paper tile in fp32 (2 threads, 2026-12-03),
# since F(4x4) on the fly reads the module's own weight (0 extra bytes) and is a plan candidate:
# budget inf / 1 / 0.5 / 0.25 / 0 took 1.00 / 0.92 / 0.99 / 1.06 / 1.08x the time of the uncapped
# plan in one interleaved process (the plans differ by per-layer measuring noise), with a peak of
# 924 / 656 / 612 / 578 / 550 MB (benchmarks/cpu_memory.py; eager NCHW 609-621 MB). 0.5 is the
# largest budget that keeps eager's peak; before the on-the-fly form it cost 1.34x.
_DEFAULT_BUDGET = 0.5
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
    """Bytes of one 3x3 layer's packed weights in ``tactic`` (bias included) where they are a
    copy of their own: direct, F(4x4) on the fly (the taps as they are), or F(m x m) with input
    channels padded to 16 and output channels to 32 (see unet_fast.winograd.pack)."""
    size = torch.empty((), dtype=dtype).element_size()
    kp, np_ = -(-in_channels // 16) * 16, -(-out_channels // 32) * 32
    if tactic == "direct":
        return out_channels * in_channels * 9 * size + out_channels * size
    if tactic == "winograd4otf":  # the taps, transformed by the kernel on the fly
        return out_channels * in_channels * 9 * size + np_ * 4
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
                if t == now or extra[i][t] > cap or more > left or not sec < 0.95 * times[now]:
                    continue
                # a faster form that costs no more (F(4x4) on the fly from the module's weight
                # against direct) is taken first
                ratio = math.inf if more <= 0 else (times[now] - sec) / more
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
