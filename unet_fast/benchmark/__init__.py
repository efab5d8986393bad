"""The project's benchmark (``python benchmarks/run.py`` / ``unet-fast bench``).

One run measures the device's ceilings and then every implementation on the same random inputs:
latency (median, p20/p80), images/s, TFLOP/s counted from the network, % of the measured peak,
peak memory, and error against the float64 reference. Files: options (CLI flags), cases (what is
measured), rows (the implementations), runtimes (OpenVINO and ONNX Runtime on the CPU), row_run
(one row's phases), timing (including the CPU's interleaved rounds), ceilings, memory,
environment, runner, summary (% of peak, speedups), report, plot, merge (one document from runs
split over several device calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import BenchOptions, add_arguments, resolve_options
from .report import format_table, print_table, result_paths, write_json
from .rows import all_rows
from .runner import run_benchmark

__all__ = ["BenchOptions", "add_arguments", "check_options", "format_table", "list_rows", "main",
           "resolve_options", "run", "run_benchmark"]


def run(opts: BenchOptions) -> tuple[dict, Path, Path | None]:
    """Run the benchmark, print the table, write the JSON (and the PNG unless disabled).

    The JSON is written after every row (``"complete": false`` until the end) and in full
    before the plot is drawn; a plot that fails costs the plot only (a note in the JSON).
    Returns the results document, the JSON path and the PNG path (None when not written).
    """
    def checkpoint(doc: dict) -> None:
        write_json(doc, result_paths(doc, opts.out_dir, opts.tag)[0])

    result = run_benchmark(opts, checkpoint=checkpoint)
    json_path, png_path = result_paths(result, opts.out_dir, opts.tag)
    result["plot"] = None
    write_json(result, json_path)
    print_table(result, sys.stdout)
    written = None
    if opts.plot:
        written = write_plot_or_note(result, png_path)
        write_json(result, json_path)  # its path, or the note saying why there is none
    print(f"wrote {json_path}" + (f" and {written}" if written else ""), file=sys.stderr)
    return result, json_path, written


def write_plot_or_note(result: dict, png_path: Path) -> Path | None:
    """Draw the PNG and record it in ``result["plot"]``; on any failure add a note to the
    document, print one line on stderr and return None."""
    try:
        from . import plot

        plot.write_plot(result, png_path)
    except ImportError:
        why = "matplotlib is not installed"
    except Exception as e:  # a plot is never worth the results
        why = f"{type(e).__name__}: {e}".strip()
    else:
        result["plot"] = str(png_path)
        return png_path
    result.setdefault("notes", []).append(f"no plot: {why}")
    print(f"no plot written: {why}", file=sys.stderr)
    return None


def check_options(opts: BenchOptions) -> None:
    """Raise a one-line ValueError for cases or rows that cannot run, before any work starts."""
    from .cases import build_cases
    from .rows import select_rows

    build_cases(opts)
    if not select_rows(opts.device, opts.rows, opts.dtypes):
        raise ValueError(
            f"no {opts.device} row has a precision in --dtypes {','.join(opts.dtypes)}")


def list_rows(device: str) -> str:
    """The row names, precisions and descriptions of ``device`` ("auto": this machine's)."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "\n".join(f"{r.name:28s} {r.precision:5s} {r.description}" for r in all_rows(device))


def run_from_args(args: argparse.Namespace) -> None:
    """Run what parsed arguments ask for (``--list-rows`` or a benchmark); ValueError on bad
    options. Shared by ``benchmarks/run.py`` and ``unet-fast bench``."""
    if args.list_rows:  # works for --device cuda on a machine without one
        print(list_rows(args.device))
        return
    opts = resolve_options(args)
    check_options(opts)
    run(opts)


def main(argv: list[str] | None = None, default_out_dir: str = "benchmarks/results") -> int:
    """Entry point of ``benchmarks/run.py``: parse, run, report; bad options exit 2, one line."""
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    add_arguments(parser, default_out_dir)
    try:
        run_from_args(parser.parse_args(argv))
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
