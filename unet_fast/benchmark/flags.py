"""PyTorch backend flags (TF32, cuDNN autotuning) set for a block and restored after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

FLAG_ATTRS = {
    "cudnn.allow_tf32": (torch.backends.cudnn, "allow_tf32"),
    "cudnn.benchmark": (torch.backends.cudnn, "benchmark"),
    "cuda.matmul.allow_tf32": (torch.backends.cuda.matmul, "allow_tf32"),
}


@contextlib.contextmanager
def backend_flags(flags: dict[str, bool]) -> Iterator[dict[str, bool]]:
    """Set ``flags`` (keys of :data:`FLAG_ATTRS`) for the block; yield every flag's state."""
    old = {k: getattr(*FLAG_ATTRS[k]) for k in FLAG_ATTRS}
    try:
        for k, v in flags.items():
            setattr(*FLAG_ATTRS[k], v)
        yield {k: bool(getattr(*FLAG_ATTRS[k])) for k in FLAG_ATTRS}
    finally:
        for k, v in old.items():
            setattr(*FLAG_ATTRS[k], v)
