"""``segment``: overlap-tile segmentation of images of any size (DESIGN.md, Tiling)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import sizes
from ..config import UNetConfig
from ..launch_hints import full_batch
from ..ops.tiling import MIRROR_MODES
from .geometry import AxisPlan, Window, check_margin_window, plan_axis, window_candidates
from .inputs import as_tensor, gather_tiles
from .memory import default_memory_budget, estimate_tile_bytes
from .stripes import RowStripe
from .weights import gaussian_weight, tile_weight

OUTPUTS = ("logits", "probs", "probabilities", "labels")
BLENDS = ("gaussian", "constant", "margin")
# flips of test-time augmentation, as dims of a (B, C, H, W) tile batch; each is its own inverse
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))

__all__ = ["BLENDS", "OUTPUTS", "gaussian_weight", "receptive_radius", "segment"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def receptive_radius(depth: int) -> int:
    """Pixels per side that can influence an output pixel of a same-padding U-Net of ``depth``.

    The convolutions reach as far as the valid network's margin (``6 * 2**depth - 4``); each
    2x2 pooling can add up to one more pixel of its level, ``2**depth - 1`` in all.
    """
    return sizes.margin(depth, "valid") + 2**depth - 1


def _check_args(model: torch.nn.Module, image: torch.Tensor, output: str, mirror_mode: str,
                blend: str, overlap: float | int | None, progress: bool, tta: bool) -> UNetConfig:
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(config, UNetConfig):
        raise TypeError("model must be a unet_fast.UNet or unet_fast.reference.UNet, got "
                        f"{type(model).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    if image.shape[-3] != config.in_channels:
        raise ValueError(f"image has {image.shape[-3]} channel(s) but the model expects "
                         f"{config.in_channels} (in_channels); shape {tuple(image.shape)}")
    if image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"image must have H, W >= 1, got shape {tuple(image.shape)}")
    if image.is_complex():
        raise TypeError(f"image must be real-valued, got {image.dtype}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if mirror_mode not in MIRROR_MODES:
        raise ValueError(f"mirror_mode must be one of {MIRROR_MODES}, got {mirror_mode!r}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if overlap is not None:
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)):
            raise ValueError(f"overlap must be a number, got {overlap!r}")
        if blend == "margin" and (not isinstance(overlap, int) or overlap < 0):
            raise ValueError(f"with blend='margin', overlap is the context in pixels per side "
                             f"(an int >= 0), got {overlap!r}")
        if blend != "margin" and not 0.0 <= overlap < 1.0:
            raise ValueError(f"with blend={blend!r}, overlap is the fraction of a window shared "
                             f"with its neighbour, in [0, 1), got {overlap!r}")
    for name, flag in (("tta", tta), ("progress", progress)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    return config


@dataclass(frozen=True)
class _Scheme:
    name: str  # "valid", "margin" or "blend"
    context: int = 0
    overlap: float = 0.0

    def plan(self, n: int, window: int, depth: int) -> AxisPlan:
        return plan_axis(self.name, n, window, depth, self.context, self.overlap)


def _stripe_bytes(n: int, k: int, py: AxisPlan, w: int, blend: bool) -> int:
    # the band of float32 rows held while tiles are stitched: the rows of up to two rows of
    # windows (a batch may end inside one), plus the weight sums beside them
    rows = min(2 * max(win.keep for win in py.windows), sum(win.keep for win in py.windows))
    return n * (k + int(blend)) * rows * w * 4


def _choose_windows(scheme: _Scheme, config: UNetConfig, n: int, h: int, w: int,
                    tile_size: object, budget: int, dtype: torch.dtype,
                    per_tile: int) -> tuple[AxisPlan, AxisPlan]:
    """The given tile size, or the largest square request whose plan fits ``budget``."""
    d = config.depth
    if tile_size is not None:
        th, tw = _pair(tile_size, "tile_size")  # type: ignore[arg-type]
        if scheme.name != "valid":
            for side in (th, tw):
                if side < sizes.min_input_size(d, "same"):
                    raise ValueError(f"tile_size {side} is below the network's minimum input "
                                     f"{sizes.min_input_size(d, 'same')} (2**depth)")
        if scheme.name == "margin":
            for side in (th, tw):
                check_margin_window(side, d, scheme.context)
        return scheme.plan(h, th, d), scheme.plan(w, tw, d)
    smallest = None
    blend = scheme.name == "blend"
    for s in window_candidates(scheme.name, max(h, w), d, scheme.context):
        py, px = scheme.plan(h, s, d), scheme.plan(w, s, d)
        need = (estimate_tile_bytes(config, py.window, px.window, dtype, per_tile)
                + _stripe_bytes(n, config.num_classes, py, w, blend))
        if need <= budget:
            return py, px
        smallest = need
    raise ValueError(f"memory_budget of {budget} bytes is below the estimated {smallest} bytes "
                     f"of the smallest tile; raise memory_budget")


# one tile: image index, row window, column window
_Tile = tuple[int, Window, Window]


def _tile_order(n: int, py: AxisPlan, px: AxisPlan) -> list[_Tile]:
    """Tiles in row order (so finished rows can be handed on), each row's tiles grouped by
    shape (so they batch together)."""
    tiles = []
    for row in py.windows:
        cols = sorted(px.windows, key=lambda c: -c.size)  # stable: by start within a size
        tiles.extend((b, row, col) for col in cols for b in range(n))
    return tiles


def _batches(tiles: list[_Tile], size: int) -> Iterator[list[_Tile]]:
    """Consecutive runs of at most ``size`` tiles of one window shape."""
    batch: list[_Tile] = []
    for t in tiles:
        if batch and (len(batch) == size or (t[1].size, t[2].size)
                      != (batch[0][1].size, batch[0][2].size)):
            yield batch
            batch = []
        batch.append(t)
    if batch:
        yield batch


def _forward(model: torch.nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Model logits for a tile batch; with ``tta`` the mean over the flips, run as one batch."""
    if not tta:
        return model(x)
    flipped = torch.cat([x.flip(f) if f else x for f in TTA_FLIPS])
    ys = model(flipped).float().chunk(len(TTA_FLIPS))
    total = ys[0].clone()
    for f, y in zip(TTA_FLIPS[1:], ys[1:], strict=True):
        total += y.flip(f)
    return total / len(TTA_FLIPS)


