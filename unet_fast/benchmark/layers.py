"""Per-layer accounting of the GPU forward: which ``torch.ops.unet_fast`` op each layer runs, its
shapes, its FLOPs, the fewest bytes it must move, and the floor time those give on a device.

The plan is recorded from the ``cuda-triton`` backend's own forward, run on the ``meta`` device
(the ops' fakes give every shape), so it cannot drift from what the backend launches. Floors
follow ``/work/.library/device/METHOD.md``: ``max(FLOPs / matmul rate, bytes / copy bandwidth)``;
the larger term says whether a layer is bound by arithmetic or by memory.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..config import UNetConfig

# precision name -> (compute dtype, TF32 allowed), as the benchmark names its rows
PRECISIONS = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
              "fp32": (torch.float32, False), "tf32": (torch.float32, True)}


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """The network options shared by ``benchmarks/layers.py`` and ``compile_report.py``."""
    p.add_argument("--model", choices=("paper", "same"), default="paper",
                   help="paper: valid padding, 1 channel; same: same padding, 3 channels (the "
                        "benchmark's two networks)")
    p.add_argument("--upsample", choices=("transpose", "bilinear"), default="transpose",
                   help="decoder up-sampling (default transpose, as the benchmark)")
    p.add_argument("--size", type=int, help="input height = width (default 572 paper, 512 same)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--classes", type=int, default=2)


def network_from_args(args: argparse.Namespace) -> tuple[UNetConfig, int]:
    """The configuration and input size those options name; ValueError for invalid ones."""
    from ..sizes import check_input_size
    from .cases import network_config, network_size

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    cfg = network_config(args.model, classes=args.classes, base_channels=args.base_channels,
                         depth=args.depth, upsample=args.upsample)
    size = args.size or network_size(args.model, args.depth)
    check_input_size(size, cfg.depth, cfg.padding)
    return cfg, size


@dataclass(frozen=True)
class TensorSpec:
    """Shape, strides and dtype of one tensor argument (NCHW logical order)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize

    def empty(self, device: str | torch.device) -> torch.Tensor:
        """An uninitialised tensor of this spec (for compiling, never for running)."""
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=device)

    def random(self, device: str | torch.device, generator: torch.Generator) -> torch.Tensor:
        """A tensor of this spec filled with N(0, 1) values (never zeros: METHOD.md)."""
        size = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        flat = torch.randn(size, dtype=torch.float32, device=device, generator=generator)
        return flat.to(self.dtype).as_strided(self.shape, self.stride)


@dataclass(frozen=True)
class Layer:
    """One op call of the forward pass.

    ``args`` is the op's argument list with every tensor replaced by its :class:`TensorSpec`, so
    the call can be replayed on real tensors (:func:`materialize`). ``flops`` counts 2 per
    multiply-add of the convolutions (as :mod:`unet_fast.flops`); ``min_bytes`` reads every input
    element the op needs once and writes every output once (for the decoder's first conv: the
    cropped window of the skip, not all of it).
    """

    name: str
    op: str
    args: tuple
    outputs: tuple[TensorSpec, ...]
    flops: int
    min_bytes: int

    def floor_ms(self, tflops: float, bandwidth_gbs: float) -> tuple[float, str]:
        """The floor time in ms at a matmul rate (TFLOP/s) and a copy bandwidth (GB/s), and which
        term sets it ("math" or "memory")."""
        math_ms = self.flops / (tflops * 1e12) * 1e3
        mem_ms = self.min_bytes / (bandwidth_gbs * 1e9) * 1e3
        return (math_ms, "math") if math_ms >= mem_ms else (mem_ms, "memory")

    def materialize(self, device: str | torch.device, generator: torch.Generator) -> tuple:
        """The call's arguments as real random tensors on ``device``."""
        return tuple(a.random(device, generator) if isinstance(a, TensorSpec) else a
                     for a in self.args)

    def callable(self) -> Callable[..., object]:
        """The ``torch.ops.unet_fast`` op this layer calls."""
        from ..ops import fused  # noqa: F401  (registers the ops)

        return getattr(torch.ops.unet_fast, self.op).default


