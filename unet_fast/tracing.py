"""What a traced forward contains (``torch.export``, ``torch.onnx``, ``torch.jit.trace``,
``torch.compile``), decided in one place.

* Exporters (``torch.export.export``, the default dynamo ``torch.onnx.export`` that runs it,
  ``torch.jit.trace`` and the legacy ONNX exporter) get the *portable graph*: the reference
  network in plain ATen ops (``conv2d``, ``relu``, ``max_pool2d``, ``conv_transpose2d``, ``cat``),
  with eval-mode BatchNorm folded into the convolutions, the fold computed in float64 inside the
  graph from the model's own parameters, exactly as the backends fold it. The artifact runs on any
  runtime (ONNX Runtime, AOTInductor, TorchScript) and keeps the parameters as its inputs, so a
  ``state_dict`` still maps onto it. Train-mode BatchNorm/dropout are not foldable: the reference
  ops go in unchanged.
* ``torch.compile`` keeps each device's traceable backend: on CUDA the
  ``torch.ops.unet_fast.*`` Triton ops, whose fake kernels let Dynamo and Inductor trace them
  (weights packed inside the graph, no CUDA graphs: Inductor has its own). The CPU backend's
  oneDNN prepacked weights live in an eager-only cache, so on CPU the compiler gets the portable
  graph and lowers it to oneDNN itself. With autograd recording the reference ops go in, so a
  compiled model still trains.
* To put the Triton ops into an exported program (AOTInductor on CUDA), export inside
  :func:`kernels_in_export`.

The NaN/Inf input check (``UNet.check_finite``) becomes ``torch._assert_async`` in a traced graph
of CPU tensors: the compiled or exported program still refuses a non-finite input (with a
RuntimeError instead of eager's ValueError). On CUDA tensors a traced graph does not check: the
assert would be a device-side assert, after which the process's CUDA context is unusable. ONNX
has no assert operator and ``torch.jit.trace`` drops ops whose result is unused, so ONNX models
and TorchScript traces do not check either: clean inputs before them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

_KERNELS_IN_EXPORT: ContextVar[bool] = ContextVar("unet_fast_kernels_in_export", default=False)


def is_tracing() -> bool:
    """Whether the current forward is being traced rather than run (any tracer)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def is_exporting() -> bool:
    """Whether the trace becomes a standalone artifact (export, ONNX, TorchScript)."""
    return (torch.jit.is_tracing() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export())


def kernels_wanted() -> bool:
    """Whether an export should keep the device's custom ops (see :func:`kernels_in_export`)."""
    return _KERNELS_IN_EXPORT.get()


@contextlib.contextmanager
def kernels_in_export(enabled: bool = True) -> Iterator[None]:
    """Exports inside this block keep the custom ``torch.ops.unet_fast.*`` ops of a traceable
    backend (the Triton ops on CUDA) instead of the portable graph: for AOTInductor packages that
    should run the project's kernels. Such a program needs ``unet_fast`` (and Triton) wherever it
    is loaded, and has no ONNX translation."""
    token = _KERNELS_IN_EXPORT.set(enabled)
    try:
        yield
    finally:
        _KERNELS_IN_EXPORT.reset(token)
