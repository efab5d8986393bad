"""The benchmark loop: ceilings, then every (case, batch, row) on the same inputs, each row timed,
checked against the float64 reference and measured for memory, then the ceilings again (the
better of the two measurements is the peak). A failing row is recorded with its error and the run
goes on."""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from typing import TextIO

import torch

import unet_fast

from .cases import Case, build_cases, compare, float64_reference, make_inputs, reference_model
from .ceilings import PEAK_FOR_PRECISION, best_ceilings, measure_ceilings
from .environment import environment
from .memory import MemoryProbe
from .options import BenchOptions
from .rows import RowSpec, build_module, capture_graph, make_call, row_flags, select_rows
from .timing import CompileTimeout, time_cpu, time_cuda, time_limit

SCHEMA_VERSION = 1


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cleanup(device: str, compiled: bool) -> None:
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device == "cuda":
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except RuntimeError:
            pass


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


def run_row(spec: RowSpec, case: Case, batch: int, inputs: list[torch.Tensor],
            ref_out: torch.Tensor | None, state: dict, opts: BenchOptions) -> dict:
    """Measure one implementation on one case and batch; never raises for a failing row."""
    device = opts.device
    row: dict = {
        "case": case.key, "model": case.model, "kind": case.kind, "size": case.size,
        "batch": batch, "row": spec.name, "impl": spec.impl, "precision": spec.precision,
        "description": spec.description, "status": "ok", "error": None, "notes": [],
    }
    segment = getattr(unet_fast, "segment", None)
    if case.kind == "image" and segment is None:
        row.update(status="not_available",
                   error="unet_fast.segment is not available in this build")
        return row
    if spec.compile_mode and opts.quick:
        row.update(status="skipped", error="torch.compile rows are skipped with --quick")
        return row
    if spec.cuda_graph and device != "cuda":
        row.update(status="skipped", error="CUDA graphs need a CUDA device")
        return row
    library_graphs = None
    if spec.cuda_graph and case.kind == "image":
        # segment() builds tile indices on the host every call, so the harness cannot capture it
        # whole; the backend's own per-shape graphs replay each tile batch's forward instead
        library_graphs = backend_graphs()
        if library_graphs is None:
            row.update(status="skipped",
                       error="unet_fast.segment builds its tile indices on the host every call, so "
                             "the harness does not capture it, and this build's CUDA backend has "
                             "no cuda_graphs option")
            return row

    probe = MemoryProbe(device)
    probe.start()
    module = call = None
    try:
        with row_flags(spec) as flags, (library_graphs or contextlib.nullcontext()):
            # the cuDNN/TF32 flags mean nothing to the CPU rows
            row["settings"] = flags if device == "cuda" else {"threads": torch.get_num_threads()}
            module = build_module(spec, case.config, state, device)
            if spec.fast:
                row["backend"] = _backend_name(module, spec, inputs[0][:1], device)
                if getattr(module, "check_finite", False):
                    row["notes"].append("check_finite=True (the library default)")
            if spec.compile_mode:
                module = torch.compile(
                    module, mode=None if spec.compile_mode == "default" else spec.compile_mode)
                row["backend"] = f"inductor ({spec.compile_mode})"
            elif not spec.fast:
                row["backend"] = "pytorch-eager"
            image_fn = None
            if case.kind == "image":
                tile = opts.tile_size

                def image_fn(m, x, _seg=segment, _tile=tile):
                    return _seg(m, x, tile_size=_tile, output="logits")

                row["tile_size"] = tile if tile is not None else "auto"
            call = make_call(spec, module, device, image_fn)

            t0 = time.perf_counter()
            with time_limit(opts.compile_timeout if spec.compile_mode else None):
                call(inputs[0])
                _sync(device)
            row["first_call_s"] = time.perf_counter() - t0
            if spec.cuda_graph and library_graphs is None:
                call = capture_graph(call, inputs[0])
                row["notes"].append("timed call = copy into the static input + graph replay")
            elif spec.cuda_graph:
                row["notes"].append("segment() with the CUDA backend's per-shape graphs "
                                    "(CudaTritonBackend(cuda_graphs=True)) replaying each tile "
                                    "batch")

            if device == "cuda":
                stats = time_cuda(call, inputs, opts.repeats, opts.warmup)
            else:
                warm = opts.warmup if opts.warmup is not None else 1
                stats = time_cpu(call, inputs, opts.repeats or 5, warm)
            row.update(stats)

            probe.arm()
            out = call(inputs[0])
            _sync(device)
            row["peak_mem_mb"] = probe.peak_mb()
            row["output_dtype"] = str(out.dtype).replace("torch.", "")
            if ref_out is not None:
                row.update(compare(out[0], ref_out))
            del out
    except CompileTimeout as e:
        row.update(status="skipped", error=f"torch.compile {e}; raise --compile-timeout to run it")
    except Exception as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}".strip())
        row["traceback"] = traceback.format_exc(limit=6)
    finally:
        del module, call
        _cleanup(device, bool(spec.compile_mode))

    if row["status"] == "ok":
        sec = row["median_ms"] / 1e3
        row["images_per_s"] = batch / sec
        row["flops"] = case.flops_per_image * batch
        row["tflops"] = row["flops"] / sec / 1e12
        row["mem_note"] = probe.note
    return row


