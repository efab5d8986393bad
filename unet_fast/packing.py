"""Inference-time weight transforms shared by the backends: BatchNorm folding, layer walk."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import nn

from .reference import DoubleConv, UNet

C = TypeVar("C")  # a backend's packed convolution
U = TypeVar("U")  # a backend's packed up-convolution


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with any following BatchNorm folded in: ``y = conv(x, weight) + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor
    padding: int
    # folds the source layers again, from their weights at the time of the call (None: no source)
    refold: Callable[[], FoldedConv] | None = field(default=None, repr=False, compare=False)
    # the module's own weight where folding changed nothing (no BatchNorm, already in the dtype):
    # a backend may run from it instead of keeping a copy (it changes with the module's weight)
    source: torch.Tensor | None = field(default=None, repr=False, compare=False)


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.BatchNorm2d
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight``/``bias`` of a convolution followed by eval-mode ``norm``, as one convolution,
    in float64 (callers round once to their dtype). Differentiable: the portable graph uses it
    under autograd, the backends on detached weights."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    b = -norm.running_mean.double()
    if bias is not None:
        b = b + bias.double()
    return weight.double() * scale[:, None, None, None], b * scale + norm.bias.double()


def fold_conv(conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype) -> FoldedConv:
    """Fold an eval-mode BatchNorm (or Identity) into ``conv``; the result is in ``dtype``.

    The fold is computed in float64 so the folded weights are the exact rounding of the true
    product, whatever ``dtype`` the backend runs in.
    """
    with torch.no_grad():
        w = conv.weight.double()
        if isinstance(norm, nn.BatchNorm2d):
            w, b = fold_batchnorm(w, conv.bias, norm)
        else:
            b = conv.bias.double() if conv.bias is not None else w.new_zeros(w.shape[0])
    same = not isinstance(norm, nn.BatchNorm2d) and conv.weight.dtype == dtype
    return FoldedConv(w.to(dtype), b.to(dtype), conv.padding[0],
                      functools.partial(fold_conv, conv, norm, dtype),
                      conv.weight.detach() if same else None)


def fold_double_conv(block: DoubleConv, dtype: torch.dtype) -> tuple[FoldedConv, FoldedConv]:
    """Both 3x3 convolutions of a block, BatchNorm folded."""
    return fold_conv(block.conv1, block.norm1, dtype), fold_conv(block.conv2, block.norm2, dtype)


def uses_train_mode_layers(model: UNet) -> bool:
    """Whether train mode changes the forward (BatchNorm batch statistics, active dropout)."""
    return model.training and (model.config.norm is not None or model.config.dropout > 0)


@dataclass(frozen=True)
class PackedLayers(Generic[C, U]):
    """A backend's packed weights, layer by layer, in the reference model's order."""

    encoder: list[tuple[C, C]]
    bottleneck: tuple[C, C]
    decoder: list[tuple[U | None, C, C]]  # up-convolution (None: bilinear), then the two convs
    head: C


def pack_layers(model: UNet, dtype: torch.dtype, conv: Callable[[FoldedConv], C],
                up: Callable[[nn.ConvTranspose2d], U]) -> PackedLayers[C, U]:
    """Fold every BatchNorm of ``model`` in ``dtype`` and pack each layer with the backend's
    ``conv`` (3x3 convolutions and the 1x1 head) and ``up`` (2x2 up-convolutions)."""
    def pair(block: DoubleConv) -> tuple[C, C]:
        c1, c2 = fold_double_conv(block, dtype)
        return conv(c1), conv(c2)

    return PackedLayers(
        encoder=[pair(b) for b in model.encoder],
        bottleneck=pair(model.bottleneck),
        decoder=[(up(b.up) if b.up is not None else None, *pair(b)) for b in model.decoder],
        head=conv(fold_conv(model.head, nn.Identity(), dtype)),
    )
