"""``segment``: overlap-tile segmentation of images of any size (DESIGN.md, Tiling)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from .. import sizes
from ..config import UNetConfig
from ..launch_hints import full_batch
from ..ops.tiling import MIRROR_MODES, extract_tiles, stitch_tiles
from .geometry import AxisPlan, plan_axis, window_candidates
from .memory import default_memory_budget, estimate_tile_bytes

OUTPUTS = ("logits", "probs", "probabilities", "labels")
BLENDS = ("gaussian", "constant", "margin")
# flips of test-time augmentation, as dims of a (B, C, H, W) tile batch; each is its own inverse
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


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


def gaussian_weight(h: int, w: int, sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """``(h, w)`` float32 Gaussian importance map (nnU-Net's: sigma = size / 8, peak 1).

    Clamped away from zero so pixels seen only by window borders still get a finite average.
    """
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2)

    g = axis(h)[:, None] * axis(w)[None, :]
    return (g / g.max()).clamp_min(1e-3).float()


def _check_args(model: torch.nn.Module, image: object, output: str, mirror_mode: str,
                blend: str, overlap: float | int | None, progress: bool, tta: bool) -> UNetConfig:
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(config, UNetConfig):
        raise TypeError("model must be a unet_fast.UNet or unet_fast.reference.UNet, got "
                        f"{type(model).__name__}")
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, H, W) or (N, C, H, W), got "
                        f"{type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    if image.shape[-3] != config.in_channels:
        raise ValueError(f"image has {image.shape[-3]} channel(s) but the model expects "
                         f"{config.in_channels} (in_channels); shape {tuple(image.shape)}")
    if image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"image must have H, W >= 1, got shape {tuple(image.shape)}")
    if image.dtype == torch.bool or image.is_complex():
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


def _choose_windows(scheme: str, config: UNetConfig, h: int, w: int, tile_size: object,
                    budget: int, dtype: torch.dtype, per_tile: int, context: int,
                    overlap: float) -> tuple[AxisPlan, AxisPlan]:
    """The given tile size, or the largest square request whose plan fits ``budget``."""
    d = config.depth
    if tile_size is not None:
        th, tw = _pair(tile_size, "tile_size")  # type: ignore[arg-type]
        if scheme != "valid":
            for side in (th, tw):
                if side < sizes.min_input_size(d, "same"):
                    raise ValueError(f"tile_size {side} is below the network's minimum input "
                                     f"{sizes.min_input_size(d, 'same')} (2**depth)")
        return (plan_axis(scheme, h, th, d, context, overlap),
                plan_axis(scheme, w, tw, d, context, overlap))
    smallest = None
    for s in window_candidates(scheme, max(h, w), d, context):
        py = plan_axis(scheme, h, s, d, context, overlap)
        px = plan_axis(scheme, w, s, d, context, overlap)
        need = estimate_tile_bytes(config, py.window, px.window, dtype, per_tile)
        if need <= budget:
            return py, px
        smallest = need
    raise ValueError(f"memory_budget of {budget} bytes is below the estimated {smallest} bytes "
                     f"of the smallest tile; raise memory_budget")


def _tile_list(n: int, py: AxisPlan, px: AxisPlan) -> list[tuple[int, int, int, int, int]]:
    return [(b, iy, ix, oy, ox)
            for b in range(n) for iy, oy in py.origins for ix, ox in px.origins]


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


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


def segment(model: torch.nn.Module, image: torch.Tensor, *,
            tile_size: int | tuple[int, int] | None = None, batch_size: int | None = None,
            memory_budget: int | None = None, output: str = "logits", tta: bool = False,
            mirror_mode: str = "reflect", blend: str = "gaussian",
            overlap: float | int | None = None, progress: bool = False) -> torch.Tensor:
    """Segment an image of any size (H, W >= 1) with the overlap-tile strategy.

    The image is extended by mirroring; tile windows are gathered straight from it by the native
    extension, run through the model in batches under ``torch.inference_mode``, and stitched into
    a preallocated float32 output on the model's device.

    * Valid-padding models: output tiles cover the image exactly once and each window is the
      tile plus the network margin (92 px per side at depth 4), so the result equals one pass
      over the whole mirror-extended image. ``blend`` and ``overlap`` do not apply.
    * Same-padding models: ``blend="gaussian"`` / ``"constant"`` run windows overlapping by the
      fraction ``overlap`` (default 0.25) and blend them with that weight map;
      ``blend="margin"`` discards a context of ``overlap`` pixels per side (default
      :func:`receptive_radius`, which makes it match one pass over the mirror-extended image).

    Args:
        model: a :class:`unet_fast.UNet` or :class:`unet_fast.reference.UNet` (in eval mode for
            deterministic BatchNorm/dropout).
        image: ``(C, H, W)`` or ``(N, C, H, W)``, any real dtype and device (moved to the
            model's device; tiles are cast to the model's dtype).
        tile_size: network input window size (int or ``(h, w)``); valid sizes only for a
            valid-padding model. Default: the largest window whose estimated memory
            (:func:`unet_fast.tiling.memory.estimate_tile_bytes`) fits ``memory_budget``.
        batch_size: tiles per forward pass (flipped copies of TTA included). Default: as many
            as fit ``memory_budget``.
        memory_budget: bytes for the tile batches' working memory, weights and the full-size
            result excluded. Default: half the free GPU memory, or on the CPU a quarter of the
            available RAM up to 2 GiB.
        output: ``"logits"`` / ``"probs"`` (alias ``"probabilities"``; softmax over the
            classes, sigmoid for a one-class model): ``(N, K, H, W)`` float32; ``"labels"``:
            ``(N, H, W)`` int64 (argmax, or logit > 0 for a one-class model).
        tta: average the logits over horizontal, vertical and both flips (batched together).
        mirror_mode: ``"reflect"`` or ``"symmetric"``, as in ``numpy.pad``.
        blend: for same-padding models, ``"gaussian"``, ``"constant"`` or ``"margin"``.
        overlap: see above.
        progress: show a tqdm progress bar over tile batches.

    Returns:
        The segmentation; without the batch dimension when ``image`` is 3-D.
    """
    config = _check_args(model, image, output, mirror_mode, blend, overlap, progress, tta)
    squeeze = image.dim() == 3
    if squeeze:
        image = image.unsqueeze(0)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    image = image.to(device)
    n, _, h, w = image.shape

    if config.padding == "valid":
        scheme, context, frac = "valid", 0, 0.0
    elif blend == "margin":
        scheme = "margin"
        context = receptive_radius(config.depth) if overlap is None else int(overlap)
        frac = 0.0
    else:
        scheme, context, frac = "blend", 0, 0.25 if overlap is None else float(overlap)

    copies = len(TTA_FLIPS) if tta else 1
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < copies):
        raise ValueError(f"batch_size must be an int >= {copies} (flipped copies included), "
                         f"got {batch_size!r}")
    if memory_budget is not None and (isinstance(memory_budget, bool)
                                      or not isinstance(memory_budget, int) or memory_budget < 1):
        raise ValueError(f"memory_budget must be a positive number of bytes, got "
                         f"{memory_budget!r}")
    budget = memory_budget if memory_budget is not None else default_memory_budget(device)
    per_tile = copies if batch_size is None else batch_size
    py, px = _choose_windows(scheme, config, h, w, tile_size, budget, dtype, per_tile, context,
                             frac)
    tiles = _tile_list(n, py, px)
    if batch_size is None:
        one = estimate_tile_bytes(config, py.window, px.window, dtype, copies)
        per_step = max(1, min(budget // one, len(tiles)))
    else:
        per_step = max(1, batch_size // copies)

    k = config.num_classes
    out = torch.zeros((n, k, h, w), dtype=torch.float32, device=device)
    if n == 0:
        return _finish(out, output, squeeze)
    weight = wsum = None
    if scheme == "blend":
        weight = (gaussian_weight(py.window, px.window) if blend == "gaussian"
                  else torch.ones(py.window, px.window)).to(device)
        wsum = torch.zeros((n, 1, h, w), dtype=torch.float32, device=device)
        ones = torch.ones_like(weight)

    channels_last = type(model).__module__.startswith("unet_fast.model")
    steps = math.ceil(len(tiles) / per_step)
    # every batch, the smaller last one too, uses the full batch's tiles and compiled kernels
    with torch.inference_mode(), full_batch(per_step * copies):
        for chunk in tqdm(_batches(tiles, per_step), total=steps, disable=not progress,
                          desc="segment", unit="batch"):
            src = torch.tensor([(b, iy, ix) for b, iy, ix, _, _ in chunk], dtype=torch.int64,
                               device=device)
            dst = torch.tensor([(b, oy, ox) for b, _, _, oy, ox in chunk], dtype=torch.int64,
                               device=device)
            x = extract_tiles(image, src, (py.window, px.window), mirror_mode, channels_last)
            y = _forward(model, x.to(dtype), tta)
            y = y[:, :, py.crop:py.crop + py.core, px.crop:px.crop + px.core].float()
            stitch_tiles(out, y, dst, weight)
            if wsum is not None:
                # the weight map itself, accumulated, is the normaliser
                stitch_tiles(wsum, weight.expand(len(chunk), 1, -1, -1), dst, ones)
    if wsum is not None:
        out.div_(wsum)
    return _finish(out, output, squeeze)


def _finish(out: torch.Tensor, output: str, squeeze: bool) -> torch.Tensor:
    # in place where possible: the full-size result is the largest tensor of the run
    if output in ("probs", "probabilities"):
        if out.shape[1] == 1:
            out.sigmoid_()
        else:
            out.sub_(out.amax(1, keepdim=True)).exp_()
            out.div_(out.sum(1, keepdim=True))
    elif output == "labels":
        out = (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)
    return out.squeeze(0) if squeeze else out
