"""Checkpoints: one file holding a model's config and weights, so the file alone rebuilds it.

The file is a ``torch.save`` of a plain dict (only str/int/float/None/list/dict and tensors)::

    {"format": "unet_fast", "version": 1, "config": UNetConfig.to_dict(), "state_dict": {...}}

plus ``"mask_values"`` (a list: the pixel value of each class, ints or colours) when the model
carries them (milesial imports do), and is read back with ``torch.load(weights_only=True)``: no
arbitrary object is ever unpickled.
Writes are atomic (temporary file in the same folder, then ``os.replace``). The archive carries
a SHA-256 digest of its bytes as its zip comment, checked by :func:`read` (files without one are
checked against the archive's CRC-32s), see :mod:`unet_fast._ckpt_file`.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import _ckpt_file
from ._atomic import atomic_path
from .config import UNetConfig
from .model import UNet
from .weight_checks import weight_problem

FORMAT = "unet_fast"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be turned into a model; the message is one line."""


def save(model: torch.nn.Module, path: str | os.PathLike[str], *,
         extra: dict[str, Any] | None = None) -> None:
    """Write ``model``'s config and weights (``unet_fast.UNet`` or ``reference.UNet``) to ``path``.

    Tensors are saved as they are (dtype kept) but moved to the CPU, so the file loads anywhere.
    A ``model.mask_values`` attribute (see :func:`unet_fast.from_milesial`) is stored too and
    restored by :func:`load`; values :func:`load` would refuse raise :class:`CheckpointError`
    before anything is written. ``extra`` adds more top-level entries (plain containers and tensors
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
        # a file load() would refuse is never written
        payload["mask_values"] = check_mask_values(_plain_mask_values(mask_values),
                                                   config.num_classes, "model")
    clash = set(extra or ()) & set(payload)
    if clash:
        raise ValueError(f"extra entries may not replace {sorted(clash)}")
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        _ckpt_file.add_digest(tmp)


def read(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """The raw object stored in a torch checkpoint file, loaded with ``weights_only=True``.

    The file is verified first (see :mod:`unet_fast._ckpt_file`): it must be a regular file, a
    zip archive of uncompressed entries (what ``torch.save`` writes) whose bytes match the
    digest :func:`save` stores, or, for files without one, every entry's CRC-32.

    Raises :class:`CheckpointError` naming ``path`` if it is missing, unreadable, not a regular
    file, corrupt or compressed.
    """
    path = Path(path)
    try:
        f = _ckpt_file.check_file(path)
    except _ckpt_file.FileCheckError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} {e}") from e
    try:
        with f:
            return torch.load(f, map_location=map_location, weights_only=True)
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
    if mask_values is not None:
        mask_values = check_mask_values(mask_values, config.num_classes, where)
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
    _check_size(config, state, where)
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
    checked = {}
    for k, ref in expected.items():
        checked[k] = _check_tensor(state[k], ref, f"{where}: {name(k)!r}")
    state = checked
    float_dtypes = {t.dtype for k, t in state.items() if t.is_floating_point()}
    if len(float_dtypes) > 1:
        # mixed precision files load into one dtype, the widest, so every backend gets one dtype
        widest = max(float_dtypes, key=lambda d: torch.finfo(d).bits)
        state = {k: t.to(widest) if t.is_floating_point() else t for k, t in state.items()}
    problem = weight_problem(model, state, name)  # NaN/Inf, negative BatchNorm variance
    if problem is not None:
        raise CheckpointError(f"{where}: {problem}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _min_parameters(config: UNetConfig) -> int:
    """A lower bound on the weights ``config``'s network holds: the last encoder level's second
    3x3 convolution, the first one and the 1x1 head (exact Python integers, no overflow)."""
    if config.depth > 64:  # beyond any memory; keeps the integers small
        return 2**130
    top = config.base_channels
    deepest = top * 2 ** (config.depth - 1)
    return 9 * deepest * deepest + 9 * config.in_channels * top + top * config.num_classes


def _check_size(config: UNetConfig, state: dict[str, Any], where: str) -> None:
    """Refuse a config whose network needs more weights than the file holds, before building
    it (``base_channels=10**9`` would overflow torch's size arithmetic, even on ``meta``)."""
    held = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor)
               and t.layout == torch.strided and not t.is_nested)
    needed = _min_parameters(config)
    if needed > held:
        shown = f"{needed:,}" if needed < 10**15 else f"about 10^{len(str(needed)) - 1}"
        raise CheckpointError(
            f"{where}: its config (in_channels={config.in_channels}, num_classes="
            f"{config.num_classes}, base_channels={config.base_channels}, depth={config.depth}) "
            f"needs at least {shown} weights but only {held:,} tensor values are stored")


def _check_tensor(t: Any, ref: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` if it can stand for the model's tensor ``ref`` (a dense tensor of its shape, floating
    point for weights, integer for counters), made contiguous; else a CheckpointError."""
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(f"{what} is a {type(t).__name__}, not a tensor")
    if t.is_nested or t.layout != torch.strided or t.is_quantized:
        kind = ("nested" if t.is_nested else "quantized" if t.is_quantized
                else str(t.layout).replace("torch.", "").replace("_coo", ""))
        raise CheckpointError(f"{what} is a {kind} tensor; only dense tensors are loaded")
    if t.shape != ref.shape:
        raise CheckpointError(f"{what} has shape {tuple(t.shape)}, the config needs "
                              f"{tuple(ref.shape)}")
    if ref.is_floating_point():
        if t.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"{what} has dtype {t.dtype}; weights must be float16, "
                                  "bfloat16, float32 or float64")
    elif t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise CheckpointError(f"{what} has dtype {t.dtype}; this counter must be an integer")
    else:
        t = t.to(ref.dtype)
    return t.contiguous()


def check_mask_values(values: Any, num_classes: int, where: str) -> list[Any]:
    """``values`` (each class's pixel value in written masks) as a plain list, if every class
    has one and each fits a 16-bit mask: integers in 0..65535, or colours ``[R, G, B(, A)]`` of
    integers in 0..255; else a :class:`CheckpointError` naming what is wrong."""
    needed = max(num_classes, 2)  # a 1-class model's mask is still background/foreground
    rule = (f"expected a list of at least {needed} class values: integers in 0..65535, or "
            "[R, G, B] colours of integers in 0..255")

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{where} has invalid mask_values ({reason}); {rule}")

    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise bad(f"a {type(values).__name__}, not a list")
    if len(values) < needed:
        raise bad(f"{len(values)} value(s) for {needed} classes")
    colours = [isinstance(v, (list, tuple)) for v in values]
    if any(colours) and not all(colours):
        raise bad("numbers and colours mixed")
    if all(colours):
        lengths = {len(v) for v in values}
        if len(lengths) != 1 or lengths.pop() not in (3, 4):
            raise bad("colours must all have 3 (RGB) or 4 (RGBA) entries")
        return [[_mask_integer(c, 255, bad) for c in v] for v in values]
    return [_mask_integer(v, 65535, bad) for v in values]


def _mask_integer(v: Any, top: int, bad: Callable[[str], CheckpointError]) -> int | bool:
    if isinstance(v, bool):
        return v  # milesial keeps a 1-bit mask's values as False/True
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int):
        raise bad(f"{v!r:.20} is not an integer")
    if not 0 <= v <= top:
        raise bad(f"{v} is outside 0..{top}")
    return v


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
