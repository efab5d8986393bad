"""The training loop: the paper's recipe around a :class:`unet_fast.reference.UNet`.

Per step: a random overlap-tile crop (valid input size, mirrored context), elastic deformation
and flips/rotations applied identically to image, labels and weight map, then the weighted
softmax cross-entropy on the network's (smaller) output window. Batch 1 with SGD momentum 0.99
as in the paper (or Adam), AMP on CUDA, validation IoU after every epoch, checkpoints after every
epoch (``last.pt`` and ``best.pt``), resumable.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import reference, sizes
from .checkpoint import read_checkpoint, save_checkpoint
from .data import TileSampler, default_tile, load_folder
from .elastic import augment
from .loss import weighted_cross_entropy
from .metrics import mean_foreground_iou

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainSettings:
    """Everything that defines a run besides the data and the model (stored in checkpoints)."""

    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 1
    optimizer: str = "sgd"
    lr: float | None = None          # None: 0.01 for SGD, 1e-3 for Adam
    momentum: float = 0.99
    weight_decay: float = 0.0
    tile: int | None = None          # input crop size; None: see data.default_tile
    elastic_sigma: float = 10.0      # 0 disables the deformation
    elastic_grid: int = 3
    flips: bool = True
    amp: bool = True                 # only takes effect on CUDA
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.optimizer == "sgd" else 1e-3)


def predict_logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits (K, H, W) for one normalised image (C, H, W) in a single forward pass over the
    mirror-extended image (the margin on every side, plus whatever reaches a valid size), so the
    output covers the image exactly as overlap-tile would. Memory grows with the image size."""
    cfg = model.config
    _, h, w = image.shape
    m = sizes.margin(cfg.depth, cfg.padding)
    th, tw = (sizes.input_size_for_output(n, cfg.depth, cfg.padding) if cfg.padding == "valid"
              else sizes.nearest_valid_sizes(n, cfg.depth, cfg.padding)[1] for n in (h, w))
    a = image.detach().cpu().numpy()
    padded = np.pad(a, [(0, 0), (m, th - h - m), (m, tw - w - m)], mode="reflect")
    dev = next(model.parameters()).device
    out = model(torch.from_numpy(padded)[None].to(dev))
    return out[0, :, :h, :w]


@torch.no_grad()
def predict_mask(model: nn.Module, image: torch.Tensor) -> np.ndarray:
    """The class mask (H, W) int64 of one normalised image, see :func:`predict_logits`."""
    return predict_logits(model, image).argmax(0).cpu().numpy()


def evaluate(model: nn.Module, samples: list) -> float:
    """Mean over images of the mean foreground IoU (pixels labelled IGNORE are not counted)."""
    was_training = model.training
    model.eval()
    scores = []
    for s in samples:
        pred = predict_mask(model, s.image)
        tgt = s.target.numpy()
        scores.append(mean_foreground_iou(np.where(tgt < 0, 0, pred), np.maximum(tgt, 0),
                                          model.config.num_classes))
    model.train(was_training)
    return float(np.mean(scores)) if scores else math.nan


