"""Training checkpoints: the project's format (:mod:`unet_fast.checkpoint`, so ``unet_fast.load``
reads them) plus a ``"trainer"`` entry with what resuming needs (optimizer, RNG states,
history). Everything is plain tensors and containers, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint as ckpt_format
from .. import reference
from .._atomic import atomic_path
from ..config import UNetConfig


def save_checkpoint(path: str | Path, model: nn.Module, trainer_state: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``model``'s config and weights (and the trainer state, for resuming) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"format": ckpt_format.FORMAT, "version": ckpt_format.VERSION,
                               "config": model.config.to_dict(), "state_dict": state}
    if trainer_state is not None:
        payload["trainer"] = trainer_state
    with atomic_path(path) as tmp:  # never leave a half-written checkpoint behind
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary (tensors on the CPU); raises
    :class:`unet_fast.CheckpointError` (a ValueError) for a missing, corrupt or foreign file."""
    obj = ckpt_format.read(path)
    if not ckpt_format.is_unet_fast_checkpoint(obj) or not isinstance(obj.get("config"), dict):
        raise ckpt_format.CheckpointError(f"checkpoint {str(path)!r} is not a unet_fast "
                                          "checkpoint")
    return obj


def load_model(path: str | Path, cls: type[reference.UNet] = reference.UNet) -> reference.UNet:
    """A model of class ``cls`` (the reference or :class:`unet_fast.UNet`) with the checkpoint's
    config and weights, in eval mode."""
    obj = read_checkpoint(path)
    if issubclass(cls, ckpt_format.UNet):
        return ckpt_format.from_checkpoint_dict(obj, path)
    model = cls(**UNetConfig(**obj["config"]).to_dict())
    model.load_state_dict(obj["state_dict"])
    return model.eval()
