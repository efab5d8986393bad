"""Where each chunk's input comes from: the chunk grid, the network's context around a chunk,
and the mirror-extended indices that fill the context past the image's border.

No dask or zarr here: this is plain arithmetic shared by the driver and the workers.

Why a chunk's result equals the whole image's (valid padding): :func:`unet_fast.segment` runs
the network on windows whose origins sit on one grid of step ``2**depth`` (the pooling grid)
anchored at the image's origin, over the image mirror-extended as ``numpy.pad`` does; every
output pixel then depends only on the input within :func:`context_radius` pixels of it. A chunk
task reads the region ``[grid_floor(start) - context, stop + context)`` of that same
mirror-extended image (so the region's origin is on the same grid) and runs ``segment()`` on it;
``segment()``'s own windows start on the region's grid, hence on the image's, and the chunk's
pixels are at least ``context`` pixels from the region's border, so they never see
``segment()``'s mirroring of the region itself. Only float reassociation differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import sizes

MIRROR_MODES = ("reflect", "symmetric")


def context_radius(depth: int) -> int:
    """Pixels per side that can influence one output pixel of a U-Net of ``depth``.

    The convolutions reach the valid network's margin (``6 * 2**depth - 4``); each of the
    ``depth`` 2x2 poolings can add up to one pixel of its level, ``2**depth - 1`` in all.
    """
    return sizes.margin(depth, "valid") + 2**depth - 1


def context(depth: int) -> int:
    """:func:`context_radius` rounded up to the pooling grid, so regions start on the grid."""
    step = 2**depth
    return -(-context_radius(depth) // step) * step


@dataclass(frozen=True)
class Chunk:
    """One output chunk: its place ``(row, col)`` in the chunk grid and its pixel ranges."""

    index: tuple[int, int]
    ys: tuple[int, int]
    xs: tuple[int, int]


@dataclass(frozen=True)
class ChunkGrid:
    """A ``height x width`` image cut into ``chunk`` sized pieces (the last ones smaller)."""

    height: int
    width: int
    chunk: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """Number of chunks along y and x."""
        return math.ceil(self.height / self.chunk[0]), math.ceil(self.width / self.chunk[1])

    def chunks(self) -> list[Chunk]:
        """Every chunk, row by row."""
        ny, nx = self.shape
        ch, cw = self.chunk
        return [Chunk((iy, ix), (iy * ch, min((iy + 1) * ch, self.height)),
                      (ix * cw, min((ix + 1) * cw, self.width)))
                for iy in range(ny) for ix in range(nx)]


def region_axis(start: int, stop: int, n: int, depth: int, padding: str) -> tuple[int, int]:
    """The input range ``[r0, r1)`` a chunk ``[start, stop)`` of an axis of length ``n`` needs.

    ``r0`` is on the pooling grid. For valid padding the range may leave the image (it is read
    from the mirror extension, as ``segment()`` does); for same padding it is clipped to the image,
    whose border the network sees as zero padding.
    """
    step, c = 2**depth, context(depth)
    r0, r1 = start - start % step - c, stop + c
    if padding == "same":
        r0, r1 = max(r0, 0), min(r1, n)
    return r0, r1


def mirror_indices(r0: int, r1: int, n: int, mode: str = "reflect") -> np.ndarray:
    """Indices into an axis of length ``n`` of positions ``r0 .. r1-1`` of its mirror extension,
    folding back and forth as ``numpy.pad(mode=...)`` does for pads of any width."""
    if mode not in MIRROR_MODES:
        raise ValueError(f"mirror_mode must be one of {MIRROR_MODES}, got {mode!r}")
    i = np.arange(r0, r1, dtype=np.int64)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * (n - 1)
        j = i % period
        return np.where(j < n, j, period - j)
    period = 2 * n
    j = i % period
    return np.where(j < n, j, period - 1 - j)
