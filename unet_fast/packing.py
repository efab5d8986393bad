"""Inference-time weight transforms shared by the backends: BatchNorm folding, layer walk."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .reference import DoubleConv, UNet


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with any following BatchNorm folded in: ``y = conv(x, weight) + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor
    padding: int


def fold_conv(conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype) -> FoldedConv:
    """Fold an eval-mode BatchNorm (or Identity) into ``conv``; the result is in ``dtype``.

    The fold is computed in float64 so the folded weights are the exact rounding of the true
    product, whatever ``dtype`` the backend runs in.
    """
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        w = w * scale[:, None, None, None]
        b = (b - norm.running_mean.double()) * scale + norm.bias.detach().double()
    return FoldedConv(w.to(dtype), b.to(dtype), conv.padding[0])


def fold_double_conv(block: DoubleConv, dtype: torch.dtype) -> tuple[FoldedConv, FoldedConv]:
    """Both 3x3 convolutions of a block, BatchNorm folded."""
    return fold_conv(block.conv1, block.norm1, dtype), fold_conv(block.conv2, block.norm2, dtype)


def uses_train_mode_layers(model: UNet) -> bool:
    """Whether train mode changes the forward (BatchNorm batch statistics, active dropout)."""
    return model.training and (model.config.norm is not None or model.config.dropout > 0)
