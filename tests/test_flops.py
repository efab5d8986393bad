"""FLOPs are counted from the network's layers and match a hand count."""

from __future__ import annotations

from unet_fast.config import UNetConfig
from unet_fast.flops import forward_flops, layer_costs


def test_paper_tile_costs_about_301_gflop():
    costs = layer_costs(UNetConfig(), 572, 572)
    assert len(costs) == 23
    assert round(sum(c.flops for c in costs) / 1e9, 2) == 300.86


def test_layers_match_hand_count():
    costs = {c.name: c for c in layer_costs(UNetConfig(), 572, 572)}
    first = costs["encoder.0.conv1"]
    assert first.out_shape == (1, 64, 570, 570)
    assert first.flops == 2 * 570 * 570 * 64 * 1 * 9
    up = costs["decoder.0.up"]
    assert up.kind == "upconv" and up.out_shape == (1, 512, 56, 56)
    assert up.flops == 2 * 28 * 28 * 1024 * 512 * 4
    assert costs["head"].flops == 2 * 388 * 388 * 2 * 64


def test_flops_scale_with_batch():
    cfg = UNetConfig(padding="same", in_channels=3)
    assert forward_flops(cfg, 512, 512, batch=4) == 4 * forward_flops(cfg, 512, 512)
