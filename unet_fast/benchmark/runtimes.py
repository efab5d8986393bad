"""The inference runtimes unet_fast is compared with on the CPU: OpenVINO and ONNX Runtime.

Both run the reference network with the benchmark's weights, exported once per (case, batch) by
``torch.onnx.export`` (the default, dynamo exporter) at the case's fixed input shape, so the two
runtimes load the same graph. Each row is one compiled model or session with one inference
request, latency mode, as many threads as torch uses. Neither library is a dependency (the
``bench`` extra installs them); a row whose library is missing is skipped with the reason."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import reference
from ..config import UNetConfig

RUNTIMES = ("openvino", "onnxruntime")
INSTALL_HINT = "pip install -e '.[bench]'"
# OpenVINO's names for the row precisions (its inference precision hint)
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
ORT_BF16_NOTE = ("ONNX Runtime's CPU execution provider has no fast bf16 convolution (a bf16 "
                 "graph runs slower than fp32), so this row is not run")
IMAGE_NOTE = ("the whole-image case runs through unet_fast.segment, which needs a torch module; "
              "the runtimes are compared on the tile cases")


def versions() -> dict[str, str | None]:
    """Installed versions of the runtimes and of the ONNX export's packages (None: absent)."""
    out = {}
    for name in (*RUNTIMES, "onnx", "onnxscript"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _missing(module: str, why: str) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{why} ({type(e).__name__}: {e}); install the bench extra: {INSTALL_HINT}"
    return None


def unavailable(runtime: str, precision: str) -> str | None:
    """Why a ``runtime`` row of ``precision`` cannot run here, or None when it can."""
    if runtime == "onnxruntime" and precision != "fp32":
        return ORT_BF16_NOTE
    reason = _missing(runtime, f"{runtime} is not installed")
    if reason is None:
        reason = _missing("onnxscript", "torch.onnx.export needs onnx and onnxscript")
    return reason


class Exports:
    """ONNX files of the reference network, one per input shape, in a temporary folder that
    :meth:`close` removes (both runtimes have read their model by then)."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._paths: dict[tuple, Path] = {}
        self.seconds: dict[tuple, float] = {}

    def path(self, config: UNetConfig, state: dict, shape: tuple[int, ...]) -> Path:
        """The ONNX file for ``shape`` (NCHW), exported on first use."""
        if shape not in self._paths:
            import time

            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="unet_fast-bench-onnx-"))
            model = reference.UNet(**config.to_dict()).eval()
            model.load_state_dict(state)
            path = self._dir / f"unet-{'x'.join(map(str, shape))}.onnx"
            t0 = time.perf_counter()
            # the exporter reports its progress on stdout, which carries the results table
            with contextlib.redirect_stdout(sys.stderr), torch.inference_mode(False):
                torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["x"],
                                  output_names=["logits"], verbose=False)
            self.seconds[shape] = time.perf_counter() - t0
            self._paths[shape] = path
        return self._paths[shape]

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._paths.clear()


def _conv_precisions(compiled) -> dict[str, dict[str, int]]:
    """Per convolution layer type of OpenVINO's executable graph, how many run in each precision
    (its ``runtimePrecision``): the evidence that an f32 row did not run in bf16."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if "onvolution" in kind:
            prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            counts[(kind, prec)] += 1
    out: dict[str, dict[str, int]] = {}
    for (kind, prec), n in sorted(counts.items()):
        out.setdefault(kind, {})[prec] = n
    return out


@functools.cache
def _openvino_core():
    """One OpenVINO Core for the process. Each Core's CPU plugin installs an alternate signal
    stack on the calling thread and puts back the one it found when it goes; two Cores released
    out of order (first in, first out) leave the thread on a freed stack, and the next signal
    (``--compile-timeout``'s SIGALRM) kills the process. One Core never goes."""
    import openvino as ov

    return ov.Core()


def openvino_call(onnx_path: Path, precision: str, threads: int
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict, object]:
    """``fn(x)`` running the ONNX model with OpenVINO on the CPU; the settings it runs under,
    read back from the compiled model; and the object that keeps it alive."""
    core = _openvino_core()
    # f32 is set explicitly: on CPUs with bf16/AMX OpenVINO's default inference precision is bf16
    config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    request = compiled.create_infer_request()
    settings = {"threads": threads, "requested": config}
    # what the compiled model says it runs with (a hint the CPU cannot honour is dropped)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    settings["INFERENCE_PRECISION_HINT"] = got.get_type_name()
    for key in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING",
                "ENABLE_HYPER_THREADING"):
        with contextlib.suppress(Exception):
            settings[key] = str(compiled.get_property(key))
    settings["conv_runtime_precision"] = _conv_precisions(compiled)
    if got.get_type_name() != OV_PRECISION[precision]:
        raise RuntimeError(f"OpenVINO compiled the model with inference precision "
                           f"{got.get_type_name()}, not {OV_PRECISION[precision]} (does this CPU "
                           "support it?)")

    def call(x: torch.Tensor) -> torch.Tensor:
        result = request.infer(np.ascontiguousarray(x.numpy()), share_inputs=True)
        return torch.from_numpy(next(iter(result.values())))  # a copy (share_outputs=False)

    return call, settings, (compiled, request)


def onnxruntime_call(onnx_path: Path, threads: int
                     ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict, object]:
    """``fn(x)`` running the ONNX model in an ONNX Runtime CPU session (fp32); its settings;
    and the session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    settings = {"threads": threads, "inter_op_threads": 1, "execution_mode": "sequential",
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "providers": session.get_providers()}

    def call(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    return call, settings, session


def runtime_call(runtime: str, precision: str, onnx_path: Path, threads: int
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict, object]:
    """The row's callable, settings and keep-alive object for ``runtime`` ("openvino" or
    "onnxruntime")."""
    if runtime == "openvino":
        return openvino_call(onnx_path, precision, threads)
    if runtime == "onnxruntime":
        return onnxruntime_call(onnx_path, threads)
    raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")


def backend_label(runtime: str) -> str:
    """The row's ``backend`` column: library, version, device plugin."""
    version = versions().get(runtime)
    return {"openvino": f"openvino {version} CPU plugin",
            "onnxruntime": f"onnxruntime {version} CPUExecutionProvider"}[runtime]
