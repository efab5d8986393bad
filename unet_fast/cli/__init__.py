"""The ``unet-fast`` command line. Each subcommand lives in its own module of this package and
exposes ``add_parser(subparsers)`` and ``run(args) -> int``; :data:`SUBCOMMANDS` lists them."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator

SUBCOMMANDS = ["segment", "train", "bench", "info"]


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-fast",
        description="Fast, seamless U-Net segmentation (unet_fast).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _version() -> str:
    import torch

    from .. import __version__

    return f"unet-fast {__version__} (torch {torch.__version__})"


class _Held(logging.Handler):
    """Keeps the log records of the libraries unet_fast calls (tifffile, torch, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _held_messages() -> Iterator[list[str]]:
    """Hold back warnings and log records while a command runs, so that a failing command
    prints its one error line alone; a successful one prints them afterwards, one line each."""
    held: list[str] = []
    handler = _Held()
    root = logging.getLogger()
    root.addHandler(handler)  # with a handler present, logging's last-resort stderr print is off
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield held
    finally:
        root.removeHandler(handler)
        held.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        held.extend(handler.lines)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unet-fast`` console script."""
    args = build_parser().parse_args(argv)
    prefix = f"unet-fast {args.command}"
    try:
        with _held_messages() as held:
            code = int(args.run(args) or 0)
    except CliError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    for line in dict.fromkeys(_first_line(m) for m in held):
        if line:
            print(f"{prefix}: warning: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
