"""One row's life, in phases the runner can run back to back (GPU: :func:`run_row`) or spread
over a case (CPU: every row prepared and measured, then all timed interleaved):

* :func:`prepare_row`: build the model (or the OpenVINO / ONNX Runtime session) and make the
  first call (torch.compile's compilation, bounded by ``--compile-timeout``);
* :func:`time_row`: the timed calls of one row alone;
* :func:`measure_row`: one call for peak memory and the error against the float64 reference;
* :func:`finish_row`: the rates from the median time.

No phase raises for a failing row: the row records its status and error."""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

import unet_fast

from . import runtimes
from .cases import Case, compare
from .memory import MemoryProbe
from .options import BenchOptions
from .rows import RowSpec, build_module, capture_graph, make_call, row_flags
from .timing import CompileTimeout, Limit, time_cpu, time_cuda, time_limit


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cleanup(device: str, compiled: bool) -> None:
    # dynamo's caches hold the compiled graphs: drop them first so the collection frees them
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception:  # a broken context is reported by device_error, not here
            pass


def find_compile_timeout(exc: BaseException) -> CompileTimeout | None:
    """The :class:`CompileTimeout` behind ``exc``: dynamo re-raises what its backend raised inside
    its own exceptions (``BackendCompilerFailed.inner_exception``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CompileTimeout):
            return e
        todo += [getattr(e, "inner_exception", None), e.__cause__, e.__context__]
    return None


def row_head(spec: RowSpec, case: Case, batch: int) -> dict:
    """The fields every row has, whatever its outcome."""
    return {
        "case": case.key, "model": case.model, "kind": case.kind, "size": case.size,
        "batch": batch, "row": spec.name, "impl": spec.impl, "precision": spec.precision,
        "description": spec.description, "status": "ok", "error": None, "notes": [],
        **({"env": dict(spec.env)} if spec.env else {}),
    }


@contextlib.contextmanager
def _registered(device_type: str, backend) -> Iterator[None]:
    """Put ``backend`` first for ``device_type`` for the block, then restore the registry."""
    from .. import dispatch

    saved = list(dispatch._REGISTRY.get(device_type, []))
    dispatch.register_backend(device_type, backend)
    try:
        yield
    finally:
        dispatch._REGISTRY[device_type] = saved


def backend_graphs():
    """A context that makes the CUDA backend replay per-shape CUDA graphs, or None when this
    build's backend has no such option."""
    try:
        from ..backends.cuda_triton import CudaTritonBackend

        backend = CudaTritonBackend(cuda_graphs=True)
    except (ImportError, TypeError):
        return None
    return _registered("cuda", backend)


def _backend_name(module, spec: RowSpec, x: torch.Tensor, device: str) -> str:
    if not spec.fast:
        return "torch.compile/inductor" if spec.compile_mode else "pytorch-eager"
    with torch.inference_mode():
        if spec.autocast is not None:
            with torch.autocast(device, dtype=spec.autocast):
                return module.backend_name(x)
        return module.backend_name(x)


@dataclass
class LiveRow:
    """A row between its phases: its record, its callable (None once it cannot go on), what
    keeps the callable's model alive, its memory probe, and the contexts (backend flags, the
    CUDA backend's graphs) open while it runs."""

    spec: RowSpec
    row: dict
    probe: MemoryProbe
    call: Callable[[torch.Tensor], torch.Tensor] | None = None
    keep: list = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def ready(self) -> bool:
        """Whether the row is still running (prepared, nothing failed)."""
        return self.call is not None and self.row["status"] == "ok"

    def fail(self, e: BaseException) -> None:
        self.row.update(status="error", error=f"{type(e).__name__}: {e}".strip())
        self.row["traceback"] = traceback.format_exc(limit=6)
        self.call = None

    def release(self) -> None:
        """Close the row's contexts and drop its model."""
        self.stack.close()
        self.call = None
        self.keep.clear()


