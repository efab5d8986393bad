"""The ``unet-fast`` command line. Each subcommand lives in its own module of this package and
exposes ``add_parser(subparsers)`` and ``run(args) -> int``; :data:`SUBCOMMANDS` lists them."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ["segment", "train", "bench", "info"]


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-fast",
        description="Fast, seamless U-Net segmentation (unet_fast).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unet-fast`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CliError as e:
        print(f"unet-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unet-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
