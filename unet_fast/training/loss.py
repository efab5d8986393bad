"""The paper's energy: pixel-wise softmax cross-entropy weighted by the weight map."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height x width`` window of the last two axes of ``x`` (the crop that matches
    a valid-padding output to its input: the extra pixels are split evenly, top/left get the
    smaller half when the difference is odd)."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"cannot crop {h}x{w} to a larger {height}x{width}")
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           weight: torch.Tensor | None = None,
                           ignore_index: int = -100) -> torch.Tensor:
    """Mean over pixels of ``w(x) * -log softmax(logits)(x)[target(x)]``.

    Args:
        logits: (N, C, h, w) network output (for a valid-padding U-Net smaller than its input).
        target: (N, H, W) class indices with H >= h, W >= w; cropped centrally to (h, w).
        weight: optional (N, H, W) weight map, cropped the same way (None: all ones).
        ignore_index: target value whose pixels contribute nothing (and are not counted).

    The mean is over counted pixels, so the scale of the loss does not depend on the tile size.
    The softmax is taken in float32 even under autocast.
    """
    if logits.ndim != 4 or target.ndim != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"need logits (N, C, h, w) and target (N, H, W); got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    h, w = logits.shape[-2:]
    target = center_crop(target, h, w).long()
    ce = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=ignore_index)
    valid = target != ignore_index
    if weight is not None:
        if weight.shape != target.shape[:1] + weight.shape[1:] or weight.ndim != 3:
            raise ValueError(f"weight must be (N, H, W), got {tuple(weight.shape)}")
        ce = ce * center_crop(weight, h, w).float()
    return ce.sum() / valid.sum().clamp_min(1)
