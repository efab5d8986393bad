"""Synthetic touching cells: a data set the project makes itself, for tests and the demo.

Cells are random ellipses, many placed against a neighbour so that they overlap; overlapping
pixels go to the cell whose (normalised) centre is closest, and a thin background line (1-2 px)
separates touching cells in the labels, as in the paper's annotations. In the image that line is
only slightly darker than the cells, then everything is blurred and noised, so separating
touching cells is hard for a plain cross-entropy and is what the weight map is for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _separate(labels: np.ndarray) -> np.ndarray:
    """Set to background every cell pixel that has an 8-neighbour in a different cell."""
    h, w = labels.shape
    p = np.pad(labels, 1)
    border = np.zeros(labels.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            border |= (nb > 0) & (nb != labels)
    out = labels.copy()
    out[border & (labels > 0)] = 0
    return out


def touching_cells(size: int | tuple[int, int] = 128, n_cells: int = 12,
                   radius: tuple[float, float] = (7.0, 13.0), touch_prob: float = 0.7,
                   noise: float = 0.12, blur: float = 1.5,
                   seed: int | np.random.Generator | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its instance labels.

    Returns:
        ``(image, labels)``: float32 (H, W) image in about [0, 1] and int32 (H, W) labels
        (0 = background, 1..K = cells, consecutive).
    """
    from scipy.ndimage import gaussian_filter

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    best = np.full((h, w), np.inf)
    labels = np.zeros((h, w), np.int32)
    centres: list[tuple[float, float, float]] = []
    for k in range(1, n_cells + 1):
        a, b = rng.uniform(*radius, size=2)
        if centres and rng.random() < touch_prob:
            cy, cx, r = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = 0.85 * (r + (a + b) / 2)  # overlap a little, so the two cells touch
            cy, cx = cy + dist * np.sin(ang), cx + dist * np.cos(ang)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        centres.append((cy, cx, (a + b) / 2))
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        r2 = u * u + v * v
        take = (r2 < 1.0) & (r2 < best)
        best[take] = r2[take]
        labels[take] = k
    labels = _separate(labels)
    # Renumber consecutively (cells fully covered or cut off the image disappear).
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(n_cells + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    labels = lut[labels]

    intensity = np.concatenate([[0.2], rng.uniform(0.6, 0.9, size=len(ids))])
    image = intensity[labels]
    # The separating line looks almost like the cells around it: only a faint dip.
    cellish = gaussian_filter((labels > 0).astype(np.float64), 1.0) > 0.45
    gap = (labels == 0) & cellish
    image[gap] = 0.55
    image = image + 0.08 * gaussian_filter(rng.standard_normal((h, w)), 2.0)  # texture
    image = gaussian_filter(image, blur) + noise * rng.standard_normal((h, w))
    return image.astype(np.float32), labels


def make_dataset(n_images: int, size: int | tuple[int, int] = 128, seed: int = 0,
                 **kwargs: object) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` (image, labels) pairs from :func:`touching_cells`, reproducible by seed."""
    rng = np.random.default_rng(seed)
    return [touching_cells(size, seed=rng, **kwargs) for _ in range(n_images)]  # type: ignore[arg-type]


def write_dataset(folder: str | Path, n_images: int, size: int | tuple[int, int] = 128,
                  seed: int = 0, **kwargs: object) -> Path:
    """Write a data set as ``folder/images/NNN.npy`` and ``folder/masks/NNN.npy``."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(make_dataset(n_images, size, seed, **kwargs)):
        np.save(folder / "images" / f"{i:03d}.npy", img)
        np.save(folder / "masks" / f"{i:03d}.npy", lab)
    return folder
