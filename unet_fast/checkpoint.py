"""Checkpoints: one file holding a model's config and weights, so the file alone rebuilds it.

The file is a ``torch.save`` of a plain dict (only str/int/float/None/list/dict and tensors)::

    {"format": "unet_fast", "version": 1, "config": UNetConfig.to_dict(), "state_dict": {...}}

plus ``"mask_values"`` (a list: the pixel value of each class, ints or colours) when the model
carries them (milesial imports do), and is read back with ``torch.load(weights_only=True)``: no
arbitrary object is ever unpickled.
Writes are atomic (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._atomic import atomic_path
from .config import UNetConfig
from .model import UNet

FORMAT = "unet_fast"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be turned into a model; the message is one line."""


def save(model: torch.nn.Module, path: str | os.PathLike[str], *,
         extra: dict[str, Any] | None = None) -> None:
    """Write ``model``'s config and weights (``unet_fast.UNet`` or ``reference.UNet``) to ``path``.

    Tensors are saved as they are (dtype kept) but moved to the CPU, so the file loads anywhere.
    A ``model.mask_values`` attribute (see :func:`unet_fast.from_milesial`) is stored too and
    restored by :func:`load`. ``extra`` adds more top-level entries (plain containers and tensors
    only, e.g. the trainer's resume state); :func:`load` ignores them.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, UNetConfig):
        raise TypeError("save() expects a unet_fast.UNet or unet_fast.reference.UNet, "
                        f"got {type(model).__name__}")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": config.to_dict(),
               "state_dict": state}
    mask_values = getattr(model, "mask_values", None)
    if mask_values is not None:
        payload["mask_values"] = _plain_mask_values(mask_values)
    clash = set(extra or ()) & set(payload)
    if clash:
        raise ValueError(f"extra entries may not replace {sorted(clash)}")
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """The raw object stored in a torch checkpoint file, loaded with ``weights_only=True``.

    Raises :class:`CheckpointError` naming ``path`` if it is missing, unreadable or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder, expected a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: permission denied") from e
    except (FileNotFoundError, IsADirectoryError) as e:  # it changed since the checks above
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror or e}") from e
    except OSError as e:
        # torch's zip reader raises OSError(EINVAL, "Invalid argument") for a file cut short
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated "
                              f"({e.strerror or _first_line(e)})") from e
    except pickle.UnpicklingError as e:
        refused = _refused_global(str(e))
        if refused is not None:
            raise CheckpointError(
                f"refusing to unpickle {refused} from checkpoint {str(path)!r}: not a "
                "unet_fast/PyTorch weights file; only tensors and plain containers are loaded"
            ) from e
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch weights "
                              f"file ({_unpickler_detail(e)})") from e
    except Exception as e:
        # torch.load reports truncation and garbage with many exception types (RuntimeError,
        # EOFError, BadZipFile, ...) and multi-line messages; the first line is the useful part
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a PyTorch weights file ({_first_line(e)})"
        ) from e


def _refused_global(text: str) -> str | None:
    """The Python object torch's safe unpickler refused to import (``posix.system``, a class...),
    or None if ``text`` is about something else. Torch words this differently across versions
    ("Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y whose module x is blocked")."""
    m = re.search(r"\bGLOBAL\s+([A-Za-z_][\w.]*)", text)
    if m:
        return m.group(1)
    low = text.lower()
    if "unsupported global" in low or "is blocked" in low:
        return "a Python object"
    return None


# torch's paragraph around the real reason: it advises weights_only=False, which would run
# whatever the file contains, so none of it is ever shown
_TORCH_ADVICE = ("weights only load failed", "weights_only", "check the documentation",
                 "please file an issue", "arbitrary code execution")


def _plain_mask_values(values: Any) -> list[Any]:
    """``values`` (a list, tuple, array or tensor of numbers or colours) as a list of Python
    numbers or lists of numbers, which ``weights_only`` loading accepts."""
    try:
        plain = values.tolist() if hasattr(values, "tolist") else [
            v.tolist() if hasattr(v, "tolist") else v for v in values]
    except TypeError:
        plain = None
    if isinstance(plain, list):
        plain = [list(v) if isinstance(v, tuple) else v for v in plain]
        if all(_is_value(v) for v in plain):
            return plain
    raise TypeError(f"model.mask_values must be a list of numbers or colours, got {values!r:.80}")


