"""Loads the native library ``unet_fast._C`` (ops under ``torch.ops.unet_fast``) on first use."""

from __future__ import annotations

import importlib

_loaded = False


def load_native() -> None:
    """Import ``unet_fast._C`` so its ``TORCH_LIBRARY`` registrations run; clear error if missing."""
    global _loaded
    if _loaded:
        return
    try:
        importlib.import_module("unet_fast._C")
    except ImportError as e:
        raise RuntimeError(
            "unet_fast's native library (unet_fast._C) is not built or does not load "
            f"({e}); reinstall from the source tree with `pip install --no-build-isolation -e .`"
        ) from e
    _loaded = True


def native_available() -> bool:
    """Whether ``unet_fast._C`` loads."""
    try:
        load_native()
    except RuntimeError:
        return False
    return True
