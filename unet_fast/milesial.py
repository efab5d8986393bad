"""Import weights trained with milesial/Pytorch-UNet (the popular PyTorch U-Net).

Its layout maps onto :class:`unet_fast.UNet` with ``padding="same"``, ``norm="batch"`` and
``upsample="bilinear"`` (its ``bilinear=True``) or ``"transpose"`` (``bilinear=False``)::

    inc.double_conv.{0,1,3,4}                 -> encoder.0.{conv1,norm1,conv2,norm2}
    down{i}.maxpool_conv.1.double_conv.*      -> encoder.{i}.*  (the last down{d} -> bottleneck)
    up{j}.up.weight/bias  (bilinear=False)    -> decoder.{j-1}.up
    up{j}.conv.double_conv.*                  -> decoder.{j-1}.*
    outc.conv.weight/bias                     -> head

Channels, classes, width, depth and the up-sampling variant are read from the tensors. The extra
``mask_values`` entry its training script saves is kept as ``model.mask_values`` (the pixel value
of each class, used by the CLI to write masks the way its ``predict.py`` does). Older checkpoints
whose 3x3 convolutions carry a bias get it folded into the following BatchNorm's running mean.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from .checkpoint import CheckpointError, build_model, check_mask_values, read
from .config import UNetConfig
from .model import UNet

_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
_DOUBLE = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_KEY = re.compile(
    r"^(?:inc\.double_conv|down(\d+)\.maxpool_conv\.1\.double_conv|up(\d+)\.conv\.double_conv)"
    r"\.([0134])\.(\w+)$"
)


def _strip(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``state`` without ``module.``/``_orig_mod.`` prefixes, and each new key's original."""
    out, original = {}, {}
    for key, v in state.items():
        k = str(key)
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k], original[k] = v, str(key)
    return out, original


def _unwrap(obj: Any) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The milesial state dict inside ``obj`` (itself, or under a usual wrapper key) with the
    file's name of each of its keys, or None."""
    if not isinstance(obj, dict):
        return None
    state, original = _strip(obj)
    if "inc.double_conv.0.weight" in state:
        return state, original
    for key in _WRAPPERS:
        inner = obj.get(key)
        if isinstance(inner, dict):
            inner, original = _strip(inner)
            if "inc.double_conv.0.weight" in inner:
                if "mask_values" in obj and "mask_values" not in inner:
                    inner["mask_values"] = obj["mask_values"]
                return inner, {k: f"{key}.{v}" for k, v in original.items()}
    return None


def looks_like_milesial(obj: Any) -> bool:
    """Whether ``obj`` (a loaded checkpoint) is a milesial/Pytorch-UNet state dict."""
    return _unwrap(obj) is not None


def _new_key(key: str, depth: int) -> str | None:
    if key.startswith("outc.conv."):
        return "head." + key[len("outc.conv."):]
    m = re.fullmatch(r"up(\d+)\.up\.(weight|bias)", key)
    if m:
        return f"decoder.{int(m.group(1)) - 1}.up.{m.group(2)}"
    m = _KEY.match(key)
    if not m:
        return None
    down, up, layer, leaf = m.groups()
    if down is not None:
        i = int(down)
        block = "bottleneck" if i == depth else f"encoder.{i}"
    elif up is not None:
        block = f"decoder.{int(up) - 1}"
    else:
        block = "encoder.0"
    return f"{block}.{_DOUBLE[layer]}.{leaf}"


def _old_key(key: str, depth: int) -> str:
    """milesial's name for the unet_fast ``key`` (the inverse of :func:`_new_key`)."""
    if key.startswith("head."):
        return "outc.conv." + key[len("head."):]
    m = re.fullmatch(r"decoder\.(\d+)\.up\.(\w+)", key)
    if m:
        return f"up{int(m.group(1)) + 1}.up.{m.group(2)}"
    m = re.fullmatch(r"(?:(encoder|decoder)\.(\d+)|bottleneck)\.(conv1|norm1|conv2|norm2)\.(\w+)",
                     key)
    if not m:
        return key
    kind, index, layer, leaf = m.groups()
    if kind is None:
        block = f"down{depth}.maxpool_conv.1.double_conv"
    elif kind == "decoder":
        block = f"up{int(index) + 1}.conv.double_conv"
    elif index == "0":
        block = "inc.double_conv"
    else:
        block = f"down{index}.maxpool_conv.1.double_conv"
    number = {v: k for k, v in _DOUBLE.items()}[layer]
    return f"{block}.{number}.{leaf}"


