"""Many images on a dask cluster: each image file is one task, segmented by a worker's cached
model and written exactly as ``unet-fast segment`` writes it (the CLI's own reader, checks and
writers run inside the task; outputs are written under a temporary name and renamed, so a lost
worker never leaves half a file and its rerun overwrites nothing finished)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .cluster import client_for, run_windowed
from .source import InputError
from .worker import ModelSpec, checkpoint_key, get_model


def segment_file(spec: ModelSpec, src: str, dst: str, args: argparse.Namespace) -> str:
    """The task: segment image ``src`` and write ``dst`` as the CLI does; returns ``dst``."""
    from ..cli.segment import _pixel_limit, _segment_one, read_input

    model = get_model(spec)
    image = read_input(Path(src), model.config.in_channels, _pixel_limit(args))
    device = next(model.parameters()).device
    _segment_one(model, image, Path(src), Path(dst), args, device, False,
                 getattr(model, "mask_values", None))
    return dst


def run_many(args: argparse.Namespace, targets: list[tuple[Path, Path]], client: Any = None,
             show: bool = False) -> None:
    """Segment ``targets`` ((input, output) pairs already checked and planned by the CLI) on
    the cluster that ``args.scheduler`` / ``args.workers`` (or ``client``) name."""
    path = os.path.abspath(args.checkpoint)
    spec = ModelSpec(checkpoint_key(path), path, args.device, args.dtype)
    with client_for(client, args.scheduler, args.workers) as c:
        window = max(4, 2 * sum(c.nthreads().values()))

        def submissions() -> Iterator[Callable[[], Any]]:
            for src, dst in targets:
                yield lambda s=src, d=dst: c.submit(segment_file, spec, str(s), str(d), args,
                                                    pure=False)

        run_windowed(c, submissions(), len(targets), window, show, "images")


def segment_images(inputs: Sequence[str | os.PathLike[str]], checkpoint: str | os.PathLike[str],
                   out: str | os.PathLike[str] | None = None, *, output: str = "mask",
                   fmt: str | None = None, client: Any = None, scheduler: str | None = None,
                   workers: int | None = None, device: str = "auto", dtype: str = "float32",
                   threshold: float | None = None, progress: bool = False) -> list[Path]:
    """Segment image files (or folders of them) as tasks across a dask cluster, writing each
    result as ``unet-fast segment INPUTS -c CHECKPOINT -o OUT --output OUTPUT`` would; returns
    the files written. Raises :class:`~.source.InputError` (one line) for bad input, before
    anything is written."""
    from ..cli import CliError, build_parser
    from .cli import run

    argv = ["segment", *map(os.fspath, inputs), "-c", os.fspath(checkpoint),
            "--output", output, "--device", device, "--dtype", dtype,
            "--progress" if progress else "--no-progress"]
    argv += ["-o", os.fspath(out)] if out is not None else []
    argv += ["--format", fmt] if fmt else []
    argv += ["--threshold", str(threshold)] if threshold is not None else []
    argv += ["--scheduler", scheduler] if scheduler else []
    argv += ["--workers", str(workers)] if workers else []
    args = build_parser().parse_args(argv)
    written: list[Path] = []
    try:
        run(args, client, written)
    except CliError as e:
        raise InputError(str(e)) from None
    return written