def _skip_reason(spec: RowSpec, case: Case, opts: BenchOptions) -> tuple[str, str] | None:
    """(status, error) of a row that does not start, or None."""
    if case.kind == "image" and getattr(unet_fast, "segment", None) is None:
        return "not_available", "unet_fast.segment is not available in this build"
    if spec.compile_mode and opts.quick:
        return "skipped", "torch.compile rows are skipped with --quick"
    if spec.cuda_graph and opts.device != "cuda":
        return "skipped", "CUDA graphs need a CUDA device"
    if spec.runtime:
        if case.kind == "image":
            return "skipped", runtimes.IMAGE_NOTE
        reason = runtimes.unavailable(spec.runtime, spec.precision)
        if reason is not None:
            return "skipped", reason
    return None


def _prepare_runtime(live: LiveRow, case: Case, inputs: list[torch.Tensor], state: dict,
                     exports: runtimes.Exports) -> Callable[[torch.Tensor], torch.Tensor]:
    spec, row = live.spec, live.row
    shape = tuple(inputs[0].shape)
    path = exports.path(case.config, state, shape)
    call, settings, handle = runtimes.runtime_call(spec.runtime, spec.precision, path,
                                                   torch.get_num_threads())
    live.keep.append(handle)
    row["settings"] = settings
    row["backend"] = runtimes.backend_label(spec.runtime)
    row["onnx_export_s"] = exports.seconds.get(shape)
    row["notes"].append("reference network exported by torch.onnx.export (dynamo) at the fixed "
                        f"input shape {list(shape)}; the export is not timed")
    return call


def prepare_row(spec: RowSpec, case: Case, batch: int, inputs: list[torch.Tensor], state: dict,
                opts: BenchOptions, time_left: float | None = None,
                exports: runtimes.Exports | None = None) -> LiveRow:
    """Build the row and make its first call; ``live.ready`` says whether it can be timed.

    ``time_left`` (seconds before ``--deadline``) caps a torch.compile row's first call below
    ``--compile-timeout``; ``exports`` holds the ONNX files the runtime rows of this case share
    (the caller closes it)."""
    device = opts.device
    live = LiveRow(spec, row_head(spec, case, batch), MemoryProbe(device))
    row = live.row
    skip = _skip_reason(spec, case, opts)
    library_graphs = None
    if skip is None and spec.cuda_graph and case.kind == "image":
        # segment() builds tile indices on the host every call, so the harness cannot capture it
        # whole; the backend's own per-shape graphs replay each tile batch's forward instead
        library_graphs = backend_graphs()
        if library_graphs is None:
            skip = ("skipped", "unet_fast.segment builds its tile indices on the host every call, "
                               "so the harness does not capture it, and this build's CUDA backend "
                               "has no cuda_graphs option")
    if skip is not None:
        row.update(status=skip[0], error=skip[1])
        return live

    limit: Limit | None = None
    try:
        live.probe.start()  # synchronizes: an earlier sticky CUDA error surfaces here
        flags = live.stack.enter_context(row_flags(spec))
        if library_graphs is not None:
            live.stack.enter_context(library_graphs)
        # the cuDNN/TF32 flags mean nothing to the CPU rows
        row["settings"] = flags if device == "cuda" else {"threads": torch.get_num_threads()}
        if spec.runtime:
            if exports is None:
                raise ValueError("a runtime row needs the case's runtimes.Exports")
            call = _prepare_runtime(live, case, inputs, state, exports)
        else:
            module = build_module(spec, case.config, state, device)
            live.keep.append(module)
            if spec.fast:
                row["backend"] = _backend_name(module, spec, inputs[0][:1], device)
                if getattr(module, "check_finite", False):
                    row["notes"].append("check_finite=True (the library default)")
            if spec.compile_mode:
                module = torch.compile(
                    module, mode=None if spec.compile_mode == "default" else spec.compile_mode)
                live.keep.append(module)
                row["backend"] = f"inductor ({spec.compile_mode})"
            elif not spec.fast:
                row["backend"] = "pytorch-eager"
            image_fn = None
            if case.kind == "image":
                tile = opts.tile_size
                segment = unet_fast.segment

                def image_fn(m, x, _seg=segment, _tile=tile):
                    return _seg(m, x, tile_size=_tile, output="logits")

                row["tile_size"] = tile if tile is not None else "auto"
            call = make_call(spec, module, device, image_fn)

        t0 = time.perf_counter()
        seconds = None
        if spec.compile_mode:
            seconds = opts.compile_timeout
            if time_left is not None:
                seconds = max(min(seconds, time_left), 1.0)
        with time_limit(seconds) as limit:
            call(inputs[0])
            _sync(device)
        row["first_call_s"] = time.perf_counter() - t0
        if limit.fired:  # every alarm was caught inside torch and the compile finished
            row["notes"].append(f"torch.compile caught the --compile-timeout alarm "
                                f"({limit.seconds:.4g} s) and went on; the compiled code may "
                                "have taken a fallback")
        if spec.cuda_graph and library_graphs is None:
            call = capture_graph(call, inputs[0])
            row["notes"].append("timed call = copy into the static input + graph replay")
        elif spec.cuda_graph:
            row["notes"].append("segment() with the CUDA backend's per-shape graphs "
                                "(CudaTritonBackend(cuda_graphs=True)) replaying each tile "
                                "batch")
        live.call = call
    except Exception as e:
        timeout = find_compile_timeout(e)
        if timeout is not None or (limit is not None and limit.fired):
            what = str(timeout) if timeout is not None else f"took longer than {limit.seconds:.4g} s"
            if limit is not None and limit.seconds is not None and \
                    limit.seconds < opts.compile_timeout:
                row.update(status="skipped", error=f"torch.compile {what}, the time left before "
                                                   "--deadline")
            else:
                row.update(status="skipped",
                           error=f"torch.compile {what}; raise --compile-timeout to run it")
        else:
            live.fail(e)
        live.release()
    return live


