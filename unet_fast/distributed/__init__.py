"""Large images and many images on a dask cluster (optional extra ``unet_fast[distributed]``).

* :func:`segment_large`: one large image (zarr / OME-Zarr, TIFF read lazily, numpy or dask
  array) segmented chunk by chunk across a dask.distributed cluster into a zarr store; exact for
  valid-padding networks, resumable, and a lost worker only costs its tasks.
* :func:`segment_images`: many image files as tasks across the cluster, written as
  ``unet-fast segment`` writes them.

This package imports dask, distributed and zarr only when these functions are called, so
``import unet_fast`` (and the CLI) never needs them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InputError", "RunStats", "segment_images", "segment_large"]


def __getattr__(name: str) -> Any:
    if name in ("segment_large", "RunStats"):
        from . import engine

        return getattr(engine, name)
    if name == "segment_images":
        from . import many

        return many.segment_images
    if name == "InputError":
        from .source import InputError

        return InputError
    raise AttributeError(f"module 'unet_fast.distributed' has no attribute {name!r}")
