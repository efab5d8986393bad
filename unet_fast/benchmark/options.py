"""The benchmark's options: one argparse definition shared by ``benchmarks/run.py`` and
``unet-fast bench``, resolved into a :class:`BenchOptions` with per-device defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MODELS = ("paper", "same")


@dataclass
class BenchOptions:
    """Everything one benchmark run needs; build it with :func:`resolve_options`."""

    device: str = "cpu"
    models: list[str] = field(default_factory=lambda: list(MODELS))
    base_channels: int = 64
    classes: int = 2
    in_channels: int | None = None  # None: 1 for the paper network, 3 for the same-padded one
    depth: int = 4
    sizes: list[int] | None = None  # None: 572 (paper) / 512 (same)
    image_sizes: list[int] = field(default_factory=lambda: [512])
    tile_size: int | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    dtypes: list[str] = field(default_factory=lambda: list(PRECISIONS))
    rows: list[str] | None = None  # fnmatch patterns over row names; None: all
    quick: bool = False
    repeats: int | None = None
    warmup: int | None = None
    compile_timeout: float = 300.0
    deadline: float | None = None  # seconds after the start: no row starts later
    out_dir: str = "benchmarks/results"
    tag: str | None = None  # file name suffix: <device>-<tag>.json; None: the reference name
    plot: bool = True
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads for the run; None: leave as is


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _image_sizes(text: str) -> list[int]:
    return [] if text.strip().lower() in ("none", "") else _int_list(text)


def _str_list(text: str) -> list[str]:
    return [v for v in text.replace(" ", "").split(",") if v]


def add_arguments(p: argparse.ArgumentParser, default_out_dir: str = "benchmarks/results") -> None:
    """Add the benchmark's options to ``p``; results go under ``default_out_dir`` unless
    ``--out-dir`` names another folder."""
    p.set_defaults(default_out_dir=default_out_dir)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (default: cuda when available, else cpu)")
    p.add_argument("--model", type=_str_list, default=None, dest="models",
                   help="comma list of networks: paper (valid padding, 1 channel) and/or same "
                        "(same padding, 3 channels); default: paper,same")
    p.add_argument("--base-channels", type=int, default=None,
                   help="channels of the top level (default 64; 4 with --quick)")
    p.add_argument("--classes", type=int, default=2, help="output classes (default 2)")
    p.add_argument("--in-channels", type=int, default=None,
                   help="input channels for every model (default: paper 1, same 3)")
    p.add_argument("--depth", type=int, default=4, help="down-sampling levels (default 4)")
    p.add_argument("--sizes", type=_int_list, default=None,
                   help="input sizes of the single-tile cases (default: paper 572, same 512)")
    p.add_argument("--image-sizes", type=_image_sizes, default=None,
                   help="whole-image sizes segmented with overlap-tile by the valid-padding "
                        "network (default 512; 'none' to skip)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile_size passed to unet_fast.segment (default: its automatic choice)")
    p.add_argument("--batches", type=_int_list, default=None,
                   help="batch sizes (default: 1,16 on GPU, 1 on CPU)")
    p.add_argument("--dtypes", type=_str_list, default=None,
                   help=f"precisions to run, from {','.join(PRECISIONS)} (default: all)")
    p.add_argument("--rows", type=_str_list, default=None,
                   help="implementations to run: comma list of row names or fnmatch patterns, "
                        "'!pattern' to leave rows out (e.g. 'eager*,unet_fast-bf16' or "
                        "'!compile-max-autotune*'); see --list-rows")
    p.add_argument("--list-rows", action="store_true", help="list the rows of this device and exit")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: tiny network and sizes, 2 repeats, no torch.compile; "
                        "files tagged -quick unless --tag is given")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per row (default: 5 on CPU, 2 with --quick, adaptive on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before timing")
    p.add_argument("--compile-timeout", type=float, default=None,
                   help="seconds allowed for a torch.compile row's first call (default 300 CPU, "
                        "240 GPU); a row over it is reported as skipped")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="wall-clock seconds since the run started after which no row starts: "
                        "the rest are recorded as skipped and the results written (for device "
                        "calls that are killed at a time limit; leave room for the row running "
                        "then and for start-up)")
    p.add_argument("--out-dir", default=None,
                   help=f"where the JSON and PNG go, as <device>.json/.png (default "
                        f"{default_out_dir}, as <device>-local.json so that the committed "
                        f"reference result is not replaced)")
    p.add_argument("--publish", action="store_true",
                   help="write the device's reference result <device>.json/.png in the default "
                        "folder (the committed numbers; full runs only)")
    p.add_argument("--tag", default=None,
                   help="suffix for the result file names (default: 'local', 'quick' with "
                        "--quick, none with --publish or --out-dir)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch during the run (default: torch's own choice)")


def resolve_options(args: argparse.Namespace) -> BenchOptions:
    """Turn parsed arguments into options, filling the per-device and --quick defaults.

    Raises ValueError with a one-line message for an invalid combination.
    """
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    models = args.models or list(MODELS)
    for m in models:
        if m not in MODELS:
            raise ValueError(f"unknown --model {m!r}; valid: {', '.join(MODELS)}")
    dtypes = args.dtypes or list(PRECISIONS)
    for d in dtypes:
        if d not in PRECISIONS:
            raise ValueError(f"unknown --dtypes entry {d!r}; valid: {', '.join(PRECISIONS)}")
    for name in ("classes", "depth", "base_channels", "in_channels", "tile_size", "repeats",
                 "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.deadline is not None and not args.deadline > 0:
        raise ValueError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    if args.compile_timeout is not None and not args.compile_timeout > 0:
        raise ValueError(f"--compile-timeout must be a positive number of seconds, got "
                         f"{args.compile_timeout}")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    quick = args.quick
    publish = getattr(args, "publish", False)
    if publish and quick:
        raise ValueError("--publish writes the committed reference result and needs a full run; "
                         "drop --quick (or --publish)")
    out_dir = args.out_dir or getattr(args, "default_out_dir", None) or "benchmarks/results"
    if args.tag is not None:
        tag = args.tag
    elif quick:
        tag = "quick"  # a smoke run never overwrites a full result of the same device
    elif publish or args.out_dir:
        tag = None
    else:
        tag = "local"  # the committed <device>.json is replaced only when asked
    if args.image_sizes is not None:
        image_sizes = args.image_sizes
    else:
        image_sizes = [96] if quick else [512]
    if args.batches is not None:
        batches = args.batches
    else:
        batches = [1, 16] if device == "cuda" and not quick else [1]
    timeout = args.compile_timeout
    if timeout is None:
        timeout = 240.0 if device == "cuda" else 300.0
    return BenchOptions(
        device=device,
        models=models,
        base_channels=args.base_channels or (4 if quick else 64),
        classes=args.classes,
        in_channels=args.in_channels,
        depth=args.depth,
        sizes=args.sizes,
        image_sizes=image_sizes,
        tile_size=args.tile_size,
        batches=batches,
        dtypes=dtypes,
        rows=args.rows,
        quick=quick,
        repeats=args.repeats if args.repeats is not None else (2 if quick else None),
        warmup=args.warmup if args.warmup is not None else (1 if quick else None),
        compile_timeout=timeout,
        deadline=args.deadline,
        out_dir=out_dir,
        tag=tag,
        plot=not args.no_plot,
        seed=args.seed,
        threads=args.threads,
    )
