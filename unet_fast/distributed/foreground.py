"""The optional low-resolution foreground mask: which chunks hold anything worth segmenting."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np

from .plan import ChunkGrid
from .source import InputError, first_line, split_zarr_path


def load_mask(mask: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The mask as a 2-D bool array (an array, or an image / .npy / zarr path), and its identity
    for the run's record."""
    name = "foreground mask"
    if isinstance(mask, (str, os.PathLike)):
        path = os.fspath(mask)
        name = f"foreground mask {path!r}"
        is_zarr = ".zarr" in path.lower()
        if not os.path.exists(split_zarr_path(path)[0] if is_zarr else path):
            raise InputError(f"{name} does not exist")
        try:
            if is_zarr:
                import zarr

                root, inner = split_zarr_path(path)
                a = np.asarray(zarr.open_array(store=root, path=inner or None, mode="r")[...])
            else:
                from ..image_io import read_array

                a = read_array(path)
        except Exception as e:
            raise InputError(f"cannot read {name} ({first_line(e)})") from None
    else:
        a = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    a = np.squeeze(a) if a.ndim > 2 else a
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name} has shape {a.shape}; expected a 2-D (h, w) mask covering the image")
    a = a != 0
    digest = hashlib.sha256(np.packbits(a).tobytes()).hexdigest()
    return a, {"shape": list(a.shape), "sha256": digest}


def chunk_foreground(mask: np.ndarray, grid: ChunkGrid) -> np.ndarray:
    """``(rows, cols)`` flags: whether any mask pixel under the chunk (scaled to the image,
    rounded outwards) is set."""
    mh, mw = mask.shape
    flags = np.zeros(grid.shape, dtype=bool)
    for c in grid.chunks():
        y0 = math.floor(c.ys[0] * mh / grid.height)
        y1 = max(math.ceil(c.ys[1] * mh / grid.height), y0 + 1)
        x0 = math.floor(c.xs[0] * mw / grid.width)
        x1 = max(math.ceil(c.xs[1] * mw / grid.width), x0 + 1)
        flags[c.index] = bool(mask[y0:y1, x0:x1].any())
    return flags
