"""``unet-fast bench``: the project's benchmark (same options as ``benchmarks/run.py``)."""

from __future__ import annotations

import argparse

from . import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..benchmark import add_arguments

    p = sub.add_parser(
        "bench", help="benchmark unet_fast against eager PyTorch and torch.compile",
        description="Time the reference, stock PyTorch alternatives and unet_fast on the same "
                    "inputs; print a table, write JSON and a PNG plot.")
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import run_from_args

    try:
        run_from_args(args)
    except ValueError as e:
        raise CliError(str(e)) from None
    return 0
