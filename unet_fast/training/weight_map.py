"""The paper's pixel-wise loss weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``w_c`` balances the class frequencies, ``d1``/``d2`` are the Euclidean distances from pixel
``x`` to the border of the nearest and the second-nearest cell. The border term makes the thin
background lines between touching cells expensive to get wrong, which is what teaches the network
to separate them.

Conventions (the paper does not spell them out):

* A distance is measured between pixel centres, to the nearest pixel *of* the cell, so the
  distance from a background pixel to "the border of a cell" is its exact Euclidean distance to
  the closest pixel carrying that cell's label.
* The border term is computed on background pixels only, as in the paper, where it is meant to
  weight the separating background. Foreground pixels get ``w_c`` alone (inside a cell
  ``d1 = 0`` would otherwise give every cell pixel next to another cell a large weight too).
* With fewer than two cells there is no second-nearest cell and the border term is zero.
* ``w_c`` has two classes, background (label 0) and foreground (any cell).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

ClassWeights = str | Mapping[int, float] | Sequence[float] | None


def _as_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) instance mask, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("labels must hold integers (0 = background, 1..K = cells)")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 = background), got minimum {arr.min()}")
    return arr


def class_weight_map(labels: np.ndarray | torch.Tensor,
                     class_weights: ClassWeights = "balanced") -> np.ndarray:
    """``w_c``: a float32 (H, W) map of per-class weights (class 0 = background, 1 = cells).

    ``"balanced"`` gives each present class ``N / (C * n_c)`` (``N`` pixels, ``C`` classes
    present, ``n_c`` pixels of class ``c``), so rare classes weigh more and the map averages 1.
    A mapping ``{0: w_bg, 1: w_fg}`` or a sequence ``[w_bg, w_fg]`` gives the weights directly;
    ``None`` gives all ones.
    """
    lab = _as_labels(labels)
    fg = lab > 0
    if class_weights is None:
        return np.ones(lab.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a mapping, a sequence or None, "
                             f"got {class_weights!r}")
        n_fg = int(fg.sum())
        n_bg = lab.size - n_fg
        present = (n_bg > 0) + (n_fg > 0)
        w_bg = lab.size / (present * n_bg) if n_bg else 0.0
        w_fg = lab.size / (present * n_fg) if n_fg else 0.0
    elif isinstance(class_weights, Mapping):
        try:
            w_bg, w_fg = float(class_weights[0]), float(class_weights[1])
        except KeyError as e:
            raise ValueError(f"class_weights mapping needs keys 0 (background) and 1 "
                             f"(foreground), missing {e}") from None
    else:
        seq = list(class_weights)
        if len(seq) != 2:
            raise ValueError(f"class_weights sequence must be [background, foreground], "
                             f"got {len(seq)} values")
        w_bg, w_fg = float(seq[0]), float(seq[1])
    return np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)


def nearest_two_distances(labels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean distances ``(d1, d2)`` from every pixel to its nearest and second-nearest
    cell (``inf`` where there is no such cell). Each cell's distance field is one exact EDT
    (``scipy.ndimage.distance_transform_edt``) over the whole mask: cost O(K H W) for K cells."""
    from scipy.ndimage import distance_transform_edt, find_objects

    # find_objects skips ids that do not occur, so sparse ids cost nothing.

    lab = _as_labels(labels)
    d1 = np.full(lab.shape, np.inf)
    d2 = np.full(lab.shape, np.inf)
    for idx, sl in enumerate(find_objects(lab), start=1):
        if sl is None:
            continue
        dist = distance_transform_edt(lab != idx)
        closer = dist < d1
        d2 = np.where(closer, d1, np.minimum(d2, dist))
        d1 = np.where(closer, dist, d1)
    return d1, d2


def weight_map(labels: np.ndarray | torch.Tensor, w0: float = 10.0, sigma: float = 5.0,
               class_weights: ClassWeights = "balanced") -> np.ndarray | torch.Tensor:
    """The U-Net loss weight map of an instance mask (0 = background, 1..K = cells).

    Args:
        labels: (H, W) integer instance labels, numpy or torch (ids need not be consecutive).
        w0: amplitude of the border term (paper: 10).
        sigma: width of the border term in pixels (paper: about 5).
        class_weights: ``w_c``, see :func:`class_weight_map`.

    Returns:
        float32 (H, W) weights, a torch tensor on the input's device for torch input, else numpy.
    """
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"need w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    lab = _as_labels(labels)
    w = class_weight_map(lab, class_weights).astype(np.float64)
    if w0 > 0:
        d1, d2 = nearest_two_distances(lab)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))  # exp(-inf) = 0: < 2 cells
        w += np.where(lab == 0, border, 0.0)
    w = w.astype(np.float32)
    if isinstance(labels, torch.Tensor):
        return torch.from_numpy(w).to(labels.device)
    return w