class Trainer:
    """Trains ``model`` on ``train_samples`` (see :func:`unet_fast.training.data.load_folder`).

    Args:
        model: a :class:`unet_fast.reference.UNet` (or :class:`unet_fast.UNet`, which runs the
            reference ops under autograd).
        train_samples / val_samples: lists of :class:`~unet_fast.training.data.Sample`.
        settings: the run's :class:`TrainSettings`.
        checkpoint_dir: where ``last.pt`` and ``best.pt`` go (None: no checkpoints).
        device: where to train (default: CUDA if available, else CPU).
        progress: show a tqdm bar per epoch.
    """

    def __init__(self, model: reference.UNet, train_samples: list, val_samples: list | None = None,
                 settings: TrainSettings | None = None, checkpoint_dir: str | Path | None = None,
                 device: str | torch.device | None = None, progress: bool = True):
        if not train_samples:
            raise ValueError("no training samples")
        self.settings = settings or TrainSettings()
        st = self.settings
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).train()
        cfg = model.config
        c = train_samples[0].image.shape[0]
        if c != cfg.in_channels:
            raise ValueError(f"images have {c} channels but the model expects {cfg.in_channels}")
        self.tile = st.tile or default_tile(train_samples, cfg.depth, cfg.padding)
        sizes.check_input_size(self.tile, cfg.depth, cfg.padding, axis="tile")
        self.sampler = TileSampler(train_samples, self.tile, cfg.depth, cfg.padding)
        self.val_samples = val_samples or []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        params = [p for p in model.parameters() if p.requires_grad]
        if st.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=st.learning_rate, momentum=st.momentum, weight_decay=st.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=st.learning_rate,
                                              weight_decay=st.weight_decay)
        self.use_amp = st.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.generator = torch.Generator().manual_seed(st.seed)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_iou = -math.inf

    def step(self) -> float:
        """One optimisation step on a fresh augmented crop; returns the loss."""
        st = self.settings
        img, tgt, wt = self.sampler.sample(st.batch_size, self.generator)
        img, tgt, wt = (t.to(self.device) for t in (img, tgt, wt))
        img, tgt, wt = augment(img, tgt, wt, sigma=st.elastic_sigma, grid_size=st.elastic_grid,
                               flips=st.flips, generator=self.generator)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.use_amp
                    else contextlib.nullcontext())
        with autocast:
            logits = self.model(img)
        loss = weighted_cross_entropy(logits, tgt, wt)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def state(self) -> dict[str, Any]:
        """What resuming needs besides the model weights."""
        return {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
                # dropout draws from the global CPU RNG (CUDA's is not restored)
                "torch_rng": torch.get_rng_state(),
                "history": self.history, "best_iou": self.best_iou,
                "settings": asdict(self.settings), "tile": self.tile}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore model weights and trainer state from a checkpoint dict (see :meth:`state`)."""
        self.model.load_state_dict(ckpt["state_dict"])
        tr = ckpt.get("trainer")
        if tr is None:
            raise ValueError("checkpoint has no trainer state to resume from (weights only)")
        self.optimizer.load_state_dict(tr["optimizer"])
        self.scaler.load_state_dict(tr["scaler"])
        self.generator.set_state(tr["generator"])
        torch.set_rng_state(tr["torch_rng"])
        self.epoch, self.history, self.best_iou = tr["epoch"], list(tr["history"]), tr["best_iou"]

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by this trainer."""
        self.load_state(read_checkpoint(path))

    def fit(self, epochs: int | None = None) -> list[dict[str, float]]:
        """Train until ``epochs`` (default: the settings') epochs are done in total; returns the
        history, one dict per epoch: epoch, loss (mean), val_iou (NaN without validation)."""
        from tqdm.auto import tqdm

        total = epochs if epochs is not None else self.settings.epochs
        n = self.settings.steps_per_epoch
        while self.epoch < total:
            bar = tqdm(range(n), desc=f"epoch {self.epoch + 1}/{total}", leave=False,
                       disable=not self.progress)
            losses = []
            for _ in bar:
                losses.append(self.step())
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.close()
            self.epoch += 1
            val = evaluate(self.model, self.val_samples) if self.val_samples else math.nan
            rec = {"epoch": self.epoch, "loss": float(np.mean(losses)), "val_iou": val}
            self.history.append(rec)
            if self.progress:
                tqdm.write(f"epoch {self.epoch}/{total}: loss {rec['loss']:.4f}, "
                           f"val IoU {val:.4f}")
            if self.checkpoint_dir is not None:
                save_checkpoint(self.checkpoint_dir / "last.pt", self.model, self.state())
                if not math.isnan(val) and val > self.best_iou:
                    self.best_iou = val
                    save_checkpoint(self.checkpoint_dir / "best.pt", self.model, self.state())
            elif not math.isnan(val):
                self.best_iou = max(self.best_iou, val)
        return self.history


def split_samples(samples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train/validation split; at least one image each when there are two or more
    (a single image is used for both)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return samples, []
    if len(samples) == 1:
        return samples, samples
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(max(1, round(val_fraction * len(samples))), len(samples) - 1)
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]


def train(data: str | Path, checkpoint_dir: str | Path, *, val_data: str | Path | None = None,
          val_fraction: float = 0.2, mask_type: str = "instance", num_classes: int = 2,
          base_channels: int = 64, depth: int = 4, padding: str = "valid",
          norm: str | None = None, upsample: str = "transpose", dropout: float = 0.5,
          w0: float = 10.0, sigma: float = 5.0, class_weights: Any = "balanced",
          resume: str | Path | None = None, device: str | torch.device | None = None,
          progress: bool = True, **settings: Any) -> Trainer:
    """Train a U-Net on a folder of images and masks (see :mod:`unet_fast.training.data`).

    The model is a :class:`unet_fast.reference.UNet` with the given architecture (defaults: the
    paper's, with dropout 0.5 at the end of the contracting path); ``w0``/``sigma``/
    ``class_weights`` define the weight map (``w0=0`` and ``class_weights=None`` give plain
    cross-entropy); ``settings`` are :class:`TrainSettings` fields (epochs, optimizer, lr, ...).
    With ``resume`` the model config, settings and trainer state come from that checkpoint and
    training continues up to ``epochs`` in total. Returns the finished :class:`Trainer` (its
    ``history``, ``model`` and ``best_iou``).
    """
    ckpt = read_checkpoint(resume) if resume is not None else None
    model_kwargs = dict(base_channels=base_channels, depth=depth, padding=padding, norm=norm,
                        upsample=upsample, dropout=dropout, num_classes=num_classes)
    if ckpt is not None:
        if "trainer" not in ckpt:
            raise ValueError(f"{resume} holds weights only, no trainer state to resume from")
        saved = dict(ckpt["trainer"]["settings"])
        saved.update({k: v for k, v in settings.items() if k == "epochs"})
        settings = saved
        model_kwargs = {k: v for k, v in ckpt["config"].items() if k != "in_channels"}
    st = TrainSettings(**settings)
    samples = load_folder(data, mask_type=mask_type, num_classes=model_kwargs["num_classes"],
                          w0=w0, sigma=sigma, class_weights=class_weights)
    if val_data is not None:
        train_s = samples
        val_s = load_folder(val_data, mask_type=mask_type,
                            num_classes=model_kwargs["num_classes"], w0=w0, sigma=sigma,
                            class_weights=class_weights)
    else:
        train_s, val_s = split_samples(samples, val_fraction, st.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(st.seed)
        model = reference.UNet(in_channels=samples[0].image.shape[0], **model_kwargs)
    trainer = Trainer(model, train_s, val_s, st, checkpoint_dir, device, progress)
    if ckpt is not None:
        trainer.load_state(ckpt)
    trainer.fit()
    return trainer
