"""GPU inference through the project's Triton kernels only (no aten convolution, no aten cat).

The forward is: per encoder level one ``conv3x3`` and one ``conv3x3_pool`` (the second conv writes
the skip and the pooled map in one pass); the bottleneck's two ``conv3x3``; per decoder level an
``upconv2x2`` (or ``upsample_bilinear2x``), a ``conv3x3_cat`` that reads the cropped skip and the
up-sampled map directly, and a ``conv3x3`` -- the last one being ``conv3x3_head``, which applies
the final 1x1 convolution in its epilogue. Activations stay NHWC; weights are BatchNorm-folded and
packed once per (device, dtype) in ``model.weight_cache``.

Precision follows PyTorch: the compute dtype is autocast's or the parameters'; fp32 uses TF32 when
``torch.backends.cudnn.allow_tf32`` is set (as cuDNN convolutions do); accumulation is fp32.

Importing this module does not import Triton (that happens on the first forward), so registering
the backend at ``import unet_fast`` time costs nothing and touches no GPU. The forward also runs
on CPU tensors under ``TRITON_INTERPRET=1``, which is how the CPU test suite exercises it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import tracing
from ..dispatch import compute_dtype
from ..launch_hints import autotune
from ..packing import FoldedConv, fold_conv
from ..weight_checks import check_weights
from . import _graphs, self_check
from .stock import StockBackend

if TYPE_CHECKING:
    from ..model import UNet

_CL = torch.channels_last
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The fused head holds the last conv's whole C_out in one tile.
MAX_HEAD_CHANNELS = 256


@dataclass(frozen=True)
class PackedConv3x3:
    """A BatchNorm-folded 3x3 convolution in the GEMM layout ``[9 * C_in, C_out]``, stored
    K-contiguous (:func:`unet_fast.triton_kernels.conv3x3.pack_conv3x3_weight`)."""

    weight: torch.Tensor
    bias: torch.Tensor
    padding: int


@dataclass(frozen=True)
class PackedUpconv:
    """A 2x2 stride-2 up-convolution in the GEMM layout ``[C_in, 4 * C_out]``, stored
    K-contiguous."""

    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class PackedTritonUNet:
    encoder: list[tuple[PackedConv3x3, PackedConv3x3]]
    bottleneck: tuple[PackedConv3x3, PackedConv3x3]
    decoder: list[tuple[PackedUpconv | None, PackedConv3x3, PackedConv3x3]]
    head_weight: torch.Tensor
    head_bias: torch.Tensor


# Looked up once at import (without importing Triton): a plain value, which Dynamo reads without
# tracing into a cached function.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether Triton is installed (checked without importing it)."""
    return _TRITON_FOUND


def pack(model: UNet, dtype: torch.dtype, tf32: bool = False) -> PackedTritonUNet:
    """Fold BatchNorm into every conv of ``model`` and pack the weights for the kernels.

    With ``tf32`` the weights are rounded to the nearest TF32 value: tensor cores truncate fp32
    operands of a TF32 product, which biases every product toward zero. Raises a ValueError
    naming a NaN/Inf weight or a negative BatchNorm variance (see :mod:`unet_fast.weight_checks`).
    """
    check_weights(model)
    from ..triton_kernels._common import round_to_tf32
    from ..triton_kernels.conv3x3 import pack_conv3x3_weight, pack_head_weight
    from ..triton_kernels.upconv import pack_upconv_weight

    # rounded before packing: round_to_tf32 returns a dense tensor, the packing's strides matter
    def operand(w: torch.Tensor) -> torch.Tensor:
        return round_to_tf32(w) if tf32 else w

    def conv(folded: FoldedConv) -> PackedConv3x3:
        return PackedConv3x3(pack_conv3x3_weight(operand(folded.weight)),
                             folded.bias.contiguous(), folded.padding)

    def pair(block):
        return (conv(fold_conv(block.conv1, block.norm1, dtype)),
                conv(fold_conv(block.conv2, block.norm2, dtype)))

    decoder = []
    for block in model.decoder:
        up = None
        if block.up is not None:
            up = PackedUpconv(pack_upconv_weight(operand(block.up.weight.detach().to(dtype))),
                              block.up.bias.detach().to(dtype).contiguous()
                              if block.up.bias is not None else None)
        decoder.append((up, *pair(block)))
    head = fold_conv(model.head, nn.Identity(), dtype)
    return PackedTritonUNet(
        encoder=[pair(b) for b in model.encoder],
        bottleneck=pair(model.bottleneck),
        decoder=decoder,
        head_weight=pack_head_weight(operand(head.weight)),
        head_bias=head.bias.contiguous(),
    )


