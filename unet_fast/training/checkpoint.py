"""Training checkpoints: the project's format (:mod:`unet_fast.checkpoint`, so ``unet_fast.load``
reads them) plus a ``"trainer"`` entry with what resuming needs (optimizer, RNG states,
history). Everything is plain tensors and containers, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .. import checkpoint as ckpt_format
from .. import reference
from ..config import UNetConfig


def save_checkpoint(path: str | Path, model: nn.Module, trainer_state: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``model``'s config and weights (and the trainer state, for resuming) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # never leaves a half-written checkpoint behind (atomic write)
    ckpt_format.save(model, path, extra=None if trainer_state is None else {"trainer": trainer_state})
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary (tensors on the CPU); raises
    :class:`unet_fast.CheckpointError` (a ValueError) for a missing, corrupt or foreign file."""
    obj = ckpt_format.read(path)
    if not ckpt_format.is_unet_fast_checkpoint(obj) or not isinstance(obj.get("config"), dict):
        raise ckpt_format.CheckpointError(f"checkpoint {str(path)!r} is not a unet_fast "
                                          "checkpoint")
    # the config and weights get the checks unet_fast.load makes (sizes, dtypes, shapes)
    ckpt_format.from_checkpoint_dict(obj, path)
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
