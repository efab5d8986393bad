"""The benchmark loop: ceilings, then every (case, batch, row) on the same inputs, each row timed,
checked against the float64 reference and measured for memory, then the ceilings again (the
better of the two measurements is the peak). On the GPU the rows run one after another; on the
CPU the rows of a (case, batch) are prepared in turn and then timed interleaved (rotated rounds,
see timing.time_interleaved). A failing row is recorded with its error and the run goes on; after
a failure that leaves the CUDA context unusable, or once ``--deadline`` has passed, the remaining
rows are recorded as skipped. The document is handed to ``checkpoint`` after every row (GPU) or
every (case, batch) (CPU), ``"complete": false`` until the run ends, so a run killed part-way
keeps what it measured."""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

import torch

import unet_fast

from . import runtimes
from .cases import Case, build_cases, float64_reference, make_inputs, reference_model
from .ceilings import best_ceilings, measure_ceilings
from .environment import environment
from .options import BenchOptions
from .row_run import (  # _registered: kept importable from here for scripts written before
    LiveRow,
    _cleanup,
    _registered,  # noqa: F401
    backend_graphs,
    find_compile_timeout,
    finish_row,
    measure_row,
    prepare_row,
    row_head,
    run_row,
)
from .rows import select_rows
from .summary import apply_peaks, summarize
from .timing import time_interleaved

__all__ = ["SCHEMA_VERSION", "apply_peaks", "backend_graphs", "device_error",
           "find_compile_timeout", "inputs_on_device", "run_benchmark", "run_row", "summarize"]

SCHEMA_VERSION = 1


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


def inputs_on_device(inputs: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """The input sets of one (case, batch) copied to ``device``."""
    return [x.to(device) for x in inputs]


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
                   "triton.testing.do_bench), one row after another" if opts.device == "cuda" else
                   "time.perf_counter per call after warm-up; the rows of a (case, batch) "
                   "interleaved: each round calls every row once, the order rotated by one "
                   "each round, an untimed 10 ms pause before each call (see each row's "
                   "interleaved)"),
        "statistics": "median and 20th/80th percentiles of per-call times",
        "inputs": f"{n_sets} random N(0,1) input sets rotated between calls; same for all rows",
        "error": ("relative L2 error and argmax label agreement of image 0 against the "
                  "reference network in float64 on the CPU"),
        "flops": "2 x multiply-adds of every convolution, counted from the network's layers",
        "percent_of_peak": ("TFLOP/s (from the median time) over the ceiling peak_ref of "
                            "the row's precision measured in this run, before and after the "
                            "rows (fastest call of the better run; see ceilings): on the CPU "
                            "the best 3x3 convolution (conv3x3_*), else the matmul; "
                            "pct_of_matmul_peak is over the matmul ceiling"),
    }


def _runtime_notes(rows: list[dict]) -> list[str]:
    """One note per reason an OpenVINO / ONNX Runtime row did not run (library missing, bf16 on
    ONNX Runtime, the whole-image case), naming the rows."""
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r["impl"] in runtimes.RUNTIMES and r["status"] == "skipped" and \
                not str(r["error"]).startswith(("not started", "CUDA context")):
            names = reasons.setdefault(r["error"], [])
            if r["row"] not in names:
                names.append(r["row"])
    return [f"{', '.join(names)} not run: {why}" for why, names in reasons.items()]


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

    def one_by_one(case: Case, batch: int, inputs: list[torch.Tensor],
                   ref_out: torch.Tensor | None, state: dict) -> str | None:
        """The GPU's way: each row built, timed, measured and released before the next one
        (CUDA events time the device alone; rows keep no GPU memory for each other)."""
        for spec in specs:
            if past_deadline():
                return deadline_stop
            print(f"[{len(rows) + 1}/{total}] {case.key} b={batch} {spec.name}: started",
                  file=stream, flush=True)
            time_left = None if opts.deadline is None else opts.deadline - elapsed()
            row = run_row(spec, case, batch, inputs, ref_out, state, opts, time_left)
            add(row)
            save(first_ceilings)
            if row["status"] == "error":
                stop = unusable_after(f"{case.key} b={batch} {spec.name}")
                if stop is not None:
                    return stop
        return None

    def interleaved(case: Case, batch: int, inputs: list[torch.Tensor],
                    ref_out: torch.Tensor | None, state: dict) -> str | None:
        """The CPU's way: every row of the (case, batch) prepared and measured (memory, error)
        in turn, then all of them timed together, round by round in rotated order
        (timing.time_interleaved); the rows are recorded once timed. On a row error or the
        deadline, the rows prepared so far are still timed."""
        stop = None
        lives: list[LiveRow] = []
        exports = runtimes.Exports()
        try:
            for spec in specs:
                if past_deadline():
                    stop = deadline_stop
                    break
                print(f"[{len(rows) + len(lives) + 1}/{total}] {case.key} b={batch} "
                      f"{spec.name}: started", file=stream, flush=True)
                time_left = None if opts.deadline is None else opts.deadline - elapsed()
                live = prepare_row(spec, case, batch, inputs, state, opts, time_left, exports)
                measure_row(live, inputs, ref_out, opts.device)
                live.stack.close()  # the CPU rows set no backend flags to hold while timing
                lives.append(live)
                if live.row["status"] == "error":
                    stop = unusable_after(f"{case.key} b={batch} {spec.name}")
                    if stop is not None:
                        break
            ready = [live for live in lives if live.ready]
            if ready:
                repeats = opts.repeats or 5
                warm = opts.warmup if opts.warmup is not None else 1
                print(f"[timing] {case.key} b={batch}: {len(ready)} row(s) interleaved, "
                      f"{warm} + {repeats} rounds", file=stream, flush=True)
                results = time_interleaved([live.call for live in ready], inputs, repeats, warm)
                for live, res in zip(ready, results, strict=True):
                    if isinstance(res, Exception):
                        live.row.update(status="error", error=f"{type(res).__name__}: {res}",
                                        traceback="".join(traceback.format_exception(res)))
                    else:
                        live.row.update(res)
        finally:
            for live in reversed(lives):  # last built, first released, as nested resources
                live.release()
            exports.close()
            _cleanup(opts.device, any(live.spec.compile_mode for live in lives))
        for live in lives:
            add(finish_row(live, case, batch))
        save(first_ceilings)
        return stop

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
                    add(dict(row_head(spec, case, batch), status="error", error=error))
                save(first_ceilings)
                stop = unusable_after(f"{case.key} b={batch} inputs")
                continue
            if opts.device == "cuda":
                stop = one_by_one(case, batch, inputs, ref_out, state)
            else:
                stop = interleaved(case, batch, inputs, ref_out, state)
            del inputs
            _cleanup(opts.device, False)

    if stop is not None:
        skipped = plan[len(rows):]
        for case, batch, spec in skipped:
            add(dict(row_head(spec, case, batch), status="skipped", error=stop))
        run_notes.append(f"{len(skipped)} row(s) not run: {stop}")
    run_notes += _runtime_notes(rows)
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
