"""The CPU backend's 3x3 convolutions: direct (oneDNN) or Winograd, chosen per layer by time
within a memory budget.

Every 3x3 layer can run as a direct oneDNN convolution or as one of the project's Winograd
kernels (:mod:`unet_fast.winograd`): F(4x4, 3x3) and F(2x2, 3x3) from transformed weights, or
F(4x4) from the layer's own 3x3 taps, which the kernel lays out and transforms per work item
("on the fly"). Which is fastest depends on the layer's channels, its spatial size and the
machine, so the backend measures it: the first forward at a new input size times each candidate
on that layer's real input (after building its weights, which is not timed; the layer's
candidate forms are alive together while it is timed, and only the best output so far is kept)
and notes the fastest, layer by layer (see :func:`fastest`).

Transformed weights hold more memory than direct ones (F(4x4) 4x the layer's weights, F(2x2)
1.8x), and the layers that gain least per extra byte are the widest, which hold most of the
weights; direct and F(4x4) on the fly read the module's own weight where folding changed
nothing (no BatchNorm, the module in the compute dtype) and hold nothing more. So at the end of
that forward the plan is cut to a budget on the extra bytes (``UNET_FAST_CPU_CONV_MEMORY`` times
the direct weights, 0.5 by default; see :mod:`.cpu_conv_memory`), spent where the measured time
saved per extra byte is largest. The forms the plan uses are built then (the first call's own
output came from the fastest forms), every other form and the folded weights are freed, and the
C heap's freed pages go back to the OS. Measured on the paper tile in float32
(``benchmarks/cpu_memory.py``, the benchmark's peak RSS growth): 924 MB with no budget (376 MB
of transformed 3x3 weights), 612 MB at 0.5 (52 MB), 550 MB at 0, against 609-621 MB for eager
PyTorch NCHW; 0.5 ran within 1% of the uncapped plan's time, 0 at 1.08x. The plan is cached
beside the packed weights and dropped with them when the weights change; a form that a later
input size needs is built by folding the module's weights again.

In bfloat16 the plan is direct everywhere unless ``UNET_FAST_CPU_BF16_WINOGRAD=1`` lets it measure
F(2x2) too (faster on most layers where AMX runs its GEMMs, but below PyTorch's own bf16 in label
agreement; see :func:`bf16_winograd_allowed`).

``UNET_FAST_CPU_CONV`` overrides the measurement (and the budget): ``direct``, ``winograd`` (F(4x4)
in float32, F(2x2) in bfloat16, wherever the layer has at least 8 input and output channels),
``winograd2`` (F(2x2)), ``winograd4otf`` (F(4x4) on the fly; float32), or ``auto`` (the default).
Layers smaller than ``_MIN_MEASURED_MACS`` run direct in ``auto`` without being measured.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import torch

from .. import winograd
from ..packing import FoldedConv
from ..reference import join_skip
from . import cpu_conv_memory

DIRECT, WINOGRAD4, WINOGRAD2 = "direct", "winograd4", "winograd2"
# F(4x4) from the raw taps, transformed on the fly by the kernel: the memory of direct weights
WINOGRAD4_OTF = "winograd4otf"
_FORCED = {"direct": DIRECT, "winograd": WINOGRAD4, "winograd2": WINOGRAD2,
           "winograd4otf": WINOGRAD4_OTF}
_CL = torch.channels_last
# Below these, Winograd's padded channel blocks (16 in, 32 out) would mostly multiply zeros.
_MIN_WINOGRAD_IN, _MIN_WINOGRAD_OUT = 8, 8
# Layers with fewer multiply-adds (about a millisecond or less on one core) run direct without
# being measured: what Winograd could save there is less than measuring it costs.
_MIN_MEASURED_MACS = 50_000_000
_ROUNDS = 3  # timed runs of each candidate when a layer is measured


_BF16_WINOGRAD_ENV = "UNET_FAST_CPU_BF16_WINOGRAD"


def bf16_winograd_allowed() -> bool:
    """Whether bf16 plans may measure F(2x2) (``UNET_FAST_CPU_BF16_WINOGRAD=1``; default 0).

    F(2x2) rounds its transformed input to bf16 again, which a direct bf16 convolution never
    does: each layer given to it lowers the network's label agreement below PyTorch's own bf16
    (paper network, three seeds: 99.43 / 99.39 / 99.96% against 99.61 / 99.58 / 99.97%). On CPUs
    with AMX it is also faster on most layers, so it is an opt-in trade of accuracy for speed."""
    value = os.environ.get(_BF16_WINOGRAD_ENV, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{_BF16_WINOGRAD_ENV} must be 0 or 1; got {value!r}")
    return value == "1"


def forced_tactic() -> str | None:
    """The tactic ``UNET_FAST_CPU_CONV`` forces, or None for measuring (``auto``)."""
    value = os.environ.get("UNET_FAST_CPU_CONV", "auto").strip().lower()
    if value == "auto":
        return None
    if value not in _FORCED:
        raise ValueError(f"UNET_FAST_CPU_CONV must be one of auto, {', '.join(_FORCED)}; got {value!r}")
    return _FORCED[value]


def join_skip_nhwc(skip: torch.Tensor, up: torch.Tensor, same: bool) -> torch.Tensor:
    """The reference's crop/pad + concat, done on NHWC views: one contiguous copy, no layout
    conversion (aten's cat of channels_last inputs along C takes a slow strided path)."""
    if up.shape[-2:] != skip.shape[-2:]:
        if same:
            up = join_skip(skip[:, :0], up, True)  # zero-pads up to the skip's size
        else:
            dh, dw = skip.shape[-2] - up.shape[-2], skip.shape[-1] - up.shape[-1]
            skip = skip[..., dh // 2 : dh // 2 + up.shape[-2], dw // 2 : dw // 2 + up.shape[-1]]
    joined = torch.cat([skip.permute(0, 2, 3, 1), up.permute(0, 2, 3, 1)], dim=3)
    return joined.permute(0, 3, 1, 2)


def onednn_pack(folded: FoldedConv) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """``folded``'s weight reordered once into oneDNN's blocked layout, its padding and bias."""
    pad = [folded.padding, folded.padding]
    weight = torch.ops.mkldnn._reorder_convolution_weight(
        folded.weight.contiguous(memory_format=_CL), pad, [1, 1], [1, 1], 1, None)
    return weight, pad, folded.bias


def onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: list[int],
                relu: bool) -> torch.Tensor:
    """A prepacked oneDNN convolution with bias and optional ReLU fused."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, [1, 1], [1, 1], 1, "relu" if relu else "none", [], None)


class Conv3x3:
    """One 3x3 layer in the forms the backend may run it in, each built on first use.

    ``folded`` (the BatchNorm-folded weights) is kept only until the first plan is made;
    forms a later plan needs are built from ``refold()``, which folds the module's weights again.
    """

    def __init__(self, folded: FoldedConv) -> None:
        self.folded: FoldedConv | None = folded
        self.refold: Callable[[], FoldedConv] = folded.refold or (lambda: folded)
        self.dtype = folded.weight.dtype
        self.in_channels = folded.weight.shape[1]
        self.out_channels = folded.weight.shape[0]
        # direct runs from the module's own weight where folding changed nothing: no second copy
        # in memory, for a reorder into oneDNN's layout on every call (measured +3 to +27 ms on the
        # paper network's 512/1024-channel layers, 5-45% of their direct time, 2 threads); so does
        # F(4x4) on the fly where that weight is contiguous (the kernel reads it as it is)
        self.shares_module_weight = folded.source is not None
        self.otf_shares_module_weight = self.shares_module_weight and folded.source.is_contiguous()
        self._forms: dict[str, object] = {}
        self._lock = threading.Lock()

    def candidates(self) -> list[str]:
        """The tactics this layer can run with, cheapest in memory first. F(4x4) only in
        float32, since with bfloat16 operands its transforms amplify the rounding to about 8x
        PyTorch's own bf16 error; so is F(4x4) on the fly, which reads float32 taps. F(2x2) in
        bfloat16 (within 2x per layer, but below PyTorch's bf16 label agreement over a network)
        only where :func:`bf16_winograd_allowed`."""
        if self.in_channels < _MIN_WINOGRAD_IN or self.out_channels < _MIN_WINOGRAD_OUT:
            return [DIRECT]
        if self.dtype == torch.float32:
            return [DIRECT, WINOGRAD4_OTF, WINOGRAD2, WINOGRAD4]
        if self.dtype == torch.bfloat16 and bf16_winograd_allowed():
            return [DIRECT, WINOGRAD2]
        return [DIRECT]

    def form_bytes(self, tactic: str) -> int:
        """Bytes this layer's packed weights in ``tactic`` add to the module's own."""
        if tactic == DIRECT and self.shares_module_weight:
            return self.out_channels * self.dtype.itemsize  # the bias alone
        if tactic == WINOGRAD4_OTF and self.otf_shares_module_weight:
            return -(-self.out_channels // 32) * 32 * 4  # the bias alone, padded for the kernel
        return cpu_conv_memory.form_bytes(tactic, self.in_channels, self.out_channels, self.dtype)

    def worth_measuring(self, x: torch.Tensor) -> bool:
        """Whether this layer, on input ``x``, is large enough to time its candidates."""
        macs = x.shape[0] * x.shape[-2] * x.shape[-1] * self.in_channels * self.out_channels * 9
        return macs >= _MIN_MEASURED_MACS

    def form(self, tactic: str, keep: Callable[[], bool] = lambda: True) -> object:
        """The packed weights of ``tactic``, built the first time they are asked for and kept
        if ``keep()`` says the weights they were built from are still current."""
        with self._lock:
            packed = self._forms.get(tactic)
            folded = self.folded
        if packed is not None:
            return packed
        f = folded if folded is not None else self.refold()
        if tactic == DIRECT and f.source is not None:
            packed = (f.source, [f.padding, f.padding], f.bias)
        elif tactic == DIRECT:
            packed = onednn_pack(f)
        elif tactic == WINOGRAD4_OTF:  # reads the module's weight where it has no copy of its own
            weight = f.source if f.source is not None else f.weight
            packed = winograd.pack(weight, f.bias, f.padding, 4, weight.dtype, raw=True)
        else:
            packed = winograd.pack(f.weight, f.bias, f.padding, 2 if tactic == WINOGRAD2 else 4,
                                   f.weight.dtype)
        if keep():
            with self._lock:
                packed = self._forms.setdefault(tactic, packed)
        return packed

    def keep_only(self, tactics: set[str]) -> None:
        """Free the packed weights of every other tactic."""
        with self._lock:
            for t in [t for t in self._forms if t not in tactics]:
                del self._forms[t]

    def run(self, tactic: str, x: torch.Tensor, relu: bool, skip: torch.Tensor | None = None,
            same: bool = False, keep: Callable[[], bool] = lambda: True) -> torch.Tensor:
        """``relu(conv(x))``; with ``skip``, of ``join_skip(skip, x, same)``. NHWC out."""
        packed = self.form(tactic, keep)
        if tactic == DIRECT:
            if skip is not None:
                x = join_skip_nhwc(skip, x, same)
            weight, pad, bias = packed
            return onednn_conv(x, weight, bias, pad, relu)
        return winograd.conv3x3(x, packed, relu, skip=skip, same=same)


def fastest(layer: Conv3x3, run: Callable[[str], torch.Tensor],
            keep: Callable[[], bool] = lambda: True,
            seconds: dict[str, float] | None = None,
            tactics: list[str] | None = None) -> tuple[str, torch.Tensor]:
    """Time ``run(tactic)`` for each of ``layer``'s candidates and return the fastest tactic with
    its output. After one round over all of them (weights built first, not timed), the ones
    within 20% of the best so far are timed twice more, the order rotated each round (so a slow
    spell of a shared machine does not fall on one candidate); each keeps its best time. A
    candidate later in the list (more memory: direct and F(4x4) on the fly 1x the weights or
    none, F(2x2) 1.8x, F(4x4) 4x) must be 5% faster than the best before it to be chosen.
    ``seconds``, if given, receives each candidate's best time. ``tactics``: the candidates to
    time (default: all of the layer's)."""
    if tactics is None:
        tactics = layer.candidates()
    if seconds is None:
        seconds = {}
    seconds.update(dict.fromkeys(tactics, float("inf")))
    # only the output of the best so far is kept: a paper-size layer's output is 80 MB
    kept: tuple[str, torch.Tensor] | None = None
    for tactic in tactics:
        layer.form(tactic, keep)
    contenders = tactics
    for r in range(_ROUNDS):
        for tactic in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            start = time.perf_counter()
            out = run(tactic)
            elapsed = time.perf_counter() - start
            seconds[tactic] = min(seconds[tactic], elapsed)
            if _pick(tactics, seconds) == tactic:
                kept = (tactic, out)
            del out
        fastest_yet = min(seconds.values())
        contenders = [t for t in tactics if seconds[t] <= 1.2 * fastest_yet]
        if len(contenders) == 1:
            break
    best = _pick(tactics, seconds)
    # (the best can change to a tactic whose output was dropped when another one got faster)
    return best, kept[1] if kept is not None and kept[0] == best else run(best)


def _pick(tactics: list[str], seconds: dict[str, float]) -> str:
    """The fastest of ``tactics`` (in order of memory), a larger one only if 5% faster."""
    best = tactics[0]
    for tactic in tactics[1:]:
        if seconds[tactic] < 0.95 * seconds[best]:
            best = tactic
    return best


class Planner:
    """Runs a forward's 3x3 layers by a cached per-input-size plan, measuring it the first time.

    ``plans`` maps an input size to the tactic of each 3x3 layer in forward order. ``keep``
    tells whether forms built now may be stored (the weights are still those of this pack).
    """

    def __init__(self, layers: list[Conv3x3]) -> None:
        self.layers = layers
        self.plans: dict[tuple[int, ...], list[str]] = {}
        self.keep: Callable[[], bool] = lambda: True
        self._lock = threading.Lock()

    def start(self, key: tuple[int, ...]) -> _PlannedForward:
        forced = forced_tactic()
        plan = None if forced is not None else self.plans.get(key)
        budget = math.inf
        if forced is None and plan is None:  # a bad value fails now, not after measuring
            budget = cpu_conv_memory.memory_budget() * self.direct_bytes()
        return _PlannedForward(self, key, plan, forced, budget)

    def direct_bytes(self) -> int:
        """Bytes of all 3x3 layers' direct weights: the unit of the memory budget."""
        return sum(cpu_conv_memory.form_bytes(DIRECT, layer.in_channels, layer.out_channels,
                                              layer.dtype) for layer in self.layers)

    def chosen(self, index: int, tactic: str) -> None:
        """Free the forms of layer ``index`` that neither ``tactic`` nor another plan uses."""
        with self._lock:
            self.layers[index].keep_only({tactic} | {p[index] for p in self.plans.values()})

    def finish(self, key: tuple[int, ...], fastest: list[str],
               seconds: list[dict[str, float]], budget: float) -> list[str]:
        """Record the plan for ``key``: ``fastest`` (each layer's fastest tactic, ``seconds`` its
        candidates' times; empty where not measured) cut down to ``budget`` extra bytes (see
        :mod:`.cpu_conv_memory`). Builds the forms the plan needs that measuring did not keep,
        frees every other form and the folded weights, and returns the freed heap to the OS."""
        layers = self.layers
        extra = [{t: layer.form_bytes(t) - layer.form_bytes(DIRECT) for t in layer.candidates()}
                 for layer in layers]
        plan = cpu_conv_memory.budget_plan(seconds, extra, fastest, budget)
        for layer, tactic in zip(layers, plan, strict=True):
            layer.form(tactic, self.keep)  # built from the folded weights while they exist
        with self._lock:
            self.plans[key] = plan
            self._drop_unused()
        cpu_conv_memory.release_free_heap()
        return plan

    def forced_done(self) -> None:
        """After a forward with a forced tactic: the folded weights are not needed any more."""
        if any(layer.folded is not None for layer in self.layers):
            with self._lock:
                for layer in self.layers:
                    layer.folded = None
            cpu_conv_memory.release_free_heap()

    def _drop_unused(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.keep_only({p[i] for p in self.plans.values()})
            layer.folded = None  # later forms are built from refold()


class _PlannedForward:
    def __init__(self, planner: Planner, key: tuple[int, ...], plan: list[str] | None,
                 forced: str | None, budget: float) -> None:
        self.planner, self.key, self.plan, self.forced = planner, key, plan, forced
        self.budget = budget  # extra bytes the plan may hold: no form larger than it is timed
        self.measured: list[str] = []
        self.seconds: list[dict[str, float]] = []
        self.index = 0

    def next_tactic(self) -> str | None:
        """The tactic the next 3x3 layer will run with, where it is known before it runs: from
        the cached plan or a forced ``direct`` (None while measuring or with another forced
        tactic, which falls back per layer)."""
        if self.forced is not None:
            return DIRECT if self.forced == DIRECT else None
        return self.plan[self.index] if self.plan is not None else None

    def conv(self, layer: Conv3x3, x: torch.Tensor, relu: bool = True,
             skip: torch.Tensor | None = None, same: bool = False) -> torch.Tensor:
        i = self.index
        self.index += 1
        keep = self.planner.keep
        if self.forced is not None:
            # a forced Winograd falls back to the layer's best option
            options = layer.candidates()
            tactic = self.forced if self.forced in options or self.forced == DIRECT else options[-1]
            return layer.run(tactic, x, relu, skip, same, keep)
        if self.plan is not None:
            return layer.run(self.plan[i], x, relu, skip, same, keep)
        seconds: dict[str, float] = {}
        if not layer.worth_measuring(x):
            tactic, out = DIRECT, layer.run(DIRECT, x, relu, skip, same, keep)
        else:
            # a form that could never fit the budget is neither built nor timed: planning the
            # paper network at the default budget would otherwise build the 1024-channel layers'
            # F(4x4) weights (151 MB each) only to drop them
            base = layer.form_bytes(DIRECT)
            affordable = [t for t in layer.candidates()
                          if layer.form_bytes(t) - base <= self.budget]
            tactic, out = fastest(layer, lambda t: layer.run(t, x, relu, skip, same, keep), keep,
                                  seconds, affordable)
        self.measured.append(tactic)
        self.seconds.append(seconds)
        self.planner.chosen(i, tactic)
        return out

    def done(self) -> None:
        if self.forced is not None:
            self.planner.forced_done()
        elif self.plan is None:
            self.planner.finish(self.key, self.measured, self.seconds, self.budget)
