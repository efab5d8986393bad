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
from ..weight_checks import check_weights
from .cpu_conv3x3 import DIRECT, Conv3x3, Planner, onednn_conv, onednn_pack
from .cpu_pool import maxpool2x2

if TYPE_CHECKING:
    from ..model import UNet

_CL = torch.channels_last
_FP16_WARNED = False


@dataclass(frozen=True)
class PackedConv:
    """The 1x1 head, ready for ``mkldnn::_convolution_pointwise``."""

    weight: torch.Tensor
    padding: list[int]
    bias: torch.Tensor


@dataclass(frozen=True)
class PackedUp:
    """A 2x2 stride-2 transposed convolution as one GEMM (None for bilinear): every input pixel
    writes its own 2x2 output block, so ``out[2y + i, 2x + j] = x[y, x] @ weight[:, (i, j, :)]``.
    ``weight`` is ``(C_in, 2 * 2 * C_out)``, ``bias`` repeated for the 4 positions."""

    weight: torch.Tensor
    bias: torch.Tensor


def _pack_up(up: torch.nn.ConvTranspose2d, dtype: torch.dtype) -> PackedUp:
    w = up.weight.detach()  # (C_in, C_out, 2, 2)
    bias = up.bias.detach() if up.bias is not None else w.new_zeros(w.shape[1])
    return PackedUp(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).to(dtype).contiguous(),
                    bias.repeat(4).to(dtype))