def apply_peaks(rows: list[dict], ceilings: dict) -> list[str]:
    """Write each row's % of the measured peak of its precision; return notes on anything odd."""
    over = []
    for r in rows:
        if r["status"] != "ok":
            continue
        key = PEAK_FOR_PRECISION[r["precision"]]
        peak = ceilings.get(key, {}).get("tflops")
        r["peak_ref"] = key
        r["pct_of_peak"] = 100 * r["tflops"] / peak if peak else None
        if r["pct_of_peak"] and r["pct_of_peak"] > 100:
            over.append(f"{r['case']}/b{r['batch']}/{r['row']}")
    if not over:
        return []
    return [f"{len(over)} row(s) above 100% of the measured matmul peak ({', '.join(over[:6])}"
            f"{', ...' if len(over) > 6 else ''}): a convolution library can beat a "
            "mid-sized matmul, or the machine was busier while the ceilings were measured; "
            "compare rows with each other rather than with the % column"]


def _progress(i: int, total: int, row: dict, stream: TextIO) -> None:
    head = f"[{i}/{total}] {row['case']} b={row['batch']} {row['row']}"
    if row["status"] != "ok":
        print(f"{head}: {row['status'].upper()}: {row['error']}", file=stream, flush=True)
        return
    err = row.get("rel_l2_err")
    agree = row.get("label_agreement")
    print(f"{head}: {row['median_ms']:.3f} ms (p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f})"
          f", {row['images_per_s']:.2f} img/s"
          + (f", rel err {err:.2e}" if err is not None else "")
          + (f", labels {100 * agree:.3f}%" if agree is not None else ""),
          file=stream, flush=True)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (case, batch): the eager baseline, the best stock row, the best unet_fast row, and
    each row's speedup over the eager baseline (written into the rows)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["batch"]), []).append(r)
    out = []
    for (case, batch), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        eager = next((r for r in ok if r["impl"] == "eager"), None)
        for r in ok:
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
            r["speedup_baseline"] = eager["row"] if eager else None
        stock = [r for r in ok if not r["impl"].startswith("unet_fast")]
        fast = [r for r in ok if r["impl"].startswith("unet_fast")]
        best_stock = min(stock, key=lambda r: r["median_ms"], default=None)
        best_fast = min(fast, key=lambda r: r["median_ms"], default=None)
        out.append({
            "case": case, "batch": batch,
            "eager_row": eager["row"] if eager else None,
            "best_stock_row": best_stock["row"] if best_stock else None,
            "best_stock_ms": best_stock["median_ms"] if best_stock else None,
            "best_unet_fast_row": best_fast["row"] if best_fast else None,
            "best_unet_fast_ms": best_fast["median_ms"] if best_fast else None,
            "unet_fast_speedup_vs_best_stock": (best_stock["median_ms"] / best_fast["median_ms"]
                                                if best_stock and best_fast else None),
        })
    return out


