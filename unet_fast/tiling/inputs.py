"""What ``segment`` accepts as an image, and how integer pixels become the network's input.

Integer images are scaled as the command line scales the files it reads
(:func:`unet_fast.image_io.normalise`): divided by the largest value of their type, so uint8 by
255 and uint16 by 65535, and likewise uint32 by 2**32 - 1, int16 by 32767 (negative values map
below 0); bool is 0/1; floating-point images are used as they are. The image itself is never
converted as a whole: each batch of tiles is gathered in the image's own type and scaled then,
so a large uint8 image costs one byte per pixel, not four.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ops.tiling import extract_tiles

# the native gather is a copy, so an unsigned type it does not know travels as the signed type
# of the same width and is viewed back afterwards
_AS_SIGNED = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def as_tensor(image: Any) -> torch.Tensor:
    """``image`` as a tensor: a tensor as it is, a numpy array without a copy where possible."""
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype.byteorder == ">" or not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))
        if image.dtype.kind not in "biuf":
            raise TypeError(f"image must hold real numbers, got a numpy array of {image.dtype}")
        if not image.flags.writeable:
            image = image.copy()  # torch.from_numpy warns on read-only arrays; we never write
        return torch.from_numpy(image)
    raise TypeError(f"image must be a torch.Tensor or numpy.ndarray (C, H, W) or (N, C, H, W), "
                    f"got {type(image).__name__}")


def integer_scale(dtype: torch.dtype) -> float | None:
    """The divisor of an integer (or bool) image type; None for floating point."""
    if dtype == torch.bool:
        return 1.0
    if dtype.is_floating_point or dtype.is_complex:
        return None
    return float(torch.iinfo(dtype).max)


def gather_tiles(image: torch.Tensor, origins: torch.Tensor, size: tuple[int, int], mode: str,
                 channels_last: bool, dtype: torch.dtype) -> torch.Tensor:
    """Tiles of ``image`` (any real type) at ``origins``, as network input of ``dtype``."""
    signed = _AS_SIGNED.get(image.dtype)
    src = image.view(signed) if signed is not None else image
    tiles = extract_tiles(src, origins, size, mode, channels_last)
    if signed is not None:
        tiles = tiles.view(image.dtype)
    scale = integer_scale(image.dtype)
    if scale is None:
        return tiles.to(dtype)
    # float64 keeps 32/64-bit integers exact up to the one rounding to the network's dtype;
    # uint8/uint16 in float32 round exactly as image_io.normalise does
    wide = torch.float32 if image.element_size() <= 2 else torch.float64
    return (tiles.to(wide) / scale).to(dtype)
