"""Time every layer of a :class:`~unet_fast.benchmark.layers.LayerPlan` on its own, beside the
same layer done with aten ops (cuDNN on a GPU), on the same random inputs, and check that both
compute the same thing (relative L2 error between them).

This is the per-layer table of issue 6 / METHOD.md: each layer's time against its floor says
where the forward's time goes, and the aten column says which layers lose to cuDNN.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..reference import join_skip
from .flags import backend_flags
from .layers import Layer, LayerPlan
from .timing import time_cpu, time_cuda

_CL = torch.channels_last


def unpack_conv3x3(w: torch.Tensor) -> torch.Tensor:
    """Packed ``[9 * C_in, C_out]`` -> ``[C_out, C_in, 3, 3]`` (channels_last)."""
    c_out = w.shape[1]
    c_in = w.shape[0] // 9
    return w.reshape(3, 3, c_in, c_out).permute(3, 2, 0, 1).contiguous(memory_format=_CL)


def unpack_upconv(w: torch.Tensor) -> torch.Tensor:
    """Packed ``[C_in, 4 * C_out]`` -> ``[C_in, C_out, 2, 2]``."""
    c_in, c_out = w.shape[0], w.shape[1] // 4
    return w.reshape(c_in, 2, 2, c_out).permute(0, 3, 1, 2).contiguous(memory_format=_CL)


def unpack_head(w: torch.Tensor) -> torch.Tensor:
    """Packed ``[C, classes]`` -> ``[classes, C, 1, 1]``."""
    return w.t().reshape(w.shape[1], w.shape[0], 1, 1).contiguous(memory_format=_CL)


def aten_equivalent(layer: Layer, args: tuple) -> Callable[[], object]:
    """A closure doing ``layer``'s work with aten ops on ``args`` (weights unpacked once here).

    Its convolutions follow ``torch.backends.cudnn.allow_tf32``; :func:`time_layers` sets it to
    the plan's TF32 setting (the ops take theirs as an argument)."""
    op = layer.op
    if op in ("conv3x3", "conv3x3_pool"):
        x, w, b, pad = args[:4]
        relu = args[4] if op == "conv3x3" else True
        weight = unpack_conv3x3(w)

        def conv():
            y = F.conv2d(x, weight, b, padding=pad)
            y = F.relu(y) if relu else y
            return (y, F.max_pool2d(y, 2)) if op == "conv3x3_pool" else y

        return conv
    if op == "conv3x3_cat":
        skip, up, w, b, pad, relu, _ = args
        weight = unpack_conv3x3(w)

        def cat_conv():
            y = F.conv2d(join_skip(skip, up, pad_up=pad == 1), weight, b, padding=pad)
            return F.relu(y) if relu else y

        return cat_conv
    if op == "conv3x3_head":
        x, w, b, hw, hb, pad, _ = args
        weight, head = unpack_conv3x3(w), unpack_head(hw)

        return lambda: F.conv2d(F.relu(F.conv2d(x, weight, b, padding=pad)), head, hb)
    if op == "upconv2x2":
        x, w, b, _ = args
        weight = unpack_upconv(w)
        return lambda: F.conv_transpose2d(x, weight, b, stride=2)
    if op == "upsample_bilinear2x":
        (x,) = args
        return lambda: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    if op == "maxpool2x2":
        (x,) = args
        return lambda: F.max_pool2d(x, 2)
    if op == "crop_concat":
        skip, up, same = args
        return lambda: join_skip(skip, up, pad_up=same)
    raise ValueError(f"no aten equivalent for op {op!r}")


def rel_l2(a: object, b: object) -> float:
    """Largest relative L2 error over the outputs (tensors or tuples of tensors), in float64."""
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    errs = []
    for x, y in zip(a, b, strict=True):
        x, y = x.double(), y.double()
        errs.append(float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return max(errs)


def _call(fn: Callable[[], object]) -> object:
    return fn()


def time_layers(plan: LayerPlan, device: str, target_ms: float = 200.0, repeats: int | None = None,
                seed: int = 0, log=sys.stderr,
                on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Per layer: unet_fast op and aten times (median/p20/p80 ms) and their relative L2 error.
    ``on_row(rows so far)`` is called after each layer (to keep partial results on disk).

    Two input sets per layer so that consecutive calls do not reuse one buffer; on a GPU the L2
    is flushed before each call (:func:`unet_fast.benchmark.timing.time_cuda`). The aten side runs
    with ``cudnn.benchmark`` on and TF32 as the plan says, like the benchmark's cuDNN rows.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    results = []
    for i, layer in enumerate(plan.layers):
        sets = [layer.materialize(device, gen) for _ in range(2)]
        fast_op = layer.callable()
        aten = [aten_equivalent(layer, a) for a in sets]
        row: dict = {"name": layer.name, "op": layer.op}
        try:
            flags = {"cudnn.allow_tf32": plan.tf32, "cudnn.benchmark": True}
            with torch.no_grad(), backend_flags(flags):
                row["rel_l2_vs_aten"] = rel_l2(fast_op(*sets[0]), aten[0]())
                fast_calls = [functools.partial(fast_op, *a) for a in sets]
                if device == "cuda":
                    fast = time_cuda(_call, fast_calls, repeats, None, target_ms)
                    ref = time_cuda(_call, aten, repeats, None, target_ms)
                else:
                    fast = time_cpu(_call, fast_calls, repeats or 3, 1)
                    ref = time_cpu(_call, aten, repeats or 3, 1)
        except Exception as e:  # a failing layer is recorded, the others still run
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"[layers] {layer.name}: {row['error']}", file=log, flush=True)
            results.append(row)
            if on_row is not None:
                on_row(results)
            continue
        for key, stats in (("unet_fast", fast), ("aten", ref)):
            row[key] = {k: stats[k] for k in ("median_ms", "p20_ms", "p80_ms", "repeats")}
        print(f"[layers {i + 1}/{len(plan.layers)}] {layer.name}: unet_fast "
              f"{fast['median_ms']:.4f} ms, aten {ref['median_ms']:.4f} ms, rel. L2 "
              f"{row['rel_l2_vs_aten']:.1e}", file=log, flush=True)
        results.append(row)
        if on_row is not None:
            on_row(results)
    return results
