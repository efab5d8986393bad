"""FLOPs of a U-Net forward, counted from the network's own layers (not from a formula)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import UNetConfig


@dataclass(frozen=True)
class LayerCost:
    """One convolution of a forward pass: its name, output shape and multiply-add FLOPs."""

    name: str
    kind: str
    out_shape: tuple[int, ...]
    flops: int


def layer_costs(config: UNetConfig, height: int, width: int, batch: int = 1) -> list[LayerCost]:
    """Per-convolution FLOPs (2 per multiply-add) of one forward pass at the given input size.

    The reference network is built and run on the ``meta`` device, so no memory is touched and
    every shape (crops, pads, floors) is the network's own.
    """
    from .reference import UNet

    with torch.device("meta"):
        model = UNet(**config.to_dict()).eval()
    costs: list[LayerCost] = []

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(mod, nn.ConvTranspose2d):
                # every input pixel scatters C_in x C_out x k x k products
                macs = inputs[0].numel() * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
                kind = "upconv"
            else:
                macs = out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                kind = "conv1x1" if mod.kernel_size == (1, 1) else "conv3x3"
            costs.append(LayerCost(name, kind, tuple(out.shape), 2 * macs))

        return record

    handles = [
        mod.register_forward_hook(hook(name))
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            model(torch.empty(batch, config.in_channels, height, width, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return costs


def forward_flops(config: UNetConfig, height: int, width: int, batch: int = 1) -> int:
    """Total FLOPs of one forward pass (convolutions only; pooling and ReLU are negligible)."""
    return sum(c.flops for c in layer_costs(config, height, width, batch))
