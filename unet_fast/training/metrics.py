"""Segmentation scores: IoU and how many touching cells come out as separate objects."""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, target: np.ndarray, cls: int = 1) -> float:
    """Intersection over union of class ``cls`` (1.0 when both are empty)."""
    p, t = np.asarray(pred) == cls, np.asarray(target) == cls
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def mean_foreground_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes 1..num_classes-1 (background excluded)."""
    return float(np.mean([iou(pred, target, c) for c in range(1, num_classes)]))


def touching_pairs(labels: np.ndarray, max_gap: int = 2) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of cells at most ``max_gap`` background pixels apart
    (chessboard distance), i.e. cells that touch but for the thin separating line."""
    from scipy.ndimage import find_objects, grey_dilation

    labels = np.asarray(labels)
    pairs: set[tuple[int, int]] = set()
    size = 2 * max_gap + 1
    for i, sl in enumerate(find_objects(labels), start=1):
        if sl is None:
            continue
        ys = slice(max(sl[0].start - max_gap, 0), sl[0].stop + max_gap)
        xs = slice(max(sl[1].start - max_gap, 0), sl[1].stop + max_gap)
        win = labels[ys, xs]
        near = grey_dilation((win == i).astype(np.uint8), size=(size, size)) > 0
        for j in np.unique(win[near]):
            if j > i:
                pairs.add((i, int(j)))
    return pairs


def separated_fraction(pred_foreground: np.ndarray, labels: np.ndarray,
                       max_gap: int = 2) -> tuple[float, int]:
    """Fraction of touching cell pairs that the prediction separates, and the number of pairs.

    The predicted foreground is split into 4-connected objects. A cell is matched to the object
    covering most of its pixels (unmatched if less than half the cell is foreground). A pair is
    separated when both cells are matched and to different objects.
    """
    from scipy.ndimage import label as cc

    objects, _ = cc(np.asarray(pred_foreground) > 0)
    labels = np.asarray(labels)
    match: dict[int, int] = {}
    for i in np.unique(labels[labels > 0]):
        hits = objects[labels == i]
        fg = hits[hits > 0]
        if fg.size * 2 >= hits.size and fg.size:
            match[int(i)] = int(np.bincount(fg).argmax())
    pairs = touching_pairs(labels, max_gap)
    if not pairs:
        return 1.0, 0
    ok = sum(1 for i, j in pairs if i in match and j in match and match[i] != match[j])
    return ok / len(pairs), len(pairs)
