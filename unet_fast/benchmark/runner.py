"""The benchmark loop: ceilings, then every (case, batch, row) on the same inputs, each row timed,
checked against the float64 reference and measured for memory, then the ceilings again (the
better of the two measurements is the peak). A failing row is recorded with its error and the run
goes on; after a failure that leaves the CUDA context unusable, or once ``--deadline`` has passed,
the remaining rows are recorded as skipped. The document is handed to ``checkpoint`` after every
row (``"complete": false`` until the run ends), so a run killed part-way keeps what it measured."""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import traceback
from collections.abc import Callable, Iterator
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
from .timing import CompileTimeout, Limit, time_cpu, time_cuda, time_limit

SCHEMA_VERSION = 1


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


def device_error(device: str) -> str | None:
    """None when ``device`` still works; else the error a synchronize and a tiny kernel raise (a
    CUDA error such as an illegal memory access is sticky: every later call fails too)."""
    if device != "cuda":
        return None
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).cpu()
    except Exception as e:
        return f"{type(e).__name__}: {e}".strip()
    return None


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


def inputs_on_device(inputs: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """The input sets of one (case, batch) copied to ``device``."""
    return [x.to(device) for x in inputs]


def _row_head(spec: RowSpec, case: Case, batch: int) -> dict:
    return {
        "case": case.key, "model": case.model, "kind": case.kind, "size": case.size,
        "batch": batch, "row": spec.name, "impl": spec.impl, "precision": spec.precision,
        "description": spec.description, "status": "ok", "error": None, "notes": [],
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


def run_row(spec: RowSpec, case: Case, batch: int, inputs: list[torch.Tensor],
            ref_out: torch.Tensor | None, state: dict, opts: BenchOptions,
            time_left: float | None = None) -> dict:
    """Measure one implementation on one case and batch; never raises for a failing row.

    ``time_left`` (seconds before ``--deadline``) caps a torch.compile row's first call below
    ``--compile-timeout``."""
    device = opts.device
    row = _row_head(spec, case, batch)
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
    module = call = None
    limit: Limit | None = None
    try:
        probe.start()  # synchronizes: an earlier sticky CUDA error surfaces here
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
            if probe.parts is not None:
                row["peak_mem_parts"] = probe.parts
            row["output_dtype"] = str(out.dtype).replace("torch.", "")
            if ref_out is not None:
                row.update(compare(out[0], ref_out))
            del out
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


def summarize(rows: list[dict], baselines: list[dict] | None = None) -> list[dict]:
    """Per (case, batch): the eager baseline, the best stock row, the best unet_fast row, and
    each row's speedup over the eager baseline (written into the rows).

    Rows of a merged document carry ``source`` (the run they come from). A row's speedup is then
    taken over the baseline row measured in its own run when that run has one (``baselines``:
    rows a merge dropped as duplicates, still valid baselines of their run), else over the
    merged baseline, and the row names the other run in ``speedup_baseline_source``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["batch"]), []).append(r)
    own: dict[tuple, dict] = {}
    for r in [*rows, *(baselines or [])]:
        if r["status"] == "ok" and r["impl"] == "eager":
            own.setdefault((r["case"], r["batch"], r["row"], r.get("source")), r)
    out = []
    for (case, batch), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        eager = next((r for r in ok if r["impl"] == "eager"), None)
        for r in ok:
            base = eager
            if eager is not None and "source" in r:
                base = own.get((case, batch, eager["row"], r["source"]), eager)
            r["speedup_vs_eager"] = base["median_ms"] / r["median_ms"] if base else None
            r["speedup_baseline"] = base["row"] if base else None
            r.pop("speedup_baseline_source", None)
            if base is not None and base.get("source") != r.get("source"):
                r["speedup_baseline_source"] = base.get("source")
        stock = [r for r in ok if not r["impl"].startswith("unet_fast")]
        fast = [r for r in ok if r["impl"].startswith("unet_fast")]
        best_stock = min(stock, key=lambda r: r["median_ms"], default=None)
        best_fast = min(fast, key=lambda r: r["median_ms"], default=None)
        entry = {
            "case": case, "batch": batch,
            "eager_row": eager["row"] if eager else None,
            "best_stock_row": best_stock["row"] if best_stock else None,
            "best_stock_ms": best_stock["median_ms"] if best_stock else None,
            "best_unet_fast_row": best_fast["row"] if best_fast else None,
            "best_unet_fast_ms": best_fast["median_ms"] if best_fast else None,
            "unet_fast_speedup_vs_best_stock": (best_stock["median_ms"] / best_fast["median_ms"]
                                                if best_stock and best_fast else None),
        }
        if any("source" in r for r in ok):
            entry["best_stock_source"] = best_stock.get("source") if best_stock else None
            entry["best_unet_fast_source"] = best_fast.get("source") if best_fast else None
        out.append(entry)
    return out


def run_benchmark(opts: BenchOptions, stream: TextIO | None = None,
                  checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Run every case, batch and row of ``opts``; return the results document (see report.py).

    Progress lines go to ``stream`` (default: stderr). ``checkpoint(doc)``, when given, receives
    the document after the first ceilings, after every row (``"complete": False``) and at the
    end (``"complete": True``), so a caller can keep it on disk as the run goes."""
    stream = stream or sys.stderr
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    # objects alive now (modules, torch internals) are never garbage: keep them out of the
    # collections between rows, which otherwise cost ~0.1 s each
    gc.collect()
    gc.freeze()
    try:
        return _run(opts, stream, checkpoint, started)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)


def _method(opts: BenchOptions, n_sets: int) -> dict:
    return {
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
    }


def _run(opts: BenchOptions, stream: TextIO, checkpoint: Callable[[dict], None] | None,
         started: float) -> dict:
    cases = build_cases(opts)
    specs = select_rows(opts.device, opts.rows, opts.dtypes)
    if not specs:
        raise ValueError(
            f"no {opts.device} row has a precision in --dtypes {','.join(opts.dtypes)}")
    env = environment(opts.device)
    print(f"unet_fast benchmark on {env['device_name']} ({opts.device}); "
          f"{len(cases)} case(s) x {len(opts.batches)} batch size(s) x {len(specs)} row(s)",
          file=stream, flush=True)
    plan = [(case, batch, spec) for case in cases for batch in opts.batches for spec in specs]
    total = len(plan)
    n_sets = 3 if opts.device == "cuda" else 2
    rows: list[dict] = []
    run_notes: list[str] = []

    def elapsed() -> float:
        return time.perf_counter() - started

    def past_deadline() -> bool:
        return opts.deadline is not None and elapsed() >= opts.deadline

    def document(ceilings: dict, complete: bool) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "complete": complete,
            "environment": env,
            "options": asdict(opts),
            "ceilings": ceilings,
            "cases": [c.to_json() for c in cases],
            "rows": rows,
            "summary": summarize(rows),
            "notes": run_notes + apply_peaks(rows, ceilings),
            "wall_seconds": elapsed(),
            "method": _method(opts, n_sets),
        }

    def save(ceilings: dict) -> None:
        if checkpoint is None:
            return
        try:
            checkpoint(document(ceilings, complete=False))
        except OSError as e:  # the final write (by the caller) reports it if it persists
            print(f"warning: could not write the results so far: {e}", file=stream, flush=True)

    def add(row: dict) -> None:
        rows.append(row)
        _progress(len(rows), total, row, stream)

    def unusable_after(what: str) -> str | None:
        reason = device_error(opts.device)
        return None if reason is None else f"CUDA context unusable after {what}: {reason}"

    first_ceilings = best_ceilings(measure_ceilings(opts.device, opts.quick))
    save(first_ceilings)
    segment_available = hasattr(unet_fast, "segment")
    deadline_stop = f"not started: --deadline {opts.deadline:g} s reached" if opts.deadline else ""
    stop: str | None = None  # why the remaining rows do not start
    for case in cases:
        if stop is None and past_deadline():
            stop = deadline_stop
        if stop is not None:
            break
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
            if stop is not None:
                break
            try:
                inputs = inputs_on_device(make_inputs(case, batch, n_sets, opts.seed),
                                          opts.device)
            except Exception as e:
                error = f"moving the inputs to {opts.device} failed: {type(e).__name__}: {e}"
                for spec in specs:
                    add(dict(_row_head(spec, case, batch), status="error", error=error))
                save(first_ceilings)
                stop = unusable_after(f"{case.key} b={batch} inputs")
                continue
            for spec in specs:
                if past_deadline():
                    stop = deadline_stop
                    break
                print(f"[{len(rows) + 1}/{total}] {case.key} b={batch} {spec.name}: started",
                      file=stream, flush=True)
                time_left = None if opts.deadline is None else opts.deadline - elapsed()
                row = run_row(spec, case, batch, inputs, ref_out, state, opts, time_left)
                add(row)
                save(first_ceilings)
                if row["status"] == "error":
                    stop = unusable_after(f"{case.key} b={batch} {spec.name}")
                    if stop is not None:
                        break
            del inputs
            _cleanup(opts.device, False)

    if stop is not None:
        skipped = plan[len(rows):]
        for case, batch, spec in skipped:
            add(dict(_row_head(spec, case, batch), status="skipped", error=stop))
        run_notes.append(f"{len(skipped)} row(s) not run: {stop}")
    if stop is None and not past_deadline():
        ceilings = best_ceilings(first_ceilings, measure_ceilings(opts.device, opts.quick))
    else:
        ceilings = first_ceilings
        why = stop if stop and stop.startswith("CUDA") else f"--deadline {opts.deadline:g} s reached"
        run_notes.append(f"ceilings measured once, before the rows ({why})")
    result = document(ceilings, complete=True)
    for note in result["notes"]:
        print(f"note: {note}", file=stream, flush=True)
    if checkpoint is not None:
        checkpoint(result)
    return result
