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
    from ..benchmark import check_options, list_rows, resolve_options
    from ..benchmark import run as run_benchmark

    if args.list_rows:
        print(list_rows(args.device))
        return 0
    try:
        opts = resolve_options(args)
        check_options(opts)
    except ValueError as e:
        raise CliError(str(e)) from None
    run_benchmark(opts)
    return 0
