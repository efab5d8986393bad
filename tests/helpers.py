"""Test helpers: model pairs with non-trivial weights, error metrics, non-blocking reads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import unet_fast
from unet_fast import reference


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (folding must matter)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0, 0.2, generator=generator)


def make_pair(**kw) -> tuple[reference.UNet, unet_fast.UNet]:
    """A float64 reference (eval) and a float32 fast model holding the same weights."""
    ref = reference.UNet(**kw)
    randomize_batchnorm_(ref)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    ref = ref.double().eval()
    fast = unet_fast.UNet(**kw).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against the reference ``b``."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def label_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).double().mean().item()


def error_reading_fifo(fifo: Path, read: Callable[[Path], object], what: str) -> BaseException:
    """The exception ``read(fifo)`` raises on a named pipe; fails the test if it blocks (opening
    a pipe waits for a writer forever) or returns."""
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read(fifo)
            result.append(None)
        except BaseException as e:  # reported to the test thread
            result.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the stuck open() so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"{what} a named pipe blocked")
    if result[0] is None:
        pytest.fail(f"{what} a named pipe returned instead of raising")
    return result[0]
