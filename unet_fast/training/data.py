"""Training data: reading an image/mask folder and cutting overlap-tile training crops.

Folder layout: ``DIR/images/NAME.EXT`` and ``DIR/masks/NAME.EXT`` (or ``NAME_mask.EXT``), with
EXT one of ``.npy`` (numpy, always available), ``.png``/``.jpg``/``.bmp`` (Pillow) and
``.tif``/``.tiff`` (tifffile). Masks are instance masks (0 = background, 1..K = cells; the
network learns background/cell) or class masks (0..C-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import sizes
from ..image_io import IMAGE_SUFFIXES, normalise, read_array, read_chw, to_chw
from .weight_map import ClassWeights, weight_map

IMAGE_EXTS = IMAGE_SUFFIXES
MASK_TYPES = ("instance", "class")
IGNORE = -100  # target value of pixels that carry no label (the loss skips them)


def normalize_image(arr: np.ndarray, channels_last: bool | None = None) -> np.ndarray:
    """float32 ``(C, H, W)`` pixels normalised exactly as ``unet-fast segment`` normalises them
    (:func:`unet_fast.image_io.normalise`), so a trained model sees the same input scale at
    inference. ``channels_last``: the layout of a 3-D ``arr`` (None: guessed as for ``.npy``)."""
    return normalise(to_chw(np.asarray(arr), channels_last=channels_last))


@dataclass
class Sample:
    """One training image with its targets, all at the image's size."""

    name: str
    image: torch.Tensor    # (C, H, W) float32, normalised
    target: torch.Tensor   # (H, W) int64 class indices
    weights: torch.Tensor  # (H, W) float32 loss weights


def make_sample(name: str, image: np.ndarray, mask: np.ndarray, *, mask_type: str = "instance",
                num_classes: int = 2, w0: float = 10.0, sigma: float = 5.0,
                class_weights: ClassWeights = "balanced",
                channels_last: bool | None = None) -> Sample:
    """Normalise the image, turn the mask into class targets and compute its weight map.

    ``channels_last`` is the layout of a 3-D ``image``: True ``(H, W, C)``, False ``(C, H, W)``,
    None guessed as for ``.npy`` files (:mod:`unet_fast.image_io`).

    For class masks the border term needs instances: the 4-connected components of the
    foreground stand in for them (cells that touch in the mask then count as one).
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    img = normalize_image(image, channels_last)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., 0]  # a grey mask saved as RGB(A)
    if mask.shape != img.shape[1:]:
        raise ValueError(f"{name}: mask shape {mask.shape} differs from image size {img.shape[1:]}")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        if not np.all(mask == np.round(mask)):
            raise ValueError(f"{name}: mask must hold integer labels")
    mask = mask.astype(np.int64)
    if mask.min() < 0:
        raise ValueError(f"{name}: mask labels must be >= 0, got {mask.min()}")
    if mask_type == "instance":
        if num_classes != 2:
            raise ValueError("instance masks train a 2-class (background/cell) network; "
                             f"got num_classes={num_classes}, use mask_type='class'")
        target, instances = (mask > 0).astype(np.int64), mask
    else:
        if mask.max() >= num_classes:
            raise ValueError(f"{name}: class mask has label {mask.max()} but num_classes is "
                             f"{num_classes} (labels must be 0..{num_classes - 1})")
        from scipy.ndimage import label as cc

        target, instances = mask, cc(mask > 0)[0]
    weights = weight_map(instances, w0=w0, sigma=sigma, class_weights=class_weights)
    return Sample(name, torch.from_numpy(img), torch.from_numpy(target),
                  torch.from_numpy(np.asarray(weights)))


def find_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """``(name, image_path, mask_path)`` for every image in ``folder/images`` with a mask."""
    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise ValueError(f"{folder} must contain the subfolders images/ and masks/")
    masks = {}
    for p in sorted(mask_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS:
            stem = p.stem[:-5] if p.stem.endswith("_mask") else p.stem
            masks.setdefault(stem, p)
    pairs = []
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem not in masks:
            raise ValueError(f"no mask for image {p.name} in {mask_dir} (expected {p.stem}.EXT "
                             f"or {p.stem}_mask.EXT)")
        pairs.append((p.stem, p, masks[p.stem]))
    if not pairs:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    return pairs


def load_folder(folder: str | Path, **kwargs: object) -> list[Sample]:
    """All samples of a folder; ``kwargs`` go to :func:`make_sample`."""
    return [make_sample(name, read_chw(ip), read_array(mp), channels_last=False,
                        **kwargs)  # type: ignore[arg-type]
            for name, ip, mp in find_pairs(folder)]


def default_tile(samples: list[Sample], depth: int, padding: str, cap: int = 572) -> int:
    """The training input size: the largest valid size whose output fits in the smallest image
    (so crops carry real labels only), at most ``cap`` (the paper's 572 tile), and at least the
    network's minimum input size."""
    smallest = min(min(s.image.shape[1:]) for s in samples)
    m = sizes.margin(depth, padding)
    below, above = sizes.nearest_valid_sizes(min(smallest + 2 * m, cap), depth, padding)
    return below if below is not None else above


def _reflect(t: torch.Tensor, before: int, after_h: int, after_w: int) -> torch.Tensor:
    # numpy's "reflect" folds back and forth, so context wider than the image still works.
    a = t.numpy()
    pad = [(0, 0)] * (a.ndim - 2) + [(before, before + after_h), (before, before + after_w)]
    return torch.from_numpy(np.pad(a, pad, mode="reflect"))


class TileSampler:
    """Random overlap-tile training crops: an input tile of a valid size read from the
    mirror-extended image, and targets/weights at the same size whose centre (the network's
    output window) lies inside the image. The loss crops targets to the output size, so a
    deformation may pull in context pixels from the margin (mirrored, consistently for image and
    labels) but the scored window starts inside the real image."""

    def __init__(self, samples: list[Sample], tile: int, depth: int, padding: str):
        self.tile = tile
        self.margin = sizes.margin(depth, padding)
        self.out = sizes.output_size(tile, depth, padding)
        self.padded = []
        for s in samples:
            h, w = s.image.shape[1:]
            eh, ew = max(self.out - h, 0), max(self.out - w, 0)
            target = _reflect(s.target, self.margin, eh, ew)
            if eh or ew:  # an image smaller than the output window: label what is not there
                target[..., self.margin + h :, :] = IGNORE
                target[..., :, self.margin + w :] = IGNORE
            self.padded.append((_reflect(s.image, self.margin, eh, ew), target,
                                _reflect(s.weights, self.margin, eh, ew), h + eh, w + ew))

    def sample(self, batch_size: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch ``(images (N, C, T, T), targets (N, T, T), weights (N, T, T))``."""
        imgs, tgts, wts = [], [], []
        for _ in range(batch_size):
            i = int(torch.randint(len(self.padded), (1,), generator=generator))
            img, tgt, wt, h, w = self.padded[i]
            top = int(torch.randint(h - self.out + 1, (1,), generator=generator))
            left = int(torch.randint(w - self.out + 1, (1,), generator=generator))
            win = (slice(top, top + self.tile), slice(left, left + self.tile))
            imgs.append(img[(slice(None), *win)])
            tgts.append(tgt[win])
            wts.append(wt[win])
        return torch.stack(imgs), torch.stack(tgts), torch.stack(wts)
