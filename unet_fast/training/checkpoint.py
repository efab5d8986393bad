"""Minimal training checkpoints: ``{"config": model.config.to_dict(), "state_dict": ...}`` plus
an optional ``"trainer"`` entry for resuming, saved with ``torch.save`` and read back with
``weights_only=True``. Kept apart so the project's general ``unet_fast.save``/``load`` can take
its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import reference
from ..config import UNetConfig


def save_checkpoint(path: str | Path, model: nn.Module, trainer_state: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``model``'s config and weights (and the trainer state, for resuming) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, Any] = {"config": model.config.to_dict(), "state_dict": model.state_dict()}
    if trainer_state is not None:
        ckpt["trainer"] = trainer_state
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind an interrupted run
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary (tensors on the CPU), checked for its two model entries."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a unet_fast checkpoint (needs 'config' and 'state_dict')")
    return ckpt


def load_model(path: str | Path, cls: type[reference.UNet] = reference.UNet) -> reference.UNet:
    """A model of class ``cls`` (the reference or :class:`unet_fast.UNet`) with the checkpoint's
    config and weights, in eval mode."""
    ckpt = read_checkpoint(path)
    model = cls(**UNetConfig(**ckpt["config"]).to_dict())
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
