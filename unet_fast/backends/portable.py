"""The portable graph: the reference network in plain ATen ops, eval-mode BatchNorm folded.

This is what exporters record (see :mod:`unet_fast.tracing`). It runs eagerly too, on any device
and dtype, which is how the tests compare it with the float64 reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..packing import fold_batchnorm
from ..reference import join_skip

if TYPE_CHECKING:
    from ..model import UNet
    from ..reference import DoubleConv


def folded_conv(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` for an eval-mode BatchNorm (or Identity) as one convolution.

    The fold is computed in float64 and rounded once to the weight's dtype, as
    :func:`unet_fast.packing.fold_conv` does for the backends; it stays differentiable (no
    ``detach``), so the graph is also right under autograd.
    """
    if not isinstance(norm, nn.BatchNorm2d):
        return conv(x)
    weight, bias = fold_batchnorm(conv.weight, conv.bias, norm)
    weight, bias = weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)
    return F.conv2d(x, weight, bias, padding=conv.padding)


def _double_conv(block: DoubleConv, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(folded_conv(block.conv1, block.norm1, x))
    return F.relu(folded_conv(block.conv2, block.norm2, x))


class PortableBackend:
    """The reference forward with BatchNorm folded; valid only without train-mode layers."""

    name = "portable"

    def supports(self, model: UNet, x: torch.Tensor) -> bool:
        return True

    def forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in model.encoder:
            x = _double_conv(block, x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = _double_conv(model.bottleneck, x)  # dropout: identity in eval mode
        for block, skip in zip(model.decoder, reversed(skips), strict=True):
            if block.up is not None:
                x = block.up(x)
            else:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = _double_conv(block, join_skip(skip, x, block.pad_up))
        return model.head(x)


PORTABLE = PortableBackend()
