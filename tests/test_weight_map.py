"""weight_map against a brute-force evaluation of its definition (paper eq. 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_fast.training.weight_map import class_weight_map, nearest_two_distances, weight_map


def brute_force(labels: np.ndarray, w0: float, sigma: float, wc: dict[int, float]) -> np.ndarray:
    """Every background pixel against every pixel of every cell, no EDT."""
    h, w = labels.shape
    cells = [np.argwhere(labels == k) for k in np.unique(labels) if k > 0]
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            out[y, x] = wc[int(labels[y, x] > 0)]
            if labels[y, x] == 0 and len(cells) >= 2:
                d = sorted(math.sqrt(((pts - (y, x)) ** 2).sum(1).min()) for pts in cells)
                out[y, x] += w0 * math.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return out


def random_instances(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    lab = np.zeros((h, w), np.int64)
    for i in range(1, k + 1):
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        lab[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = i * 3  # sparse ids
    return lab


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    lab = random_instances(rng, 13, 17, 4)
    n_fg = (lab > 0).sum()
    wc = {0: lab.size / (2 * (lab.size - n_fg)), 1: lab.size / (2 * n_fg)}
    got = weight_map(lab, w0=10.0, sigma=3.0)
    assert got.dtype == np.float32 and got.shape == lab.shape
    np.testing.assert_allclose(got, brute_force(lab, 10.0, 3.0, wc), rtol=1e-5, atol=1e-6)


def test_known_value_between_two_cells():
    lab = np.zeros((5, 9), np.int64)
    lab[:, :3] = 1
    lab[:, 6:] = 2
    w = weight_map(lab, w0=10.0, sigma=5.0, class_weights=None)
    # column 3: 1 px from cell 1, 3 px from cell 2
    assert w[2, 3] == pytest.approx(1 + 10 * math.exp(-(16) / 50), rel=1e-6)
    assert w[2, 4] == pytest.approx(1 + 10 * math.exp(-(16) / 50), rel=1e-6)
    assert np.all(w[:, :3] == 1) and np.all(w[:, 6:] == 1)  # no border term on cells


def test_distances_exact_euclidean():
    lab = np.zeros((10, 10), np.int64)
    lab[0, 0] = 1
    lab[9, 9] = 2
    d1, d2 = nearest_two_distances(lab)
    assert d1[3, 4] == pytest.approx(5.0) and d2[3, 4] == pytest.approx(math.hypot(6, 5))


def test_single_cell_has_no_border_term():
    lab = np.zeros((8, 8), np.int64)
    lab[2:5, 2:5] = 7
    np.testing.assert_array_equal(weight_map(lab, class_weights=None), np.ones((8, 8)))


def test_class_weights_forms():
    lab = np.zeros((4, 4), np.int64)
    lab[0, :] = 1  # 4 fg, 12 bg
    bal = class_weight_map(lab)
    assert bal[0, 0] == pytest.approx(16 / 8) and bal[1, 0] == pytest.approx(16 / 24)
    assert bal.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(class_weight_map(lab, {0: 0.5, 1: 3}),
                                  np.where(lab > 0, 3.0, 0.5))
    np.testing.assert_array_equal(class_weight_map(lab, [0.5, 3]), np.where(lab > 0, 3.0, 0.5))
    np.testing.assert_array_equal(class_weight_map(lab, None), np.ones((4, 4)))
    with pytest.raises(ValueError, match="class_weights"):
        class_weight_map(lab, "inverse")
    with pytest.raises(ValueError, match="background, foreground"):
        class_weight_map(lab, [1.0, 2.0, 3.0])


def test_torch_input_gives_torch_output():
    lab = random_instances(np.random.default_rng(9), 12, 12, 3)
    got = weight_map(torch.from_numpy(lab))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), weight_map(lab))


@pytest.mark.parametrize("bad, msg", [(np.zeros((2, 2, 2), int), "2-D"),
                                      (-np.ones((3, 3), int), ">= 0"),
                                      (np.full((3, 3), 0.5), "integers")])
def test_bad_labels(bad, msg):
    with pytest.raises(ValueError, match=msg):
        weight_map(bad)
