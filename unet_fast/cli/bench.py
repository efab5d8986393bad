"""``unet-fast bench``: the project's benchmark (same options as ``benchmarks/run.py``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import CliError


def default_results_dir(package_root: Path | None = None) -> Path:
    """Where ``unet-fast bench`` writes without ``--out-dir``: the source checkout's
    ``benchmarks/results`` when unet_fast runs from one (as ``benchmarks/run.py`` does), else a
    per-user cache folder; never the current directory.

    Args:
        package_root: the folder holding the ``unet_fast`` package (default: this one's).
    """
    root = package_root or Path(__file__).resolve().parents[2]
    checkout = root / "benchmarks"
    if (checkout / "run.py").is_file():
        return checkout / "results"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "unet_fast" / "bench"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..benchmark import add_arguments

    p = sub.add_parser(
        "bench", help="benchmark unet_fast against eager PyTorch and torch.compile",
        description="Time the reference, stock PyTorch alternatives and unet_fast on the same "
                    "inputs; print a table, write JSON and a PNG plot.")
    add_arguments(p, str(default_results_dir()))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import run_from_args

    try:
        run_from_args(args)
    except ValueError as e:
        raise CliError(str(e)) from None
    return 0
