"""Per-call hints from the Python layers to the kernel launchers, without importing Triton.

* :func:`full_batch`: a caller that runs one job as several batches (``segment()``: tiles in
  batches of ``per_step``, the last one smaller) names the full batch size, so every batch of
  the job uses the same batch-size bucket: the same tile choice and compiled kernels, never a
  new tuning or compile for the last batch mid-image.
* :func:`autotune`: ask for (or forbid) autotuning for the block, overriding
  ``UNET_FAST_AUTOTUNE`` (see :mod:`unet_fast.triton_kernels.tuning`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_FULL_BATCH: contextvars.ContextVar[int] = contextvars.ContextVar("unet_fast_full_batch",
                                                                  default=0)
_AUTOTUNE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("unet_fast_autotune",
                                                                       default=None)
MAX_BUCKET = 32


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def batch_bucket(n: int) -> int:
    """The batch size as tile choice and tuning see it: the next power of two of ``n`` (or of
    the enclosing :func:`full_batch`, if larger), at most 32."""
    return min(_next_pow2(max(int(n), _FULL_BATCH.get())), MAX_BUCKET)


@contextlib.contextmanager
def full_batch(n: int) -> Iterator[None]:
    """Within the block, every batch is bucketed as if it had ``n`` items (when it has fewer)."""
    token = _FULL_BATCH.set(int(n))
    try:
        yield
    finally:
        _FULL_BATCH.reset(token)


@contextlib.contextmanager
def autotune(enabled: bool | None) -> Iterator[None]:
    """Within the block, tune tile shapes (True), never tune (False), or follow the environment
    (None)."""
    token = _AUTOTUNE.set(enabled)
    try:
        yield
    finally:
        _AUTOTUNE.reset(token)


def autotune_override() -> bool | None:
    """The innermost :func:`autotune` setting, None outside one."""
    return _AUTOTUNE.get()