def _check_number(name: str, value: object, least: int, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < least):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def segment(model: torch.nn.Module, image: torch.Tensor | Any, *,
            tile_size: int | tuple[int, int] | None = None, batch_size: int | None = None,
            memory_budget: int | None = None, output: str = "logits", tta: bool = False,
            mirror_mode: str = "reflect", blend: str = "gaussian",
            overlap: float | int | None = None, progress: bool = False) -> torch.Tensor:
    """Segment an image of any size (H, W >= 1) with the overlap-tile strategy.

    Tile windows are gathered straight from the image by the native extension (pixels outside it
    from its mirror extension), run through the model in batches under
    ``torch.inference_mode``, and stitched row band by row band into the result on the model's
    device.

    * Valid-padding models: output tiles cover the image exactly once and each window is the
      tile plus the network margin (92 px per side at depth 4), so the result equals one pass
      over the whole mirror-extended image. ``blend`` and ``overlap`` do not apply.
    * Same-padding models, ``blend="gaussian"`` (default) or ``"constant"``: an image that fits
      ``tile_size`` (by default: whose whole pass fits ``memory_budget``) is run in one pass at
      its own size, which is exactly ``model(image)``. Larger ones are cut into windows that
      overlap by the fraction ``overlap`` (default 0.25), start on the image's ``2**depth``
      pooling grid and never leave the image (the first starts at 0, the last ends at the
      image's edge, so border windows see the zero padding a whole pass sees there); their
      logits are averaged with the weight map, which stays at its peak towards the image's own
      borders. This approximates one whole pass (see the README for measured errors).
    * Same-padding models, ``blend="margin"``: windows discard a context of ``overlap`` pixels
      per side (default :func:`receptive_radius`, which makes the result equal one pass over the
      mirror-extended image); ``tile_size - 2 * overlap`` must be a multiple of ``2**depth``.

    Args:
        model: a :class:`unet_fast.UNet` or :class:`unet_fast.reference.UNet` (in eval mode for
            deterministic BatchNorm/dropout).
        image: ``(C, H, W)`` or ``(N, C, H, W)`` tensor or numpy array, any real type, any
            device (moved to the model's device). Floating point is used as it is; integers are
            divided by their type's largest value (uint8 by 255, uint16 by 65535, as the command
            line does), bool is 0/1. Tiles are cast to the model's dtype.
        tile_size: network input window (int or ``(h, w)``); valid sizes only for a
            valid-padding model; for ``blend="gaussian"``/``"constant"`` interior windows are
            rounded down to a multiple of ``2**depth``. Default: the largest window whose
            estimated memory (:func:`unet_fast.tiling.memory.estimate_tile_bytes`) fits
            ``memory_budget``.
        batch_size: tiles per forward pass (flipped copies of TTA included). Default: as many
            as fit ``memory_budget``.
        memory_budget: bytes for the tile batches' working memory and the band of float32 rows
            being stitched; the input and the result are not counted. Default: half the free GPU
            memory, or on the CPU a quarter of the available RAM up to 2 GiB.
        output: ``"logits"`` / ``"probs"`` (alias ``"probabilities"``; softmax over the
            classes, sigmoid for a one-class model): ``(N, K, H, W)`` float32; ``"labels"``:
            ``(N, H, W)`` int64 (argmax, or logit > 0 for a one-class model), computed band by
            band, so no full-size float32 logits are ever held.
        tta: average the logits over horizontal, vertical and both flips (batched together).
        mirror_mode: ``"reflect"`` or ``"symmetric"``, as in ``numpy.pad``.
        blend: for same-padding models, ``"gaussian"``, ``"constant"`` or ``"margin"``.
        overlap: see above.
        progress: show a tqdm progress bar over tile batches.

    Returns:
        The segmentation; without the batch dimension when ``image`` is 3-D.
    """
    image = as_tensor(image)
    config = _check_args(model, image, output, mirror_mode, blend, overlap, progress, tta)
    squeeze = image.dim() == 3
    if squeeze:
        image = image.unsqueeze(0)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    image = image.to(device)
    n, _, h, w = image.shape

    if config.padding == "valid":
        scheme = _Scheme("valid")
    elif blend == "margin":
        scheme = _Scheme("margin", receptive_radius(config.depth) if overlap is None
                         else int(overlap))
    else:
        scheme = _Scheme("blend", overlap=0.25 if overlap is None else float(overlap))

    copies = len(TTA_FLIPS) if tta else 1
    _check_number("batch_size", batch_size, copies,
                  f"an int >= {copies} (flipped copies included)")
    _check_number("memory_budget", memory_budget, 1, "a positive number of bytes")
    budget = memory_budget if memory_budget is not None else default_memory_budget(device)
    per_tile = copies if batch_size is None else batch_size
    py, px = _choose_windows(scheme, config, n, h, w, tile_size, budget, dtype, per_tile)
    tiles = _tile_order(n, py, px)
    if batch_size is None:
        one = estimate_tile_bytes(config, py.window, px.window, dtype, copies)
        room = budget - _stripe_bytes(n, config.num_classes, py, w, scheme.name == "blend")
        per_step = max(1, min(room // one, len(tiles)))
    else:
        per_step = max(1, batch_size // copies)

    k = config.num_classes
    result, finish = _result(output, n, k, h, w, device)
    if n == 0:
        return result.squeeze(0) if squeeze else result
    stripe = RowStripe((n, k, h, w), device, scheme.name == "blend", finish)
    channels_last = type(model).__module__.startswith("unet_fast.model")
    batches = list(_batches(tiles, per_step))
    done = 0
    # every batch, the smaller last one too, uses the full batch's tiles and compiled kernels
    with torch.inference_mode(), full_batch(per_step * copies):
        for chunk in tqdm(batches, disable=not progress, desc="segment", unit="batch"):
            _run_batch(model, image, chunk, scheme.name == "blend", blend, mirror_mode,
                       channels_last, dtype, tta, stripe)
            done += len(chunk)
            stripe.release(tiles[done][1].out if done < len(tiles) else h)
    return result.squeeze(0) if squeeze else result


def _run_batch(model: torch.nn.Module, image: torch.Tensor, chunk: list[_Tile], blended: bool,
               kind: str, mirror_mode: str, channels_last: bool, dtype: torch.dtype, tta: bool,
               stripe: RowStripe) -> None:
    device = image.device
    row, col = chunk[0][1], chunk[0][2]
    src = torch.tensor([(b, r.start, c.start) for b, r, c in chunk], dtype=torch.int64,
                       device=device)
    dst = torch.tensor([(b, r.out, c.out) for b, r, c in chunk], dtype=torch.int64,
                       device=device)
    x = gather_tiles(image, src, (row.size, col.size), mirror_mode, channels_last, dtype)
    y = _forward(model, x, tta)
    y = y[:, :, row.crop:row.crop + row.keep, col.crop:col.crop + col.keep].float()
    weight = None
    if blended:
        maps: dict[tuple[bool, ...], torch.Tensor] = {}
        per_tile = []
        for _, r, c in chunk:
            key = (r.at_start, r.at_end, c.at_start, c.at_end)
            if key not in maps:
                maps[key] = tile_weight(r, c, kind).to(device)
            per_tile.append(maps[key])
        weight = torch.stack(per_tile)[:, None]
    stripe.add(y, dst, weight)


def _result(output: str, n: int, k: int, h: int, w: int,
            device: torch.device) -> tuple[torch.Tensor, Any]:
    """The preallocated result and the function that fills a finished band of rows into it."""
    if output == "labels":
        labels = torch.empty((n, h, w), dtype=torch.int64, device=device)

        def finish_labels(lo: int, band: torch.Tensor) -> None:
            rows = labels[:, lo:lo + band.shape[2]]
            # torch.max(dim) picks the same index as argmax (the first maximum, NaN first) but
            # reduces over a small channel axis ~15x faster on the CPU
            rows.copy_(band[:, 0] > 0 if k == 1 else torch.max(band, 1).indices)

        return labels, finish_labels
    out = torch.empty((n, k, h, w), dtype=torch.float32, device=device)
    probs = output in ("probs", "probabilities")

    def finish_values(lo: int, band: torch.Tensor) -> None:
        rows = out[:, :, lo:lo + band.shape[2]]
        if not probs:
            rows.copy_(band)
        else:
            rows.copy_(band.sigmoid() if k == 1 else band.softmax(1))

    return out, finish_values