def _upconv(x: torch.Tensor, up: PackedUp) -> torch.Tensor:
    """aten's transposed convolution took ~10% of the paper network's CPU time; as GEMMs (on the
    NHWC view) plus copies that interleave the 2x2 blocks it is about 3x faster."""
    n, _, h, w = x.shape
    out = torch.empty((n, 2 * h, 2 * w, up.weight.shape[1] // 4), dtype=x.dtype)
    _upconv_into(x, up, out)
    return out.permute(0, 3, 1, 2)


def _upconv_into(x: torch.Tensor, up: PackedUp, dest: torch.Tensor) -> None:
    """Write the up-convolution of ``x`` into ``dest``, an (N, 2H, 2W, C_out) NHWC view (its
    channels may be a slice of a wider buffer). One GEMM per output row parity ``i``, copied
    straight into its rows: the GEMM result held at a time is half the output, not all of it
    (the last decoder level's peak)."""
    n, _, h, w = x.shape
    c2 = up.weight.shape[1] // 2  # (j, c) columns of one row parity
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, -1)
    by_parity = dest.unflatten(1, (h, 2)).unflatten(3, (w, 2))  # [n, y, i, x, j, c]
    for i in range(2):
        block = torch.addmm(up.bias[i * c2:(i + 1) * c2], rows, up.weight[:, i * c2:(i + 1) * c2])
        by_parity[:, :, i].copy_(block.view(n, h, w, 2, c2 // 2))
        del block


def upconv_joined(x: torch.Tensor, up: PackedUp, skip: torch.Tensor, same: bool) -> torch.Tensor:
    """``join_skip(skip, _upconv(x, up), same)`` built in one NHWC buffer: the skip (cropped) is
    copied into its channels and the up-convolution's GEMM results straight into theirs (zero
    around them where same padding pads), so no up-sampled map is written and read again by a
    concatenation. For a direct convolution, which needs its input in one tensor."""
    n, _, h, w = x.shape
    cu, cs = up.weight.shape[1] // 4, skip.shape[1]
    dh, dw = skip.shape[-2] - 2 * h, skip.shape[-1] - 2 * w
    if same:  # up zero-padded to the skip's size, the odd pixel at the bottom/right
        oy, ox = dh // 2, dw // 2
    else:  # the skip center-cropped to up's size
        skip = skip[..., dh // 2: dh // 2 + 2 * h, dw // 2: dw // 2 + 2 * w]
        oy = ox = 0
    hh, ww = skip.shape[-2:]
    joined = torch.empty((n, hh, ww, cs + cu), dtype=x.dtype)
    joined[..., :cs].copy_(skip.permute(0, 2, 3, 1))
    part = joined[..., cs:]
    if (hh, ww) != (2 * h, 2 * w):
        part[:, :oy].zero_()
        part[:, oy + 2 * h:].zero_()
        part[:, :, :ox].zero_()
        part[:, :, ox + 2 * w:].zero_()
    _upconv_into(x, up, part[:, oy: oy + 2 * h, ox: ox + 2 * w])
    return joined.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class PackedUNet:
    """The backend's weights: 3x3 layers in every form they may run in, and their plans."""

    layers: PackedLayers[Conv3x3, PackedUp]  # (the head is a PackedConv)
    planner: Planner


def _pack_conv(folded: FoldedConv) -> Conv3x3 | PackedConv:
    if folded.weight.shape[-1] == 3:
        return Conv3x3(folded)
    return PackedConv(*onednn_pack(folded))


def pack(model: UNet, dtype: torch.dtype) -> PackedUNet:
    """Fold and pack every weight of ``model`` for computing in ``dtype``.

    Raises a ValueError naming a NaN/Inf weight or a negative BatchNorm variance (see
    :mod:`unet_fast.weight_checks`).
    """
    check_weights(model)
    layers = pack_layers(model, dtype, _pack_conv, lambda up: _pack_up(up, dtype))
    convs = [c for pair in layers.encoder for c in pair] + list(layers.bottleneck)
    convs += [c for _, c1, c2 in layers.decoder for c in (c1, c2)]
    packed = PackedUNet(layers, Planner(convs))
    # forms built after packing are kept only while this pack is still the current one
    packed.planner.keep = lambda: model.weight_cache.get(
        model, ("cpu", dtype), lambda: pack(model, dtype)) is packed
    return packed


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
        layers = packed.layers
        same = model.config.padding == "same"
        x = _channels_last(x.to(dtype))
        run = packed.planner.start(tuple(x.shape[-2:]))
        skips = []
        # one name for the current map, so each layer's input is freed when the layer returns
        for c1, c2 in layers.encoder:
            x = run.conv(c1, x)
            x = run.conv(c2, x)
            skips.append(x)
            x = maxpool2x2(x)
        c1, c2 = layers.bottleneck
        x = run.conv(c1, x)
        x = run.conv(c2, x)
        # each skip and up-sampled map is dropped as soon as its last reader is done, so the last
        # level (the largest maps) does not also hold the deeper levels' skips
        for up, c1, c2 in layers.decoder:
            skip = skips.pop()
            if up is not None and run.next_tactic() == DIRECT:
                # a direct convolution needs one input tensor: build it without a concatenation
                x = run.conv(c1, upconv_joined(x, up, skip, same))
            else:
                if up is not None:
                    x = _upconv(x, up)
                else:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
                x = run.conv(c1, x, skip=skip, same=same)
            del skip
            x = run.conv(c2, x)
        run.done()
        head = layers.head
        # NCHW out, like the reference, so callers see no difference in layout
        return onednn_conv(x, head.weight, head.bias, head.padding, False).contiguous()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last, with channels_last strides even for one channel.

    A one-channel map is NCHW- and NHWC-contiguous at once, and ``contiguous(channels_last)``
    keeps its NCHW strides; oneDNN's convolution then took the first layer for NCHW, ran a slower
    kernel and wrote an NCHW output, which the next layer copied to NHWC (measured on the paper
    tile in fp32: 104 ms conv + 75 ms copy, against 44 ms for the same conv writing NHWC)."""
    x = x.contiguous(memory_format=_CL)
    if x.shape[1] == 1 and x.stride(1) != 1:
        x = x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))
    return x


def _warn_fp16_once() -> None:
    global _FP16_WARNED
    if not _FP16_WARNED:
        _FP16_WARNED = True
        warnings.warn(
            "unet_fast: float16 on the CPU is computed in float32 (oneDNN has no fast float16 "
            "convolution here; PyTorch's own is ~40x slower) and rounded to float16 at the end: "
            "at least as accurate as float16 compute. Use float32 or bfloat16 to silence this.",
            UserWarning, stacklevel=4)