def _is_value(v: Any) -> bool:
    """A class's pixel value: a number, or a colour (a list of numbers)."""
    if isinstance(v, list):
        return all(_is_value(c) and not isinstance(c, list) for c in v)
    return isinstance(v, (int, float))  # bools included: milesial keeps those of 1-bit masks


def _unpickler_detail(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return (rest or (lines[i + 1] if i + 1 < len(lines) else ""))[:200]
    for line in lines:
        if not any(a in line.lower() for a in _TORCH_ADVICE):
            return line[:200]
    return "it cannot be unpickled"


def _first_line(e: BaseException) -> str:
    """The first sentence of ``e``'s message (torch's run to several), never cut mid-word."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    first = re.split(r"(?<=[^.\s]{2})\.\s", text.splitlines()[0], maxsplit=1)[0].rstrip(".")
    return first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " ..."


def is_unet_fast_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (from :func:`read`) is a dict written by :func:`save`."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def from_checkpoint_dict(obj: Any, path: str | os.PathLike[str] = "<memory>") -> UNet:
    """Build the model stored in ``obj`` (the dict :func:`save` writes), in eval mode."""
    where = f"checkpoint {str(path)!r}"
    if not is_unet_fast_checkpoint(obj):
        raise CheckpointError(f"{where} is not a unet_fast checkpoint{_describe_foreign(obj)}")
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where} has an invalid version field {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{where} has format version {version}, newer than this unet_fast reads ({VERSION}); "
            "upgrade unet_fast"
        )
    cfg, state = obj.get("config"), obj.get("state_dict")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{where} lacks its 'config' or 'state_dict' entry")
    try:
        config = UNetConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has an invalid config: {e}") from e
    mask_values = obj.get("mask_values")  # absent from files of older unet_fast versions
    if mask_values is not None and not (isinstance(mask_values, list)
                                        and all(_is_value(v) for v in mask_values)):
        raise CheckpointError(f"{where} has an invalid 'mask_values' entry (expected a list of "
                              "numbers or colours)")
    model = build_model(config, state, where)
    if mask_values is not None:
        model.mask_values = mask_values
    return model


def build_model(config: UNetConfig, state: dict[str, Any], where: str,
                display: Callable[[str], str] | None = None) -> UNet:
    """A :class:`UNet` for ``config`` holding ``state``'s tensors, in eval mode.

    Raises :class:`CheckpointError` (prefixed with ``where``) naming missing, unexpected or
    wrongly shaped entries; ``display`` maps a key to the name the user knows it by (an
    imported checkpoint's own key).
    """
    name = display or str
    with torch.device("meta"):
        model = UNet(**config.to_dict())
    expected = model.state_dict()
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(f"{where} does not match its config: " + "; ".join(parts))
    for k, ref in expected.items():
        t = state[k]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"{where}: entry {name(k)!r} is a {type(t).__name__}, not a tensor")
        if t.shape != ref.shape:
            raise CheckpointError(f"{where}: {name(k)!r} has shape {tuple(t.shape)}, the config "
                                  f"needs {tuple(ref.shape)}")
    float_dtypes = {t.dtype for k, t in state.items() if t.is_floating_point()}
    if len(float_dtypes) > 1:
        # mixed precision files load into one dtype, the widest, so every backend gets one dtype
        widest = max(float_dtypes, key=lambda d: torch.finfo(d).bits)
        state = {k: t.to(widest) if t.is_floating_point() else t for k, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _describe_foreign(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f" (it holds a {type(obj).__name__}, expected a dict)"
    keys = [str(k) for k in obj]
    if any(k.startswith("inc.double_conv.") or k.startswith("module.inc.") for k in keys):
        return " (it looks like a milesial/Pytorch-UNet state dict: use unet_fast.from_milesial)"
    if any(k.startswith("encoder.0.conv1.") for k in keys):
        return (" (it is a bare unet_fast state_dict without config: build the model and call "
                "load_state_dict, then unet_fast.save it)")
    return f" (another architecture? its first keys: {_few(keys)})" if keys else " (empty dict)"


def load(path: str | os.PathLike[str], map_location: Any = "cpu") -> UNet:
    """Rebuild the :class:`unet_fast.UNet` saved by :func:`save` at ``path``, in eval mode.

    Raises :class:`CheckpointError` (a ValueError) with a one-line message naming ``path`` for a
    missing, corrupt or foreign file, a newer format version, or missing/unexpected keys.
    """
    return from_checkpoint_dict(read(path, map_location), path)
