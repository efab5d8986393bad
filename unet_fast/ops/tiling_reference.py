"""Plain-torch references of the tiling ops in :mod:`unet_fast.ops.tiling` (for tests)."""

from __future__ import annotations

import torch


def mirror_index(i: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Source index in ``[0, n)`` of extended-axis index ``i``, folding as ``numpy.pad`` does."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1) if mode == "reflect" else 2 * n
    r = torch.remainder(i, period)
    back = period - r if mode == "reflect" else period - 1 - r
    return torch.where(r < n, r, back)


def extract_tiles_reference(image: torch.Tensor, origins: torch.Tensor,
                            tile_size: tuple[int, int], mode: str = "reflect") -> torch.Tensor:
    """``(T, C, th, tw)`` tiles by advanced indexing of ``image`` (NCHW contiguous result)."""
    th, tw = tile_size
    h, w = image.shape[-2:]
    tiles = []
    for b, y0, x0 in origins.tolist():
        ys = mirror_index(torch.arange(y0, y0 + th), h, mode)
        xs = mirror_index(torch.arange(x0, x0 + tw), w, mode)
        tiles.append(image[b][:, ys[:, None], xs[None, :]])
    return torch.stack(tiles) if tiles else image.new_empty((0, image.shape[1], th, tw))


def stitch_tiles_reference(out: torch.Tensor, tiles: torch.Tensor, origins: torch.Tensor,
                           weight: torch.Tensor | None = None) -> torch.Tensor:
    """In-place placement (or weighted accumulation) of tiles into ``out`` by slicing."""
    th, tw = tiles.shape[-2:]
    h, w = out.shape[-2:]
    for t, (b, y0, x0) in enumerate(origins.tolist()):
        ya, yb, xa, xb = max(y0, 0), min(y0 + th, h), max(x0, 0), min(x0 + tw, w)
        if ya >= yb or xa >= xb:
            continue
        tile = tiles[t][:, ya - y0:yb - y0, xa - x0:xb - x0]
        if weight is None:
            out[b, :, ya:yb, xa:xb] = tile
        else:
            out[b, :, ya:yb, xa:xb] += tile * weight[ya - y0:yb - y0, xa - x0:xb - x0]
    return out