@dataclass
class LayerPlan:
    """Every op call of one forward pass, in launch order."""

    config: UNetConfig
    batch: int
    height: int
    width: int
    dtype: torch.dtype
    tf32: bool = False
    layers: list[Layer] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def min_bytes(self) -> int:
        return sum(layer.min_bytes for layer in self.layers)


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, tuple[torch.Tensor, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "unet_fast":
            outs = out if isinstance(out, tuple) else (out,)
            self.calls.append((func._opname, tuple(args), outs))
        return out


def _layer_names(depth: int, bilinear: bool) -> Iterator[str]:
    """Names in the backend's launch order (see ``CudaTritonBackend._run``)."""
    for i in range(depth):
        yield f"enc{i}.conv1"
        yield f"enc{i}.conv2+pool"
    yield "bottleneck.conv1"
    yield "bottleneck.conv2"
    for j in range(depth):
        yield f"dec{j}.upsample" if bilinear else f"dec{j}.upconv"
        yield f"dec{j}.cat+conv1"
        yield f"dec{j}.conv2+head" if j == depth - 1 else f"dec{j}.conv2"


def _cost(op: str, args: tuple, outs: tuple[TensorSpec, ...]) -> tuple[int, int]:
    """(FLOPs, fewest bytes) of one call."""
    tensors = [a for a in args if isinstance(a, TensorSpec)]
    out_bytes = sum(o.nbytes for o in outs)
    out0 = outs[0]
    if op in ("conv3x3", "conv3x3_pool", "conv3x3_cat", "conv3x3_head"):
        if op == "conv3x3_cat":
            skip, weight = tensors[0], tensors[2]
            n, _, h_out, w_out = out0.shape
            pad = args[4]
            # the window of the skip the conv reads: the cropped part (valid), all of it (same)
            h_in, w_in = h_out + 2 - 2 * pad, w_out + 2 - 2 * pad
            h_in, w_in = min(h_in, skip.shape[2]), min(w_in, skip.shape[3])
            skip_bytes = skip.nbytes * h_in * w_in // (skip.shape[2] * skip.shape[3])
            in_bytes = skip_bytes + sum(t.nbytes for t in tensors[1:])
        else:
            weight = tensors[1]
            in_bytes = sum(t.nbytes for t in tensors)
        c_out = weight.shape[1]
        k = weight.shape[0]  # 9 * C_in
        if op == "conv3x3_head":
            n, classes, h_out, w_out = out0.shape
            pixels = n * h_out * w_out
            flops = 2 * pixels * k * c_out + 2 * pixels * c_out * classes
        else:
            n, _, h_out, w_out = out0.shape
            flops = 2 * n * h_out * w_out * k * c_out
        return flops, in_bytes + out_bytes
    if op == "upconv2x2":
        x, weight = tensors[:2]
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        return 2 * pixels * weight.shape[0] * weight.shape[1], sum(t.nbytes for t in tensors) + out_bytes
    # data movement: pooling, crop + concat, and interpolation (whose few FLOPs per element are
    # not matrix work and are not counted, as in unet_fast.flops)
    return 0, sum(t.nbytes for t in tensors) + out_bytes


def layer_plan(config: UNetConfig, height: int, width: int, batch: int = 1,
               dtype: torch.dtype = torch.bfloat16, tf32: bool = False,
               fuse_pool: bool = True) -> LayerPlan:
    """Record the ``cuda-triton`` forward of ``config`` at ``batch x height x width`` in ``dtype``
    (``tf32``: fp32 convolutions allowed to use TF32, as the backend passes it to every op).

    Nothing is allocated or launched: model, packed weights and activations live on ``meta``.
    """
    from ..backends.cuda_triton import CudaTritonBackend, pack
    from ..model import UNet
    from ..ops import fused  # noqa: F401  (registers the ops and their fakes)
    from ..sizes import check_input_size

    for n in (height, width):
        check_input_size(n, config.depth, config.padding)
    with torch.device("meta"):
        model = UNet(**config.to_dict()).eval()
    packed = pack(model, dtype, tf32)
    x = torch.empty((batch, config.in_channels, height, width), dtype=dtype, device="meta",
                    memory_format=torch.channels_last)
    recorder = _OpRecorder()
    with torch.no_grad(), recorder:
        CudaTritonBackend(fuse_pool=fuse_pool)._run(packed, x, tf32=tf32)
    plan = LayerPlan(config, batch, height, width, dtype, tf32)
    names = list(_layer_names(config.depth, config.upsample == "bilinear"))
    if not fuse_pool or len(names) != len(recorder.calls):
        names = [f"{i:02d}.{op}" for i, (op, _, _) in enumerate(recorder.calls)]
    for name, (op, args, outs) in zip(names, recorder.calls, strict=True):
        spec_args = tuple(TensorSpec.of(a) if isinstance(a, torch.Tensor) else a for a in args)
        spec_outs = tuple(TensorSpec.of(o) for o in outs)
        flops, nbytes = _cost(op, spec_args, spec_outs)
        plan.layers.append(Layer(name, op, spec_args, spec_outs, flops, nbytes))
    return plan


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return f" {'-':>12s}"
    return f" {value:12.1e}" if "l2" in column else f" {value:12.4f}"


def format_plan(plan: LayerPlan, tflops: float | None = None, bandwidth_gbs: float | None = None,
                measured: dict[str, dict[str, float]] | None = None) -> str:
    """A table: per layer GFLOP, MB, floor (ms and bound; blank without ceilings) and measured
    columns (``measured[layer name][column] = ms``, or an error when the column's name holds
    "l2"), with totals (sums of times, the largest error)."""
    measured = measured or {}
    cols = list(dict.fromkeys(c for m in measured.values() for c in m))
    head = (f"{'layer':18s} {'op':20s} {'out (NCHW)':>22s} {'GFLOP':>8s} {'MB':>8s} "
            f"{'floor ms':>9s} {'bound':>6s}" + "".join(f" {c:>12s}" for c in cols))
    lines = [head, "-" * len(head)]
    total_floor = 0.0
    for layer in plan.layers:
        shape = "x".join(str(s) for s in layer.outputs[0].shape)
        row = (f"{layer.name:18s} {layer.op:20s} {shape:>22s} {layer.flops / 1e9:8.2f} "
               f"{layer.min_bytes / 1e6:8.2f}")
        if tflops and bandwidth_gbs:
            floor, bound = layer.floor_ms(tflops, bandwidth_gbs)
            total_floor += floor
            row += f" {floor:9.4f} {bound:>6s}"
        else:
            row += f" {'-':>9s} {'-':>6s}"
        for c in cols:
            row += _cell(c, measured.get(layer.name, {}).get(c))
        lines.append(row)
    lines.append("-" * len(head))
    floor_total = f"{total_floor:9.4f}" if tflops and bandwidth_gbs else f"{'-':>9s}"
    total = (f"{'sum of layers':18s} {'':20s} {'':>22s} {plan.flops / 1e9:8.2f} "
             f"{plan.min_bytes / 1e6:8.2f} {floor_total} {'':>6s}")
    for c in cols:
        vals = [m[c] for m in measured.values() if m.get(c) is not None]
        total += _cell(c, (max(vals) if "l2" in c else sum(vals)) if vals else None)
    lines.append(total)
    return "\n".join(lines)
