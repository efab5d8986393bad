"""Refusing weights that can only give NaN: non-finite values, negative BatchNorm variances.

One NaN or Inf weight makes the reference's output NaN over everything it reaches, and a negative
``running_var`` makes BatchNorm's ``1/sqrt(var + eps)`` NaN; the fast backends (BatchNorm folded,
fused kernels) need not propagate either the same way, and a NaN logit argmaxes to class 0, so
such a model would give a plausible-looking mask instead. These weights are refused when the fast
backends pack them and when a checkpoint is loaded. Training (the reference ops) never checks: a
diverging run may legitimately produce NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .tracing import is_tracing


def weight_problem(model: nn.Module, tensors: Mapping[str, torch.Tensor] | None = None,
                   display: Callable[[str], str] = str) -> str | None:
    """What is wrong with ``model``'s weights, in one line naming the entry; None if nothing.

    Args:
        model: the module whose parameters and buffers are checked (with ``tensors``, only its
            names and BatchNorm layers are used: it may live on the meta device).
        tensors: the values to check instead of the model's own, by ``state_dict`` key.
        display: maps a key to the name the user knows it by (an imported checkpoint's own key).
    """
    variances = {f"{name}.running_var" if name else "running_var"
                 for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    entries = [("parameter", k, t) for k, t in model.named_parameters()]
    entries += [("buffer", k, t) for k, t in model.named_buffers()]
    for kind, key, t in entries:
        if tensors is not None:
            t = tensors.get(key)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.is_meta:
            continue  # (meta tensors have no values: layer plans and the AOT cache build use them)
        t = t.detach()
        where = f"{kind} {display(key)!r}"
        if not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            if nan:
                return f"{where} has {nan} NaN value(s) out of {t.numel()}; weights must be finite"
            inf = int(torch.isinf(t).sum())
            return f"{where} has {inf} infinite value(s) out of {t.numel()}; weights must be finite"
        if key in variances and bool((t < 0).any()):
            return (f"{where} has {int((t < 0).sum())} negative value(s); a BatchNorm variance "
                    "must be >= 0")
    return None


def check_weights(model: nn.Module) -> None:
    """Raise a ValueError naming the first NaN/Inf weight or negative BatchNorm variance.

    Skipped while a forward is traced (``torch.compile`` packs the Triton backend's weights inside
    the graph, where a data-dependent branch cannot be recorded); checkpoint loading and every
    eager pack still check.
    """
    if is_tracing():
        return
    problem = weight_problem(model)
    if problem is not None:
        raise ValueError(problem)