def allow_tf32_for(dtype: torch.dtype) -> bool:
    """Whether an fp32 convolution may use TF32, by PyTorch's own rule for convolutions."""
    return dtype == torch.float32 and torch.backends.cudnn.allow_tf32


class CudaTritonBackend:
    """The GPU inference backend (see the module docstring).

    Args:
        fuse_pool: write the 2x2 max-pool from the encoder convolution's epilogue (default); with
            False a standalone ``maxpool2x2`` kernel runs after it instead (same numbers; for
            debugging and for comparing the two on a GPU).
        cuda_graphs: capture the whole forward in a CUDA graph per (input shape, dtype, TF32
            setting) and replay it: one launch instead of ~22, whose host time exceeds the GPU's
            at batch 1 (benchmarks/NOTES.md). Graphs live in ``model.weight_cache`` (so they are
            rebuilt when the weights change) and each holds its own activation memory; the first
            call per shape runs the forward twice (warm-up, capture). None (default): for
            batches of at most ``_graphs.AUTO_MAX_BATCH`` (4); True: every batch; False: never.
            Never while the caller captures a graph itself (the kernels are recorded into it).
        max_graphs: how many input shapes keep a graph (least recently used dropped first).
        self_check: before the kernels first serve a (device, dtype, TF32 setting, network
            config), check them on a small input against stock PyTorch and float64
            (:mod:`.self_check`); on a failure or an exception warn once and serve that key with
            the stock path (:mod:`.stock`: cuDNN, BatchNorm folded, the same ``cuda_graphs``)
            from then on. None (default): on CUDA inputs unless ``UNET_FAST_SELF_CHECK=0``.
        autotune: tune the 3x3 convolutions' tiles for launch shapes that have no recorded
            tuning (True), never tune (False), or follow ``UNET_FAST_AUTOTUNE`` (None, default:
            off). Untuned launches use a shape-aware default tile
            (:mod:`unet_fast.triton_kernels.tuning`), so a first call compiles one kernel per
            layer shape and times nothing.
    """

    name = "cuda-triton"
    # Every op has a fake kernel (torch.library.triton_op); under a tracer the weights are packed
    # inside the graph and no CUDA graph is captured (see unet_fast.tracing).
    traceable = True

    def __init__(self, fuse_pool: bool = True, cuda_graphs: bool | None = None,
                 max_graphs: int = 4, self_check: bool | None = None,
                 autotune: bool | None = None) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.fuse_pool = fuse_pool
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.self_check = self_check
        self.autotune = autotune
        self.fallback = StockBackend(cuda_graphs=cuda_graphs, max_graphs=max_graphs)
        # self-check outcome per key (see _check_key): True = the kernels serve it
        self.verdicts: dict[tuple, bool] = {}

    def supports(self, model: UNet, x: torch.Tensor) -> bool:
        last_c_out = model.decoder[-1].conv2.out_channels
        return (
            triton_available()
            and compute_dtype(x, model.head.weight.dtype) in _DTYPES
            and last_c_out <= MAX_HEAD_CHANNELS
        )

    def forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        if self.autotune is None:
            return self._forward(model, x)
        with autotune(self.autotune):
            return self._forward(model, x)

    def _forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x, model.head.weight.dtype)
        tf32 = allow_tf32_for(dtype)
        x = x.to(dtype).contiguous(memory_format=_CL)
        if tracing.is_tracing():
            # the weight cache keys on storage pointers, which traced (fake) tensors lack
            return self._run(pack(model, dtype, tf32), x, tf32)
        if not self._checking(x):
            return self._forward_kernels(model, x, dtype, tf32)
        key = self._check_key(model, x, dtype, tf32)
        if key not in self.verdicts:
            self.verdicts[key] = self._first_check(model, x, dtype, tf32)
        if self.verdicts[key]:
            try:
                return self._forward_kernels(model, x, dtype, tf32)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # a kernel that fails on this GPU must not fail the user
                self.verdicts[key] = False
                self._warn(x, dtype, tf32, f"{type(e).__name__}: {e}")
        return self.fallback.forward(model, x)

    def _checking(self, x: torch.Tensor) -> bool:
        if self.self_check is None:
            return x.is_cuda and self_check.enabled_by_env()
        return self.self_check

    def _check_key(self, model: UNet, x: torch.Tensor, dtype: torch.dtype, tf32: bool) -> tuple:
        return (x.device, dtype, tf32, self.fuse_pool, model.config)

    def _first_check(self, model: UNet, x: torch.Tensor, dtype: torch.dtype, tf32: bool) -> bool:
        def kernels(t: torch.Tensor) -> torch.Tensor:
            with autotune(False):  # the check's small shapes are not worth tuning time
                return self._run(self._packed(model, t, dtype, tf32), t, tf32)

        try:
            verdict = self_check.run_check(model, x.device, dtype, kernels)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            self._warn(x, dtype, tf32, f"{type(e).__name__}: {e}")
            return False
        if not verdict.ok:
            self._warn(x, dtype, tf32, verdict.reason)
        return verdict.ok

    @staticmethod
    def _warn(x: torch.Tensor, dtype: torch.dtype, tf32: bool, reason: str) -> None:
        import warnings

        where = (torch.cuda.get_device_name(x.device) if x.is_cuda else str(x.device))
        precision = "TF32" if tf32 else str(dtype).removeprefix("torch.")
        warnings.warn(
            f"unet_fast: the Triton kernels failed their self-check on {where} ({x.device}, "
            f"{precision}): {reason.splitlines()[0] if reason else 'no reason given'}; this "
            f"model runs on the stock cuDNN path there from now on (correct, slower). Please "
            f"report this with `unet-fast info`.", RuntimeWarning, stacklevel=4)

    def _forward_kernels(self, model: UNet, x: torch.Tensor, dtype: torch.dtype, tf32: bool
                         ) -> torch.Tensor:
        if _graphs.wanted(self.cuda_graphs, x):
            return self._replay(model, x, dtype, tf32)
        return self._run(self._packed(model, x, dtype, tf32), x, tf32)

    def _replay(self, model: UNet, x: torch.Tensor, dtype: torch.dtype, tf32: bool
                ) -> torch.Tensor:
        key = (self.name, "graph", x.device, dtype, tuple(x.shape), tf32, self.fuse_pool)
        return _graphs.replay(
            model, key, x, lambda t: self._run(self._packed(model, t, dtype, tf32), t, tf32),
            self.max_graphs)

    def _packed(self, model: UNet, x: torch.Tensor, dtype: torch.dtype, tf32: bool
                ) -> PackedTritonUNet:
        return model.weight_cache.get(model, (self.name, x.device, dtype, tf32),
                                      lambda: pack(model, dtype, tf32))

    def _run(self, packed: PackedTritonUNet, x: torch.Tensor, tf32: bool) -> torch.Tensor:
        from ..ops import fused  # noqa: F401  (registers torch.ops.unet_fast.*)

        ops = torch.ops.unet_fast
        skips = []
        for c1, c2 in packed.encoder:
            x = ops.conv3x3(x, c1.weight, c1.bias, c1.padding, True, tf32)
            if self.fuse_pool:
                skip, x = ops.conv3x3_pool(x, c2.weight, c2.bias, c2.padding, tf32)
            else:
                skip = ops.conv3x3(x, c2.weight, c2.bias, c2.padding, True, tf32)
                x = ops.maxpool2x2(skip)
            skips.append(skip)
        c1, c2 = packed.bottleneck
        x = ops.conv3x3(x, c1.weight, c1.bias, c1.padding, True, tf32)
        x = ops.conv3x3(x, c2.weight, c2.bias, c2.padding, True, tf32)
        last = len(packed.decoder) - 1
        for i, ((up, c1, c2), skip) in enumerate(zip(packed.decoder, reversed(skips), strict=True)):
            if up is not None:
                x = ops.upconv2x2(x, up.weight, up.bias, tf32)
            else:
                x = ops.upsample_bilinear2x(x)
            x = ops.conv3x3_cat(skip, x, c1.weight, c1.bias, c1.padding, True, tf32)
            if i < last:
                x = ops.conv3x3(x, c2.weight, c2.bias, c2.padding, True, tf32)
            else:
                x = ops.conv3x3_head(x, c2.weight, c2.bias, packed.head_weight,
                                     packed.head_bias, c2.padding, tf32)
        return x
