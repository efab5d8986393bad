"""Which device a launch goes to."""

from __future__ import annotations

import contextlib

import torch


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device for the block (no-op off CUDA).

    Triton launches on the current device and its current stream, not on the device of the
    tensors it is given, so a model on ``cuda:1`` would otherwise run on device 0's stream.
    """
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
