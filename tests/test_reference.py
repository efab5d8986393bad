"""The reference U-Net pins the paper's figures and the state_dict contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unet_fast.reference import UNet


def paper_net(**kw) -> UNet:
    with torch.device("meta"):
        return UNet(**kw)


def test_paper_network_figures():
    net = paper_net()
    assert sum(p.numel() for p in net.parameters()) == 31_030_658
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    out = net(torch.empty(1, 1, 572, 572, device="meta"))
    assert tuple(out.shape) == (1, 2, 388, 388)


def test_channel_plan_doubles_and_halves():
    net = paper_net()
    assert [b.conv2.out_channels for b in net.encoder] == [64, 128, 256, 512]
    assert net.bottleneck.conv2.out_channels == 1024
    assert [b.up.out_channels for b in net.decoder] == [512, 256, 128, 64]
    assert [b.conv1.in_channels for b in net.decoder] == [1024, 512, 256, 128]
    assert net.head.in_channels == 64 and net.head.kernel_size == (1, 1)


def test_state_dict_names():
    keys = set(paper_net().state_dict())
    assert {"encoder.0.conv1.weight", "encoder.3.conv2.bias", "bottleneck.conv1.weight",
            "decoder.0.up.weight", "decoder.3.conv2.bias", "head.weight", "head.bias"} <= keys
    bn = set(paper_net(norm="batch").state_dict())
    assert "encoder.0.conv1.bias" not in bn
    assert {"encoder.0.norm1.running_mean", "decoder.3.norm2.weight"} <= bn


def test_bilinear_follows_milesial_channel_plan():
    net = paper_net(upsample="bilinear", padding="same", norm="batch", in_channels=3)
    assert net.bottleneck.conv2.out_channels == 512
    assert all(b.up is None for b in net.decoder)
    assert [(b.conv1.in_channels, b.conv1.out_channels, b.conv2.out_channels)
            for b in net.decoder] == [(1024, 512, 256), (512, 256, 128), (256, 128, 64),
                                      (128, 64, 64)]
    assert (net.bottleneck.conv1.out_channels, net.bottleneck.conv2.out_channels) == (512, 512)


def test_he_init():
    torch.manual_seed(0)
    net = UNet(base_channels=16)
    w = net.encoder[2].conv1.weight  # fan-in 32 * 9
    assert w.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.05)
    up = net.decoder[0].up.weight  # fan-in = C_in for a stride-2 2x2 up-convolution
    assert up.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert all(m.bias.abs().max() == 0 for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


@pytest.mark.parametrize("h,w", [(16, 16), (37, 53), (100, 33)])
def test_same_padding_keeps_any_size(h, w):
    net = UNet(base_channels=4, padding="same")
    assert net(torch.randn(2, 1, h, w)).shape == (2, 2, h, w)


def test_concat_order_is_skip_then_upsampled():
    net = UNet(base_channels=4, depth=1, padding="same").eval()
    seen = {}
    net.decoder[0].conv1.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    net.encoder[0].register_forward_hook(lambda m, i, o: seen.update(skip=o))
    net(torch.randn(1, 1, 16, 16))
    assert torch.equal(seen["x"][:, :4], seen["skip"])


def test_dropout_active_only_in_training():
    net = UNet(base_channels=4, depth=2, dropout=0.5)
    x = torch.randn(1, 1, 60, 60)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize("kw,msg", [
    ({"padding": "reflect"}, "padding must be one of"),
    ({"norm": "group"}, "norm must be one of"),
    ({"upsample": "nearest"}, "upsample must be one of"),
    ({"depth": 0}, "depth must be a positive integer"),
    ({"base_channels": 2.5}, "base_channels must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"upsample": "bilinear", "base_channels": 5}, "base_channels must be even"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        UNet(**kw)
