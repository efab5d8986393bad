"""A re-creation, for tests only, of milesial/Pytorch-UNet's published architecture
(unet/unet_parts.py + unet/unet_model.py): same module attribute names, so the same state_dict
keys, and the same forward, including the F.pad of the up-sampled map for odd sizes.
``conv_bias=True`` mimics its older checkpoints whose 3x3 convolutions carried a bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None, conv_bias=False):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels, conv_bias=False):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, conv_bias=conv_bias))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear=True, conv_bias=False):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, conv_bias)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels, conv_bias=conv_bias)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class MilesialUNet(nn.Module):
    """Its UNet; ``width`` generalises the hard-coded 64 so tests stay small."""

    def __init__(self, n_channels, n_classes, bilinear=False, width=64, conv_bias=False):
        super().__init__()
        w, factor = width, 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, w, conv_bias=conv_bias)
        self.down1 = Down(w, 2 * w, conv_bias)
        self.down2 = Down(2 * w, 4 * w, conv_bias)
        self.down3 = Down(4 * w, 8 * w, conv_bias)
        self.down4 = Down(8 * w, 16 * w // factor, conv_bias)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear, conv_bias)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear, conv_bias)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear, conv_bias)
        self.up4 = Up(2 * w, w, bilinear, conv_bias)
        self.outc = OutConv(w, n_classes)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


def randomise_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, and conv biases when present."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()