def _fold_conv_biases(state: dict[str, Any]) -> dict[str, Any]:
    # BN(conv(x) + b) == BN'(conv(x)) with running_mean' = running_mean - b
    out = dict(state)
    for key in list(state):
        m = re.fullmatch(r"(.*)\.conv([12])\.bias", key)
        if not m or m.group(1) == "head":
            continue
        mean_key = f"{m.group(1)}.norm{m.group(2)}.running_mean"
        if mean_key not in out or out[mean_key].shape != out[key].shape:
            continue  # left in place: build_model names it
        out[mean_key] = out[mean_key] - out.pop(key).to(out[mean_key].dtype)
    return out


def from_milesial(state_dict_or_path: dict[str, Any] | str | os.PathLike[str],
                  map_location: Any = "cpu") -> UNet:
    """A :class:`unet_fast.UNet` (eval mode) computing what milesial's ``UNet`` computes.

    Args:
        state_dict_or_path: its ``state_dict`` (as saved by its ``train.py``, ``mask_values``
            entry and ``module.`` prefixes allowed) or the path of such a file, which is read
            with ``torch.load(weights_only=True)``.
        map_location: where the tensors of a file go.

    Raises:
        CheckpointError: (a ValueError) one line naming the problem: not a milesial state dict,
            or keys that do not fit its layout.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        where = f"checkpoint {str(state_dict_or_path)!r}"
        obj = read(state_dict_or_path, map_location)
    else:
        where, obj = "milesial state dict", state_dict_or_path
    found = _unwrap(obj)
    if found is None:
        raise CheckpointError(
            f"{where} is not a milesial/Pytorch-UNet state dict (no 'inc.double_conv.0.weight')")
    state, original = found
    mask_values = state.pop("mask_values", None)
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"{where}: unexpected non-tensor entries {non_tensors[:3]}")
    for k, v in state.items():
        if v.is_nested or v.layout != torch.strided:
            kind = "nested" if v.is_nested else str(v.layout).replace("torch.", "")
            raise CheckpointError(f"{where}: {original[k]!r} is a {kind} tensor; only dense "
                                  "tensors are loaded")
    downs = sorted({int(m.group(1)) for k in state if (m := re.match(r"down(\d+)\.", k))})
    depth = len(downs)
    if depth < 1 or downs != list(range(1, depth + 1)):
        raise CheckpointError(f"{where}: expected down1..downN blocks, found down{downs}")
    try:
        first, head = state["inc.double_conv.0.weight"], state["outc.conv.weight"]
    except KeyError as e:
        raise CheckpointError(f"{where}: missing key {e.args[0]!r}") from None
    # the layout is read from these two shapes: a 3x3 and a 1x1 convolution's weights
    for key, t, kernel in (("inc.double_conv.0.weight", first, 3), ("outc.conv.weight", head, 1)):
        if t.ndim != 4 or tuple(t.shape[2:]) != (kernel, kernel):
            raise CheckpointError(
                f"{where}: {original[key]!r} has shape {tuple(t.shape)}, expected a "
                f"{kernel}x{kernel} convolution's weights (out, in, {kernel}, {kernel})")
    bilinear = not any(re.fullmatch(r"up\d+\.up\.weight", k) for k in state)
    try:
        config = UNetConfig(in_channels=first.shape[1], num_classes=head.shape[0],
                            base_channels=first.shape[0], depth=depth, padding="same",
                            norm="batch", upsample="bilinear" if bilinear else "transpose")
    except ValueError as e:
        raise CheckpointError(f"{where}: unsupported layout ({e})") from e
    if mask_values is not None:
        mask_values = check_mask_values(mask_values, config.num_classes, where)
    renamed, unknown, source = {}, [], {}
    for k, v in state.items():
        new = _new_key(k, depth)
        if new is None:
            unknown.append(original[k])
        else:
            renamed[new], source[new] = v, original[k]
    if unknown:
        raise CheckpointError(
            f"{where}: unexpected keys for the milesial layout: {', '.join(unknown[:3])}"
            + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""))
    renamed = _fold_conv_biases(renamed)
    # errors name the keys as the file has them (a missing key: as milesial would name it)
    model = build_model(config, renamed, where,
                        display=lambda k: source.get(k) or _old_key(k, depth))
    if mask_values is not None:
        model.mask_values = mask_values
    return model
