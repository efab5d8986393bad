"""The stock PyTorch path: cuDNN (or whatever backs ``F.conv2d`` on the device) in channels_last,
BatchNorm folded into the convolutions, ReLU in place, optionally replayed as a CUDA graph.

This is what a careful user would write by hand with stock PyTorch. The Triton backend falls back
to it when its kernels fail the first-call self-check on a GPU (:mod:`.self_check`), so a GPU on
which the custom kernels miscompile or crash still gives correct masks, only slower. It uses
device-agnostic ops only, so it also runs on the CPU (its tests do) and in float64 (the self-check's
oracle). Precision follows PyTorch: the compute dtype is autocast's or the parameters', and fp32
convolutions use TF32 exactly when cuDNN's own flag says so, because they are cuDNN's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..dispatch import compute_dtype
from ..packing import FoldedConv, PackedLayers, pack_layers
from ..reference import join_skip
from . import _graphs

if TYPE_CHECKING:
    from ..model import UNet

_CL = torch.channels_last


# up-convolutions as (weight, bias) in the compute dtype, channels_last
StockUNet = PackedLayers[FoldedConv, tuple[torch.Tensor, "torch.Tensor | None"]]


def _cl(folded: FoldedConv) -> FoldedConv:
    return FoldedConv(folded.weight.contiguous(memory_format=_CL), folded.bias, folded.padding)


def pack(model: UNet, dtype: torch.dtype) -> StockUNet:
    """Fold every BatchNorm of ``model`` and lay the weights out for ``dtype`` in channels_last."""
    def up(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (conv.weight.detach().to(dtype).contiguous(memory_format=_CL),
                conv.bias.detach().to(dtype) if conv.bias is not None else None)

    return pack_layers(model, dtype, _cl, up)


def _conv_relu(x: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    return F.relu(F.conv2d(x, c.weight, c.bias, padding=c.padding), inplace=True)


def run(packed: StockUNet, x: torch.Tensor, same: bool) -> torch.Tensor:
    """The forward on packed weights; ``x`` already in the packed dtype. Returns NCHW logits."""
    x = x.contiguous(memory_format=_CL)
    skips = []
    for c1, c2 in packed.encoder:
        x = _conv_relu(_conv_relu(x, c1), c2)
        skips.append(x)
        x = F.max_pool2d(x, 2)
    c1, c2 = packed.bottleneck
    x = _conv_relu(_conv_relu(x, c1), c2)
    for (up, c1, c2), skip in zip(packed.decoder, reversed(skips), strict=True):
        if up is not None:
            x = F.conv_transpose2d(x, up[0], up[1], stride=2)
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = join_skip(skip, x, same).contiguous(memory_format=_CL)
        x = _conv_relu(_conv_relu(x, c1), c2)
    h = packed.head
    # contiguous NCHW out, like the reference and the Triton head
    return F.conv2d(x, h.weight, h.bias, padding=h.padding).contiguous()


class StockBackend:
    """Stock PyTorch inference on any device (see the module docstring).

    Args:
        cuda_graphs: replay the whole forward as a CUDA graph per (input shape, dtype, TF32 flag)
            on CUDA inputs (ignored elsewhere): True, False (default), or None for batches of
            at most ``_graphs.AUTO_MAX_BATCH`` (the Triton backend's default, passed to its
            fallback). Never while the caller captures a graph itself.
        max_graphs: how many input shapes keep a graph (least recently used dropped first).
    """

    name = "stock"

    def __init__(self, cuda_graphs: bool | None = False, max_graphs: int = 4) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs

    def supports(self, model: UNet, x: torch.Tensor) -> bool:
        return compute_dtype(x, model.head.weight.dtype).is_floating_point

    def packed(self, model: UNet, device: torch.device, dtype: torch.dtype) -> StockUNet:
        """The folded weights for ``(device, dtype)``, cached in ``model.weight_cache``."""
        return model.weight_cache.get(model, (self.name, device, dtype),
                                      lambda: pack(model, dtype))

    def forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x, model.head.weight.dtype)
        x = x.to(dtype).contiguous(memory_format=_CL)
        same = model.config.padding == "same"
        # autocast would re-cast every folded weight on every call; the dtype is already chosen
        with torch.autocast(x.device.type, enabled=False):
            if _graphs.wanted(self.cuda_graphs, x):
                tf32 = torch.backends.cudnn.allow_tf32
                key = (self.name, "graph", x.device, dtype, tuple(x.shape), tf32)
                return _graphs.replay(
                    model, key, x,
                    lambda t: run(self.packed(model, t.device, dtype), t, same), self.max_graphs)
            return run(self.packed(model, x.device, dtype), x, same)
