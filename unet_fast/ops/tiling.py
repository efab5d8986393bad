"""Mirror padding, tile extraction and stitching: typed wrappers of the native tiling ops.

The kernels live in ``csrc/`` (``torch.ops.unet_fast.mirror_pad`` / ``extract_tiles`` /
``stitch_tiles``, CPU and CUDA); their plain-torch references are in
:mod:`unet_fast.ops.tiling_reference`. There is no Python fallback: a missing native library is a
clear error. Fake implementations are registered here so the ops trace under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch._prims_common import suggest_memory_format

from .._native import load_native

MIRROR_MODES = ("reflect", "symmetric")

_fakes_registered = False


def _ops():
    """``torch.ops.unet_fast`` with the native library loaded and the fakes registered."""
    global _fakes_registered
    load_native()
    if not _fakes_registered:
        _register_fakes()
        _fakes_registered = True
    return torch.ops.unet_fast


def _register_fakes() -> None:
    @torch.library.register_fake("unet_fast::mirror_pad")
    def _(image, pad, mode):
        torch._check(image.dim() == 4, lambda: "image must be 4-D (N, C, H, W)")
        n, c, h, w = image.shape
        # the same rule as the kernel's Tensor::suggest_memory_format()
        fmt = suggest_memory_format(image)
        return image.new_empty((n, c, h + pad[0] + pad[1], w + pad[2] + pad[3])).contiguous(
            memory_format=fmt)

    @torch.library.register_fake("unet_fast::extract_tiles")
    def _(image, origins, tile_h, tile_w, mode, channels_last):
        torch._check(image.dim() == 4, lambda: "image must be 4-D (N, C, H, W)")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return image.new_empty((origins.shape[0], image.shape[1], tile_h, tile_w)).contiguous(
            memory_format=fmt)

    @torch.library.register_fake("unet_fast::stitch_tiles")
    def _(out, tiles, origins, weight):
        return None


def _check_mode(mode: str) -> None:
    if mode not in MIRROR_MODES:
        raise ValueError(f"mode must be 'reflect' or 'symmetric', got {mode!r}")


def mirror_pad(image: torch.Tensor, pad: Sequence[int], mode: str = "reflect") -> torch.Tensor:
    """Mirror-pad the last two dims of ``image`` exactly as ``numpy.pad`` does.

    Unlike ``torch.nn.functional.pad``, pads may exceed the image size (indices fold back and
    forth) and 1-pixel images are allowed (their pixel is repeated).

    Args:
        image: ``(N, C, H, W)`` or ``(C, H, W)``, any dtype, any strides; a channels_last input
            gives a channels_last output.
        pad: ``(top, bottom, left, right)``, each >= 0.
        mode: ``"reflect"`` (edge not repeated) or ``"symmetric"`` (edge repeated).

    Returns:
        The padded image, ``(N, C, H + top + bottom, W + left + right)``.
    """
    _check_mode(mode)
    pad = [int(p) for p in pad]
    if len(pad) != 4 or min(pad) < 0:
        raise ValueError(f"pad must be 4 values (top, bottom, left, right) >= 0, got {pad}")
    if image.dim() == 3:
        return _ops().mirror_pad(image.unsqueeze(0), pad, mode).squeeze(0)
    return _ops().mirror_pad(image, pad, mode)


def tile_origins(batch: Sequence[int], ys: Sequence[int], xs: Sequence[int],
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The ``(T, 3)`` int64 origins tensor of tiles ``(batch[t], ys[t], xs[t])``."""
    if not len(batch) == len(ys) == len(xs):
        raise ValueError(
            f"batch, ys and xs must have the same length, got {len(batch)}, {len(ys)}, {len(xs)}")
    return torch.tensor([list(batch), list(ys), list(xs)], dtype=torch.int64).T.contiguous().to(
        device if device is not None else "cpu")


def extract_tiles(image: torch.Tensor, origins: torch.Tensor, tile_size: tuple[int, int],
                  mode: str = "reflect", channels_last: bool = False) -> torch.Tensor:
    """Gather a batch of tiles straight from the mirror extension of ``image`` (one pass).

    No padded copy of the image is made: each tile pixel reads its mirrored source pixel.

    Args:
        image: ``(N, C, H, W)``, any dtype and strides.
        origins: ``(T, 3)`` int64 rows ``(batch, y0, x0)`` on the image's device; ``(y0, x0)``
            is the tile's top-left corner in unpadded-image coordinates (negative or past the
            end reaches into the mirrored border). See :func:`tile_origins`.
        tile_size: ``(tile_h, tile_w)``.
        mode: ``"reflect"`` or ``"symmetric"``.
        channels_last: allocate the output channels_last (NHWC memory) instead of NCHW.

    Returns:
        ``(T, C, tile_h, tile_w)`` tiles in the image's dtype.
    """
    _check_mode(mode)
    th, tw = (int(s) for s in tile_size)
    return _ops().extract_tiles(image, origins, th, tw, mode, channels_last)


def stitch_tiles(out: torch.Tensor, tiles: torch.Tensor, origins: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Write ``tiles`` into ``out`` in place at ``origins`` (parts outside ``out`` are dropped).

    Without ``weight`` the tiles are placed exactly (``out[...] = tile``), which is what
    valid-padding models need (their output tiles cover the image once). With a ``(th, tw)``
    weight map they are accumulated (``out[...] += tile * weight``) for blending; divide by the
    stitched weights (stitch ``weight`` itself, expanded to ``(T, 1, th, tw)``) to normalise.
    Tiles are applied in order, so the result is deterministic even where they overlap.

    Args:
        out: ``(N, K, H, W)`` floating-point output, modified in place.
        tiles: ``(T, K, th, tw)`` of ``out``'s dtype, any strides (a cropped view is fine).
        origins: ``(T, 3)`` int64 rows ``(batch, y0, x0)``: where each tile's top-left goes.
        weight: optional ``(th, tw)`` weight map of ``out``'s dtype.

    Returns:
        ``out``.
    """
    _ops().stitch_tiles(out, tiles, origins, weight)
    return out