def time_row(live: LiveRow, inputs: list[torch.Tensor], opts: BenchOptions) -> None:
    """The row's timed calls, alone (the GPU's way; the CPU times a case's rows interleaved)."""
    if not live.ready:
        return
    try:
        if opts.device == "cuda":
            stats = time_cuda(live.call, inputs, opts.repeats, opts.warmup)
        else:
            warm = opts.warmup if opts.warmup is not None else 1
            stats = time_cpu(live.call, inputs, opts.repeats or 5, warm)
        live.row.update(stats)
    except Exception as e:
        live.fail(e)


def measure_row(live: LiveRow, inputs: list[torch.Tensor], ref_out: torch.Tensor | None,
                device: str) -> None:
    """One call on input set 0: the row's peak memory and its error against ``ref_out``."""
    if not live.ready:
        return
    row, probe = live.row, live.probe
    try:
        probe.arm()
        out = live.call(inputs[0])
        _sync(device)
        row["peak_mem_mb"] = probe.peak_mb()
        if probe.parts is not None:
            row["peak_mem_parts"] = probe.parts
        row["output_dtype"] = str(out.dtype).replace("torch.", "")
        if ref_out is not None:
            row.update(compare(out[0], ref_out))
        del out
    except Exception as e:
        live.fail(e)


def finish_row(live: LiveRow, case: Case, batch: int) -> dict:
    """The row's record, with images/s and FLOP rates when it ran."""
    row = live.row
    if row["status"] == "ok" and "median_ms" in row:
        sec = row["median_ms"] / 1e3
        row["images_per_s"] = batch / sec
        row["flops"] = case.flops_per_image * batch
        row["tflops"] = row["flops"] / sec / 1e12
        row["mem_note"] = live.probe.note
    return row


def run_row(spec: RowSpec, case: Case, batch: int, inputs: list[torch.Tensor],
            ref_out: torch.Tensor | None, state: dict, opts: BenchOptions,
            time_left: float | None = None) -> dict:
    """Measure one implementation on one case and batch alone: prepare, time, measure, release.
    Never raises for a failing row."""
    exports = runtimes.Exports()
    live = prepare_row(spec, case, batch, inputs, state, opts, time_left, exports)
    try:
        time_row(live, inputs, opts)
        measure_row(live, inputs, ref_out, opts.device)
    finally:
        live.release()
        exports.close()
        _cleanup(opts.device, bool(spec.compile_mode))
    return finish_row(live, case, batch)
