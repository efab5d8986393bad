"""The ``unet-fast segment`` options for large images and clusters, and the commands they run.

``unet-fast segment big.zarr -c model.pt -o out.zarr`` (a zarr input or a .zarr output: one
large image, chunk by chunk, see :func:`.engine.segment_large`), and ``unet-fast segment
scans/ -c model.pt -o masks/ --workers 4`` (many images as tasks on a cluster). This module
imports nothing heavy: the CLI's parser is built on every command.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

HELP = "large images and clusters (needs the extra: pip install 'unet_fast[distributed]')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--workers``, ``--scheduler``, ``--chunk``, ``--foreground``, ``--zarr-dtype``."""
    from ..cli.segment import _positive  # (loaded: it is the caller)

    g = p.add_argument_group(HELP)
    g.add_argument("--workers", type=_positive, metavar="N",
                   help="run on a local dask cluster of N worker processes (default with a zarr "
                        "input or output: one per GPU, else one per CPU core)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the running dask cluster of this scheduler (tcp://host:8786)")
    g.add_argument("--chunk", type=_positive, metavar="SIZE",
                   help="zarr output: chunk size in pixels, one task each (default: 1024)")
    g.add_argument("--foreground", metavar="MASK",
                   help="zarr output: a low-resolution mask (image, .npy or zarr) covering the "
                        "image; chunks where it is all zero are written as 0 without running "
                        "the model")
    g.add_argument("--zarr-dtype", choices=("float32", "float16"),
                   help="zarr output with --output probs: stored float type (default: float32)")


def _is_zarr(text: str | None) -> bool:
    if not text:
        return False
    t = text.rstrip("/\\").lower()
    return t.endswith(".zarr") or ".zarr/" in t or ".zarr" + os.sep in t


def wants_distributed(args: argparse.Namespace) -> bool:
    """Whether the command runs on dask: a zarr input or output, or a cluster option."""
    return (any(_is_zarr(i) for i in args.inputs) or _is_zarr(args.out)
            or any(getattr(args, a, None) is not None
                   for a in ("workers", "scheduler", "chunk", "foreground", "zarr_dtype")))


def run(args: argparse.Namespace, client: Any = None, written: list | None = None) -> int:
    """Run ``unet-fast segment`` with dask (see :func:`wants_distributed`), on ``client`` if
    given; the files written by the many-images mode are appended to ``written``."""
    from ..cli import CliError

    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as e:
        raise CliError(f"--workers/--scheduler and zarr inputs/outputs need {e.name}: "
                       "pip install 'unet_fast[distributed]'") from None
    if any(_is_zarr(i) for i in args.inputs) or _is_zarr(args.out):
        return _run_large(args, client)
    for flag, value in (("--chunk", args.chunk), ("--foreground", args.foreground),
                        ("--zarr-dtype", args.zarr_dtype)):
        if value is not None:
            raise CliError(f"{flag} is for one large image written to a zarr store "
                           "(-o OUT.zarr); drop it for image files")
    return _run_many(args, client, written)


def _run_large(args: argparse.Namespace, client: Any) -> int:
    import sys

    from ..cli import CliError
    from .engine import segment_large
    from .source import InputError, first_line

    if len(args.inputs) != 1:
        raise CliError(f"a zarr input or output takes one image, got {len(args.inputs)} inputs")
    if not _is_zarr(args.out):
        raise CliError("a zarr input is written to a zarr store: give -o OUT.zarr")
    if args.output == "overlay":
        raise CliError("--output overlay is not written to zarr; use mask or probs")
    for flag, value in (("--format", args.format), ("--tile-size", args.tile_size),
                        ("--batch-size", args.batch_size), ("--tta", args.tta or None)):
        if value is not None:
            raise CliError(f"{flag} does not apply to a zarr output (tiles are planned per "
                           "chunk); drop it")
    if args.zarr_dtype is not None and args.output != "probs":
        raise CliError("--zarr-dtype is for --output probs (masks are uint8/uint16)")
    if args.device != "auto" and args.scheduler is None:
        from ..cli.segment import resolve_device

        resolve_device(args.device)  # local workers see this machine's devices
    show = sys.stderr.isatty() if args.progress is None else args.progress
    kind = "probs" if args.output == "probs" else "labels"
    try:
        segment_large(args.inputs[0], args.checkpoint, args.out, output=kind,
                      chunk=args.chunk or 1024, out_dtype=args.zarr_dtype,
                      foreground=args.foreground, client=client,
                      scheduler=args.scheduler, workers=args.workers, device=args.device,
                      precision=args.dtype, threshold=args.threshold, progress=show)
    except InputError as e:
        raise CliError(str(e)) from None
    except (CliError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise CliError(f"segmenting {args.inputs[0]!r} failed: {first_line(e)} (the chunks "
                       "written so far are kept: run the same command again to resume)") from e
    print(f"wrote {args.out}")
    return 0


def _run_many(args: argparse.Namespace, client: Any, written: list | None) -> int:
    import sys

    from ..cli import CliError
    from ..cli import segment as seg
    from .many import run_many
    from .source import InputError, first_line

    files = seg.collect_inputs(args.inputs)
    plan = seg.plan_outputs(files, args.out, args.output, args.format)
    if args.device != "auto":
        seg.resolve_device(args.device)
    model = seg.load_model(args.checkpoint)
    cfg = model.config
    if args.threshold is not None and cfg.num_classes > 2:
        raise CliError(f"--threshold is for binary models (1 or 2 classes); this one has "
                       f"{cfg.num_classes}, its mask is the argmax")
    if args.tile_size is not None:
        seg.check_tile_size(args.tile_size, cfg)
    seg.check_inputs(files, cfg.in_channels, seg._pixel_limit(args))  # all, before any write
    del model
    show = sys.stderr.isatty() if args.progress is None else args.progress
    # the same folder claims, stale-temp clean-up and interrupt handling as a one-machine run
    with seg._sigterm_interrupts():
        made, marks = seg._claim_folders(plan)
        try:
            run_many(args, plan.targets, client, show)
        except BaseException as e:
            seg._unmark(marks)
            seg._remove_empty(made)  # the folders this run created, if empty and unused
            if isinstance(e, InputError):
                raise CliError(str(e)) from None
            if isinstance(e, (CliError, KeyboardInterrupt)) or not isinstance(e, Exception):
                raise
            raise CliError(f"segmenting failed: {first_line(e)}") from e
        seg._unmark(marks)
    for _, dst in plan.targets:
        print(f"wrote {dst}")
    if written is not None:
        written.extend(dst for _, dst in plan.targets)
    return 0
