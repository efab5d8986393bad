"""The reference U-Net in plain PyTorch: the source of truth for weights, names and numerics.

Parameter names (the ``state_dict`` contract shared with :class:`unet_fast.UNet`)::

    encoder.{i}.conv1 / norm1 / conv2 / norm2      i = 0 .. depth-1   (top level first)
    bottleneck.conv1 / norm1 / conv2 / norm2
    decoder.{j}.up                                 j = 0 .. depth-1   (deepest level first;
    decoder.{j}.conv1 / norm1 / conv2 / norm2       ``up`` only with upsample="transpose")
    head                                           the final 1x1 convolution

With ``upsample="bilinear"`` the channel plan is the one of the popular PyTorch U-Net
(milesial/Pytorch-UNet, ``bilinear=True``): the bottleneck keeps the width of the level above it,
the up-sampling has no weights (bilinear, ``align_corners=True``), and each decoder block's first convolution
halves the concatenated channels. Concatenation order is always ``[cropped skip, up-sampled]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .validation import check_input


class DoubleConv(nn.Module):
    """Two 3x3 convolutions, each followed by an optional BatchNorm and a ReLU."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, padding: int, norm: str | None):
        super().__init__()
        bias = norm is None
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, padding=padding, bias=bias)
        self.norm1 = nn.BatchNorm2d(mid_ch) if norm == "batch" else nn.Identity()
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, padding=padding, bias=bias)
        self.norm2 = nn.BatchNorm2d(out_ch) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UpBlock(DoubleConv):
    """Up-sample, join with the skip connection, then two 3x3 convolutions."""

    def __init__(self, up_ch: int, skip_ch: int, mid_ch: int, out_ch: int, padding: int,
                 norm: str | None, upsample: str):
        super().__init__(2 * skip_ch, mid_ch, out_ch, padding, norm)
        # The paper's 2x2 "up-convolution" halves the channels; bilinear keeps them.
        self.up = nn.ConvTranspose2d(up_ch, skip_ch, 2, stride=2) if upsample == "transpose" else None
        self.pad_up = padding > 0

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.up is not None:
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return super().forward(join_skip(skip, x, self.pad_up))


def join_skip(skip: torch.Tensor, up: torch.Tensor, pad_up: bool) -> torch.Tensor:
    """``cat([skip, up])`` after matching sizes: crop the skip (valid) or pad ``up`` (same).

    With same padding an odd size was floored by pooling, so the up-sampled map is zero-padded
    back to the skip's size (bottom/right get the extra pixel), as milesial/Pytorch-UNet does.
    """
    dh, dw = skip.shape[-2] - up.shape[-2], skip.shape[-1] - up.shape[-1]
    if dh or dw:
        if pad_up:
            up = F.pad(up, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        else:
            top, left = dh // 2, dw // 2
            skip = skip[..., top : top + up.shape[-2], left : left + up.shape[-1]]
    return torch.cat([skip, up], dim=1)


def he_init_(module: nn.Module) -> None:
    """He-normal init (std sqrt(2/N), N = incoming connections per output), zero biases.

    For the 2x2 stride-2 up-convolution every output pixel sees exactly one kernel tap of each
    input channel, so N = C_in there (not 4 C_in).
    """
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            fan_in = m.in_channels
        elif isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            continue
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015). The defaults build the paper's network.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        base_channels: channels of the top level; level ``i`` has ``base_channels * 2**i``.
        depth: number of 2x2 max-pool steps.
        padding: ``"valid"`` (unpadded convolutions, output smaller than input, see
            :mod:`unet_fast.sizes`) or ``"same"`` (zero-padded, output the input's size).
        norm: ``None`` or ``"batch"`` (BatchNorm after every 3x3 conv, which then has no bias).
        upsample: ``"transpose"`` (2x2 up-convolution) or ``"bilinear"``.
        dropout: dropout probability at the end of the contracting path.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, padding: str = "valid", norm: str | None = None,
                 upsample: str = "transpose", dropout: float = 0.0):
        super().__init__()
        cfg = UNetConfig(in_channels, num_classes, base_channels, depth, padding, norm,
                         upsample, dropout)
        self.config = cfg
        pad = 1 if padding == "same" else 0
        C = cfg.channels
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else C(i - 1), C(i), C(i), pad, norm)
            for i in range(depth)
        )
        bottom = C(depth) if upsample == "transpose" else C(depth) // 2
        self.bottleneck = DoubleConv(C(depth - 1), bottom, bottom, pad, norm)
        self.dropout = nn.Dropout(dropout)
        blocks, up_ch = [], bottom
        for i in reversed(range(depth)):
            out = C(i) if upsample == "transpose" or i == 0 else C(i) // 2
            blocks.append(UpBlock(up_ch, C(i), C(i), out, pad, norm, upsample))
            up_ch = out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(up_ch, num_classes, 1)
        he_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H_out, W_out)`` for an input ``(N, in_channels, H, W)``."""
        check_input(x, self.config, self.head.weight)
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass in plain PyTorch ops, without input checks."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.dropout(self.bottleneck(x))
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x, skip)
        return self.head(x)
