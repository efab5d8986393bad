"""The implementations compared (one row each) and how each turns into a callable ``fn(x)`` that
takes an NCHW float32 batch on the device and returns logits. A row's precision flags
(TF32, ``cudnn.benchmark``) are set explicitly while it runs, so the table states them."""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .. import reference
from ..config import UNetConfig
from .flags import backend_flags

_CL = torch.channels_last
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RowSpec:
    """One implementation: which model, layout, precision, compiler and graph mode."""

    name: str
    # eager | eager-cl | compile | compile-max-autotune | unet_fast | unet_fast-graph | openvino |
    # onnxruntime
    impl: str
    precision: str  # fp32 | tf32 | bf16 | fp16 (the arithmetic the convolutions run in)
    description: str
    fast: bool = False
    channels_last: bool = False
    compile_mode: str | None = None  # "default" | "max-autotune"
    cuda_graph: bool = False
    flags: dict = field(default_factory=dict)
    runtime: str | None = None  # "openvino" | "onnxruntime": another library runs the network
    # environment variables set while the row's calls run (a unet_fast option that is off by
    # default: its plan is made on its first call); such rows are reported beside the default
    # configuration, never as unet_fast's best
    env: dict = field(default_factory=dict)

    @property
    def autocast(self) -> torch.dtype | None:
        return _AUTOCAST.get(self.precision)


def cpu_rows() -> list[RowSpec]:
    return [
        RowSpec("eager-nchw-fp32", "eager", "fp32", "reference U-Net, eager, NCHW, fp32"),
        RowSpec("eager-cl-fp32", "eager-cl", "fp32", "eager, channels_last, fp32",
                channels_last=True),
        RowSpec("eager-cl-bf16", "eager-cl", "bf16", "eager, channels_last, bf16 autocast",
                channels_last=True),
        RowSpec("compile-fp32", "compile", "fp32", "torch.compile (default mode), NCHW, fp32",
                compile_mode="default"),
        RowSpec("unet_fast-fp32", "unet_fast", "fp32", "unet_fast.UNet, fp32", fast=True),
        RowSpec("unet_fast-bf16", "unet_fast", "bf16", "unet_fast.UNet, bf16 autocast",
                fast=True),
        RowSpec("unet_fast-bf16-winograd", "unet_fast", "bf16",
                "unet_fast.UNet, bf16 autocast, UNET_FAST_CPU_BF16_WINOGRAD=1 (F(2x2) measured "
                "too: faster with AMX, lower label agreement)", fast=True,
                env={"UNET_FAST_CPU_BF16_WINOGRAD": "1"}),
        RowSpec("openvino-fp32", "openvino", "fp32",
                "OpenVINO CPU, the exported ONNX graph, inference precision f32, latency mode",
                runtime="openvino"),
        RowSpec("openvino-bf16", "openvino", "bf16",
                "OpenVINO CPU, the exported ONNX graph, inference precision bf16, latency mode",
                runtime="openvino"),
        RowSpec("onnxruntime-fp32", "onnxruntime", "fp32",
                "ONNX Runtime CPUExecutionProvider, the exported ONNX graph, fp32",
                runtime="onnxruntime"),
        RowSpec("onnxruntime-bf16", "onnxruntime", "bf16",
                "ONNX Runtime, bf16: not run (no fast bf16 convolution on its CPU provider)",
                runtime="onnxruntime"),
    ]


