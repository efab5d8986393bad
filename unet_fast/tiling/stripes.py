"""A band of image rows that tiles are stitched into, handed on once no later tile touches it.

Tiles arrive in row order (their output origins never decrease), so every row above the next
tile's first row is final. Only the band between that row and the lowest row stitched so far is
held in float32 (with the blend weights' running sum beside it), which is what keeps
``segment(..., output="labels")`` from ever holding full-size float32 logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops.tiling import stitch_tiles


class RowStripe:
    """Rows ``[lo, lo + rows)`` of an ``(n, k, h, w)`` float32 result under construction.

    Args:
        shape: ``(n, k, h, w)`` of the whole result.
        device: where the band lives.
        blend: accumulate weighted tiles and divide by the summed weights (overlapping windows);
            otherwise tiles are placed as they are (each output pixel written once).
        finish: called as ``finish(first_row, rows)`` with each final ``(n, k, r, w)`` band.
    """

    def __init__(self, shape: tuple[int, int, int, int], device: torch.device, blend: bool,
                 finish: Callable[[int, torch.Tensor], None]):
        self.n, self.k, self.h, self.w = shape
        self.device, self.blend, self.finish = device, blend, finish
        self.lo = 0
        self.acc = self._zeros(self.k, 0)
        self.wsum = self._zeros(1, 0) if blend else None
        self._ones: dict[tuple[int, int], torch.Tensor] = {}

    def _zeros(self, k: int, rows: int) -> torch.Tensor:
        return torch.zeros((self.n, k, rows, self.w), dtype=torch.float32, device=self.device)

    def _grow(self, hi: int) -> None:
        rows = min(hi, self.h) - self.lo
        if rows <= self.acc.shape[2]:
            return
        old = self.acc
        self.acc = self._zeros(self.k, rows)
        self.acc[:, :, :old.shape[2]] = old
        if self.wsum is not None:
            old = self.wsum
            self.wsum = self._zeros(1, rows)
            self.wsum[:, :, :old.shape[2]] = old

    def add(self, tiles: torch.Tensor, origins: torch.Tensor,
            weight: torch.Tensor | None = None) -> None:
        """Stitch ``(T, k, th, tw)`` float32 ``tiles`` at image origins ``(T, 3)``
        ``(batch, y, x)`` (rows >= ``lo``); with ``blend``, ``weight`` ``(T, 1, th, tw)``
        gives each tile's weight map."""
        if len(tiles) == 0:
            return
        th, tw = tiles.shape[-2:]
        ys = origins[:, 1]
        if int(ys.min()) < self.lo:
            raise RuntimeError(f"tile at row {int(ys.min())} arrived after row {self.lo} was "
                               "finished (tiles must come in row order)")
        self._grow(int(ys.max()) + th)
        local = origins.clone()
        local[:, 1] -= self.lo
        if self.wsum is None:
            stitch_tiles(self.acc, tiles, local)
            return
        assert weight is not None
        ones = self._ones.get((th, tw))
        if ones is None:
            ones = self._ones[(th, tw)] = torch.ones((th, tw), device=self.device)
        stitch_tiles(self.acc, tiles * weight, local, ones)
        stitch_tiles(self.wsum, weight, local, ones)

    def release(self, upto: int) -> None:
        """Hand on rows ``[lo, upto)``: no tile still to come starts above ``upto``."""
        upto = min(upto, self.h)
        r = upto - self.lo
        if r <= 0:
            return
        self._grow(upto)
        band = self.acc[:, :, :r]
        if self.wsum is not None:
            band = band / self.wsum[:, :, :r]
            self.wsum = self.wsum[:, :, r:]
        self.finish(self.lo, band)
        self.acc = self.acc[:, :, r:]
        self.lo = upto
