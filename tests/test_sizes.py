"""Valid-size arithmetic against a brute-force walk through the network's layers."""

from __future__ import annotations

import pytest
import torch

from unet_fast import sizes
from unet_fast.config import UNetConfig
from unet_fast.reference import UNet


def simulate(n: int, depth: int) -> int | None:
    """Output size of a valid-padding U-Net, or None if some layer would be invalid."""
    for _ in range(depth):
        n -= 4
        if n < 2 or n % 2:
            return None
        n //= 2
    n -= 4
    if n < 1:
        return None
    for _ in range(depth):
        n = 2 * n - 4
        if n < 1:
            return None
    return n


def test_paper_figures():
    assert sizes.output_size(572) == 388
    assert sizes.margin() == 92
    assert sizes.min_input_size() == 188
    assert sizes.input_size_for_output(388) == 572
    assert sizes.input_size_for_output(1) == 188
    assert sizes.input_size_for_output(389) == 588


def test_valid_sizes_are_16k_plus_124():
    valid = [n for n in range(1, 700) if sizes.is_valid_input_size(n)]
    assert valid[:3] == [188, 204, 220]
    assert all(n % 16 == 12 and n >= 188 for n in valid)
    assert all(sizes.output_size(n) == n - 184 for n in valid)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_matches_brute_force(depth):
    for n in range(1, 40 * 2**depth):
        expected = simulate(n, depth)
        assert sizes.is_valid_input_size(n, depth) == (expected is not None), n
        if expected is not None:
            assert sizes.output_size(n, depth) == expected
            below, above = sizes.nearest_valid_sizes(n, depth)
            assert below == above == n
        else:
            below, above = sizes.nearest_valid_sizes(n, depth)
            assert simulate(above, depth) is not None and above > n
            assert all(simulate(k, depth) is None for k in range(n + 1, above))
            if below is not None:
                assert simulate(below, depth) is not None and below < n
                assert all(simulate(k, depth) is None for k in range(below + 1, n))


@pytest.mark.parametrize("depth,padding", [(2, "valid"), (4, "valid"), (3, "same")])
def test_output_size_matches_the_network(depth, padding):
    with torch.device("meta"):
        net = UNet(base_channels=2, depth=depth, padding=padding)
    lo = sizes.min_input_size(depth, padding)
    for n in (lo, lo + 2**depth, lo + 5 * 2**depth):
        out = net(torch.empty(1, 1, n, n + 2**depth, device="meta"))
        assert tuple(out.shape[2:]) == (sizes.output_size(n, depth, padding),
                                        sizes.output_size(n + 2**depth, depth, padding))


def test_same_padding_accepts_any_size_from_2_pow_depth():
    assert sizes.min_input_size(4, "same") == 16
    assert not sizes.is_valid_input_size(15, 4, "same")
    assert all(sizes.output_size(n, 4, "same") == n for n in range(16, 100))


def test_error_names_nearest_valid_sizes():
    with pytest.raises(ValueError, match=r"input height 580 is invalid.*572 or 588"):
        sizes.check_input_size(580, axis="height")
    with pytest.raises(ValueError, match=r"nearest valid: 188\b"):
        sizes.check_input_size(100)
    with pytest.raises(ValueError, match=r"needs size >= 16"):
        sizes.check_input_size(8, 4, "same")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_depth_or_output(bad):
    with pytest.raises(ValueError):
        sizes.margin(bad)
    with pytest.raises(ValueError):
        sizes.input_size_for_output(bad)
    with pytest.raises(ValueError):
        sizes.margin(4, "reflect")


def test_config_margin_consistent():
    cfg = UNetConfig()
    assert sizes.margin(cfg.depth, cfg.padding) * 2 == 184