def run_benchmark(opts: BenchOptions, stream: TextIO | None = None) -> dict:
    """Run every case, batch and row of ``opts``; return the results document (see report.py).
    Progress lines go to ``stream`` (default: stderr)."""
    stream = stream or sys.stderr
    threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    # objects alive now (modules, torch internals) are never garbage: keep them out of the
    # collections between rows, which otherwise cost ~0.1 s each
    gc.collect()
    gc.freeze()
    try:
        return _run(opts, stream)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)


def _run(opts: BenchOptions, stream: TextIO) -> dict:
    cases = build_cases(opts)
    specs = select_rows(opts.device, opts.rows, opts.dtypes)
    if not specs:
        raise ValueError(
            f"no {opts.device} row has a precision in --dtypes {','.join(opts.dtypes)}")
    started = time.perf_counter()
    env = environment(opts.device)
    print(f"unet_fast benchmark on {env['device_name']} ({opts.device}); "
          f"{len(cases)} case(s) x {len(opts.batches)} batch size(s) x {len(specs)} row(s)",
          file=stream, flush=True)
    first_ceilings = measure_ceilings(opts.device, opts.quick)
    n_sets = 3 if opts.device == "cuda" else 2
    total = len(cases) * len(opts.batches) * len(specs)
    rows: list[dict] = []
    segment_available = hasattr(unet_fast, "segment")
    for case in cases:
        ref_model = reference_model(case.config, opts.seed)
        state = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
        ref_out = None
        if case.kind == "tile" or segment_available:
            t0 = time.perf_counter()
            first = make_inputs(case, 1, 1, opts.seed)[0][0]
            ref_out = float64_reference(ref_model, case, first)
            case.reference_seconds = time.perf_counter() - t0
            print(f"[reference] {case.key}: float64 on CPU in {case.reference_seconds:.1f} s",
                  file=stream, flush=True)
        else:
            case.notes.append("unet_fast.segment is not available in this build")
        del ref_model
        for batch in opts.batches:
            inputs = [x.to(opts.device) for x in make_inputs(case, batch, n_sets, opts.seed)]
            for spec in specs:
                row = run_row(spec, case, batch, inputs, ref_out, state, opts)
                rows.append(row)
                _progress(len(rows), total, row, stream)
            del inputs
            _cleanup(opts.device, False)
    ceilings = best_ceilings(first_ceilings, measure_ceilings(opts.device, opts.quick))
    notes = apply_peaks(rows, ceilings)
    for note in notes:
        print(f"note: {note}", file=stream, flush=True)
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "options": asdict(opts),
        "ceilings": ceilings,
        "cases": [c.to_json() for c in cases],
        "rows": rows,
        "summary": summarize(rows),
        "notes": notes,
        "wall_seconds": time.perf_counter() - started,
        "method": {
            "timing": ("CUDA events per call after warm-up, L2 flushed between calls (as "
                       "triton.testing.do_bench)" if opts.device == "cuda" else
                       "time.perf_counter per call after warm-up"),
            "statistics": "median and 20th/80th percentiles of per-call times",
            "inputs": f"{n_sets} random N(0,1) input sets rotated between calls; same for all rows",
            "error": ("relative L2 error and argmax label agreement of image 0 against the "
                      "reference network in float64 on the CPU"),
            "flops": "2 x multiply-adds of every convolution, counted from the network's layers",
            "percent_of_peak": "TFLOP/s (from the median time) over the matmul rate of the "
                               "row's precision measured in this run, before and after the "
                               "rows (fastest call of the better run; see ceilings)",
        },
    }
