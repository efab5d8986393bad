"""CPU inference through oneDNN: channels_last, BatchNorm folded, prepacked weights, fused ReLU.

Measured on the project's 2-core CI machine (see benchmarks/results), this beats the eager NCHW
reference by packing every 3x3 weight once into oneDNN's blocked layout (eager reorders it on every
call), fusing bias + ReLU into the convolution, and keeping activations channels_last so no layer
converts layouts. It computes in float32 or bfloat16 (the model's dtype, or autocast's). float16
is computed in float32 and rounded to float16 once at the end: PyTorch's CPU convolutions have no
fast float16 kernel (its own fp16 path is ~40x slower than fp32), and fp32 compute is at least as
accurate as fp16 compute; a one-time warning says so. Other dtypes fall back to the reference ops.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..dispatch import compute_dtype
from ..packing import FoldedConv, PackedLayers, pack_layers
from ..reference import join_skip
from ..weight_checks import check_weights

if TYPE_CHECKING:
    from ..model import UNet

_CL = torch.channels_last
_FP16_WARNED = False


@dataclass(frozen=True)
class PackedConv:
    """A 3x3 or 1x1 convolution ready for ``mkldnn::_convolution_pointwise``."""

    weight: torch.Tensor
    bias: torch.Tensor
    padding: list[int]


@dataclass(frozen=True)
class PackedUp:
    """A 2x2 stride-2 transposed convolution in the compute dtype (None for bilinear)."""

    weight: torch.Tensor
    bias: torch.Tensor


PackedUNet = PackedLayers[PackedConv, PackedUp]


def _pack_conv(folded: FoldedConv) -> PackedConv:
    pad = [folded.padding, folded.padding]
    weight = torch.ops.mkldnn._reorder_convolution_weight(
        folded.weight.contiguous(memory_format=_CL), pad, [1, 1], [1, 1], 1, None
    )
    return PackedConv(weight, folded.bias, pad)


def pack(model: UNet, dtype: torch.dtype) -> PackedUNet:
    """Fold and pack every weight of ``model`` for computing in ``dtype``.

    Raises a ValueError naming a NaN/Inf weight or a negative BatchNorm variance (see
    :mod:`unet_fast.weight_checks`).
    """
    check_weights(model)
    return pack_layers(model, dtype, _pack_conv, lambda up: PackedUp(
        up.weight.detach().to(dtype).contiguous(memory_format=_CL), up.bias.detach().to(dtype)))


def _conv(x: torch.Tensor, c: PackedConv, relu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, c.weight, c.bias, c.padding, [1, 1], [1, 1], 1, "relu" if relu else "none", [], None
    )


def _join_skip_nhwc(skip: torch.Tensor, up: torch.Tensor, same: bool) -> torch.Tensor:
    """The reference's crop/pad + concat, done on NHWC views: one contiguous copy, no layout
    conversion (aten's cat of channels_last inputs along C takes a slow strided path)."""
    if up.shape[-2:] != skip.shape[-2:]:
        if same:
            up = join_skip(skip[:, :0], up, True)  # zero-pads up to the skip's size
        else:
            dh, dw = skip.shape[-2] - up.shape[-2], skip.shape[-1] - up.shape[-1]
            skip = skip[..., dh // 2 : dh // 2 + up.shape[-2], dw // 2 : dw // 2 + up.shape[-1]]
    joined = torch.cat([skip.permute(0, 2, 3, 1), up.permute(0, 2, 3, 1)], dim=3)
    return joined.permute(0, 3, 1, 2)


class CpuOneDNNBackend:
    """The CPU inference backend (see the module docstring)."""

    name = "cpu-onednn"

    def supports(self, model: UNet, x: torch.Tensor) -> bool:
        dtype = compute_dtype(x, model.head.weight.dtype)
        return (
            torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and dtype in (torch.float32, torch.bfloat16, torch.float16)
            and (dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )

    def forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x, model.head.weight.dtype)
        if dtype == torch.float16:
            _warn_fp16_once()
            return self._forward(model, x, torch.float32).to(torch.float16)
        return self._forward(model, x, dtype)

    def _forward(self, model: UNet, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        packed: PackedUNet = model.weight_cache.get(model, ("cpu", dtype), lambda: pack(model, dtype))
        same = model.config.padding == "same"
        x = x.to(dtype).contiguous(memory_format=_CL)
        skips = []
        for c1, c2 in packed.encoder:
            x = _conv(_conv(x, c1, True), c2, True)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        c1, c2 = packed.bottleneck
        x = _conv(_conv(x, c1, True), c2, True)
        for (up, c1, c2), skip in zip(packed.decoder, reversed(skips), strict=True):
            if up is not None:
                x = F.conv_transpose2d(x, up.weight, up.bias, stride=2)
            else:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = _join_skip_nhwc(skip, x, same)
            x = _conv(_conv(x, c1, True), c2, True)
        # NCHW out, like the reference, so callers see no difference in layout
        return _conv(x, packed.head, False).contiguous()


def _warn_fp16_once() -> None:
    global _FP16_WARNED
    if not _FP16_WARNED:
        _FP16_WARNED = True
        warnings.warn(
            "unet_fast: float16 on the CPU is computed in float32 (oneDNN has no fast float16 "
            "convolution here; PyTorch's own is ~40x slower) and rounded to float16 at the end: "
            "at least as accurate as float16 compute. Use float32 or bfloat16 to silence this.",
            UserWarning, stacklevel=4)
