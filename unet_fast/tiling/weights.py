"""Blending weights of same-padding windows.

A window's output is least trustworthy near its edges, where the network saw its zero padding
instead of the image. Edges that are the image's own borders are the exception: there a whole
pass sees the same zero padding, so the window is as right as it can be. The weight of a window is
therefore the outer product of two 1-D profiles (rows, columns) that decay towards each edge
inside the image (a Gaussian, nnU-Net's sigma = size / 8; or flat) and stay at their peak
towards an edge on the image's border.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .geometry import Window

KINDS = ("gaussian", "constant")
FLOOR = 1e-3  # keeps pixels seen only by window edges finitely weighted


def gaussian_weight(h: int, w: int, sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """``(h, w)`` float32 Gaussian importance map (nnU-Net's: sigma = size / 8, peak 1),
    clamped away from zero so pixels seen only by window borders still get a finite average."""
    g = _gaussian(h, sigma_scale)[:, None] * _gaussian(w, sigma_scale)[None, :]
    return (g / g.max()).clamp_min(FLOOR).float()


def _gaussian(n: int, sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    g = torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2)
    return g / g.max()


def axis_profile(window: Window, kind: str) -> torch.Tensor:
    """1-D float64 weights over the kept part of ``window`` (``window.keep`` values)."""
    if kind == "constant":
        return torch.ones(window.keep, dtype=torch.float64)
    g = _gaussian(window.size)
    centre = window.size // 2
    if window.at_start:
        g[:centre] = 1.0
    if window.at_end:
        g[centre:] = 1.0
    return g[window.crop:window.crop + window.keep]


def tile_weight(row: Window, col: Window, kind: str) -> torch.Tensor:
    """``(row.keep, col.keep)`` float32 weight map of the tile ``row x col``."""
    return _tile_weight(_shape(row), _shape(col), kind).clone()


def _shape(w: Window) -> tuple[int, int, int, bool, bool]:
    return (w.size, w.crop, w.keep, w.at_start, w.at_end)


@lru_cache(maxsize=64)
def _tile_weight(row: tuple, col: tuple, kind: str) -> torch.Tensor:
    # windows of one shape share their weights: computed once per shape, not once per tile
    r, c = Window(0, *row[:3], 0, *row[3:]), Window(0, *col[:3], 0, *col[3:])
    return (axis_profile(r, kind)[:, None] * axis_profile(c, kind)[None, :]).clamp_min(
        FLOOR).float()
