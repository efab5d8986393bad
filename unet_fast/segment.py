# TEMPORARY: replaced by the tiling branch
"""Minimal stand-in for ``unet_fast.segment`` so the CLI can be tested before the tiling branch
lands: pads the whole image (reflect) to a valid size and runs the model once. No tiling."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .sizes import margin, nearest_valid_sizes


def _pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    mode = "reflect" if max(left, right) < x.shape[-1] and max(top, bottom) < x.shape[-2] else (
        "replicate")
    return F.pad(x, [left, right, top, bottom], mode=mode)


def segment(model: Any, image: torch.Tensor, *, tile_size: Any = None, batch_size: Any = None,
            memory_budget: Any = None, output: str = "logits", tta: bool = False,
            mirror_mode: str = "reflect", blend: str = "gaussian", overlap: Any = None,
            progress: bool = False) -> torch.Tensor:
    """Logits/probs ``(N, K, H, W)`` or labels ``(N, H, W)`` for an image of any size."""
    if output not in ("logits", "probs", "labels"):
        raise ValueError(f"output must be 'logits', 'probs' or 'labels', got {output!r}")
    squeeze = image.dim() == 3
    x = image.unsqueeze(0) if squeeze else image
    cfg = model.config
    h, w = x.shape[-2:]
    m = margin(cfg.depth, cfg.padding)
    ph = nearest_valid_sizes(h + 2 * m, cfg.depth, cfg.padding)[1] - h - 2 * m
    pw = nearest_valid_sizes(w + 2 * m, cfg.depth, cfg.padding)[1] - w - 2 * m
    p = next(model.parameters())
    x = x.to(device=p.device, dtype=p.dtype)
    x = _pad(x, m, m + pw, m, m + ph)
    with torch.no_grad():
        y = model(x)[..., :h, :w].float()
        if tta:
            y = (y + model(x.flip(-1)).flip(-1)[..., :h, :w].float()) / 2
    if output == "probs":
        y = torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
    elif output == "labels":
        y = (y[:, 0] > 0).long() if y.shape[1] == 1 else y.argmax(1)
    return y[0] if squeeze else y
