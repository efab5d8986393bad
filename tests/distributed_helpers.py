"""Oracles and model loaders for tests/test_distributed.py."""

from __future__ import annotations

import os
import signal

import numpy as np
import torch

import unet_fast
from unet_fast import sizes


def whole_pass(model: torch.nn.Module, image: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Logits of one float64 pass of the reference network over the whole image mirror-extended
    by numpy (valid padding): the ground truth of overlap-tile segmentation. ``image`` (C, H, W)."""
    cfg = model.config
    ref = unet_fast.reference.UNet(**cfg.to_dict()).double().eval()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    _, h, w = image.shape
    m = sizes.margin(cfg.depth, "valid")
    nh, nw = sizes.input_size_for_output(h, cfg.depth), sizes.input_size_for_output(w, cfg.depth)
    padded = np.pad(image.astype(np.float64), ((0, 0), (m, nh - h - m), (m, nw - w - m)), mode=mode)
    with torch.no_grad():
        out = ref(torch.from_numpy(padded)[None])[0].numpy()
    return out[:, :h, :w]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def killing_loader(path: str, marker: str, after: int):
    """A model loader whose model kills its own process (SIGKILL) on its ``after``-th forward
    pass, in the first process to get there (``marker`` is created exclusively, holding the pid)."""

    def load() -> torch.nn.Module:
        model = unet_fast.load(path)
        calls = [0]

        def hook(module, args):
            calls[0] += 1
            if calls[0] != after:
                return
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        model.register_forward_pre_hook(hook)
        return model

    return load


def failing_loader(path: str, after: int):
    """A model loader whose model raises on its ``after``-th forward pass in each process."""

    def load() -> torch.nn.Module:
        model = unet_fast.load(path)
        calls = [0]

        def hook(module, args):
            calls[0] += 1
            if calls[0] >= after:
                raise RuntimeError("simulated crash")

        model.register_forward_pre_hook(hook)
        return model

    return load