def cuda_rows() -> list[RowSpec]:
    tf32 = {"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": True}
    strict = {"cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False}
    bench = {"cudnn.benchmark": True}
    rows = [
        RowSpec("eager-nchw-tf32", "eager", "tf32",
                "reference, eager, NCHW, fp32 tensors with cudnn.allow_tf32=True (PyTorch's "
                "default for convolutions)", flags={**tf32, "cudnn.benchmark": False}),
        RowSpec("eager-nchw-fp32", "eager", "fp32",
                "reference, eager, NCHW, fp32 with TF32 off",
                flags={**strict, "cudnn.benchmark": False}),
        RowSpec("eager-cl-bf16", "eager-cl", "bf16",
                "eager, channels_last, cudnn.benchmark, bf16 autocast", channels_last=True,
                flags=bench),
        RowSpec("eager-cl-fp16", "eager-cl", "fp16",
                "eager, channels_last, cudnn.benchmark, fp16 autocast", channels_last=True,
                flags=bench),
        RowSpec("compile-bf16", "compile", "bf16",
                "torch.compile (default), channels_last, cudnn.benchmark, bf16 autocast",
                channels_last=True, compile_mode="default", flags=bench),
        RowSpec("compile-max-autotune-bf16", "compile-max-autotune", "bf16",
                "torch.compile(mode='max-autotune'), channels_last, bf16 autocast",
                channels_last=True, compile_mode="max-autotune", flags=bench),
    ]
    for graph in (False, True):
        for prec, flags in (("fp32", strict), ("tf32", tf32), ("bf16", {}), ("fp16", {})):
            suffix = "-graph" if graph else ""
            how = "fp32 with TF32 off" if prec == "fp32" else (
                "fp32 tensors, cudnn.allow_tf32=True" if prec == "tf32" else f"{prec} autocast")
            rows.append(RowSpec(
                f"unet_fast-{prec}{suffix}", "unet_fast-graph" if graph else "unet_fast", prec,
                f"unet_fast.UNet, {how}" + (", whole forward replayed as a CUDA graph"
                                            if graph else ""),
                fast=True, cuda_graph=graph, flags=flags))
    return rows


def all_rows(device: str) -> list[RowSpec]:
    return cuda_rows() if device == "cuda" else cpu_rows()


def select_rows(device: str, patterns: list[str] | None, dtypes: list[str]) -> list[RowSpec]:
    """Rows of ``device`` whose precision is in ``dtypes`` and whose name matches any of
    ``patterns`` (fnmatch; None or only exclusions: all) and no ``!pattern`` exclusion; raises
    ValueError for a pattern that matches no row."""
    rows = all_rows(device)
    patterns = patterns or []
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(r.name, pat.removeprefix("!")) for r in rows):
            raise ValueError(f"--rows {pat!r} matches no {device} row; valid: "
                             + ", ".join(r.name for r in rows))
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    if include:
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r.name, p) for p in include)]
    rows = [r for r in rows if not any(fnmatch.fnmatchcase(r.name, p) for p in exclude)]
    return [r for r in rows if r.precision in dtypes]


@contextlib.contextmanager
def row_flags(spec: RowSpec) -> Iterator[dict]:
    """Set the row's backend flags and yield the full flag state it runs under."""
    with backend_flags(spec.flags) as state:
        yield state


def build_module(spec: RowSpec, config: UNetConfig, state: dict, device: str) -> torch.nn.Module:
    """A fresh model of the row's class holding its own copy of the weights on ``device``."""
    from ..model import UNet as FastUNet

    cls = FastUNet if spec.fast else reference.UNet
    with torch.device("meta"):
        model = cls(**config.to_dict())
    model.load_state_dict({k: v.to(device, copy=True) for k, v in state.items()}, assign=True)
    model.eval().requires_grad_(False)
    if spec.channels_last:
        model = model.to(memory_format=_CL)
    if spec.cuda_graph:
        # the finite-input check reads the input back to the host, which a graph cannot capture
        model.check_finite = False
    return model


@contextlib.contextmanager
def _environment(env: dict) -> Iterator[None]:
    """Set ``env`` in os.environ for the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_call(spec: RowSpec, module: Callable, device: str, image_fn: Callable | None
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(x)``: the row's whole inference call (layout change and autocast included), either
    ``module(x)`` or, for an image case, ``image_fn(module, x)``."""
    autocast = spec.autocast
    # a captured graph must not keep autocast's cached weight casts alive outside the capture
    cache = not spec.cuda_graph

    def call(x: torch.Tensor) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_environment(spec.env))
            stack.enter_context(torch.inference_mode())
            if autocast is not None:
                stack.enter_context(torch.autocast(device, dtype=autocast, cache_enabled=cache))
            if spec.channels_last:
                x = x.contiguous(memory_format=_CL)
            return module(x) if image_fn is None else image_fn(module, x)

    return call


def capture_graph(call: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Capture ``call`` on a static input as a CUDA graph; the returned ``fn(x)`` copies ``x`` into
    the static input and replays (the copy is part of what is timed)."""
    static_in = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # lazy init, packing and autotuning happen outside the capture
            call(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = call(static_in)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    replay.graph = graph  # keeps the graph (and its memory pool) alive with the callable
    return replay
