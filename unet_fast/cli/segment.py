"""``unet-fast segment``: segment images with a checkpoint and write masks, probabilities or
overlays. Every user error ends in one :class:`~unet_fast.cli.CliError` line, and no output file
is ever left half-written (each is written under a temporary name and renamed)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import CliError

KINDS = {"mask": (".png", (".png", ".tif", ".tiff", ".npy")),
         "probs": (".npy", (".npy", ".tif", ".tiff")),
         "overlay": (".png", (".png",))}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

EPILOG = """\
examples:
  unet-fast segment cells.png --checkpoint model.pt --out mask.png
  unet-fast segment scans/ --checkpoint milesial.pth --out masks/ --device cuda --dtype float16
  unet-fast segment a.tif b.npy --checkpoint model.pt --output probs --out probs/

inputs: PNG/JPEG/BMP (gray, RGB; an alpha channel is dropped when the model wants one channel
fewer), TIFF (8/16-bit or float), .npy (H, W) or (C, H, W). uint8 is scaled by 1/255, uint16 by
1/65535, floats are used as they are. A folder stands for the image files directly inside it.

outputs: in a folder, NAME_mask.png (labels 0..K-1, uint8, or uint16 beyond 256 classes; a
milesial checkpoint's mask_values are used as pixel values when present), NAME_probs.npy
(float32, K x H x W) or NAME_overlay.png. --format picks .tif/.npy instead of the default.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="segment images and write masks, probabilities or overlays",
        description="Segment one or more images of any size with a unet_fast or\n"
                    "milesial/Pytorch-UNet checkpoint, tile by tile.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files (.png .jpg .bmp .tif .tiff .npy) or folders of them")
    p.add_argument("-c", "--checkpoint", required=True, metavar="FILE",
                   help="model file: unet_fast.save() format or a milesial/Pytorch-UNet state "
                        "dict (detected automatically)")
    p.add_argument("-o", "--out", metavar="PATH",
                   help="output file (a name with an extension, one input only) or folder, "
                        "created if missing (default: NAME_<output>.<ext> next to each input)")
    p.add_argument("--output", choices=tuple(KINDS), default="mask",
                   help="what to write: class mask, per-class probabilities, or the image "
                        "with classes tinted (default: mask)")
    p.add_argument("--format", choices=("png", "tif", "npy"), metavar="{png,tif,npy}",
                   help="file type when writing into a folder (default: png for mask and "
                        "overlay, npy for probs)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="compute precision (default: float32)")
    p.add_argument("--tile-size", type=_positive, metavar="N",
                   help="tile edge in pixels (default: chosen from the memory budget)")
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="tiles per forward pass (default: automatic)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over flips (slower, smoother)")
    p.add_argument("--threshold", type=_probability, metavar="P",
                   help="binary models (1 or 2 classes): foreground where its probability "
                        "> P (default: 0.5 for 1 class, argmax for 2)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress bars (default: only on a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show progress bars")
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < p < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def collect_inputs(items: list[str]) -> list[Path]:
    """The image files named by ``items`` (folders expand to their direct image files)."""
    from unet_fast.image_io import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir()
                               if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                               and not p.name.startswith("."))
            except OSError as e:
                raise CliError(f"cannot list folder {item!r}: {e.strerror or e}") from e
            if not found:
                raise CliError(f"folder {item!r} holds no image files "
                               f"({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif not path.exists():
            raise CliError(f"input {item!r} does not exist")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            raise CliError(f"input {item!r} is not a supported image "
                           f"({', '.join(IMAGE_SUFFIXES)})")
        else:
            files.append(path)
    return files


@dataclass
class Plan:
    """Where each input's result goes."""

    targets: list[tuple[Path, Path]]


def plan_outputs(files: list[Path], out: str | None, kind: str, fmt: str | None) -> Plan:
    default_suffix, allowed = KINDS[kind]
    suffix = f".{fmt}" if fmt else default_suffix
    if suffix not in allowed:
        raise CliError(f"--output {kind} cannot be written as {suffix}; "
                       f"use {' or '.join(allowed)}")
    out_path = Path(out) if out else None
    to_file = (out_path is not None and out_path.suffix != "" and not out_path.is_dir()
               and not out.endswith(("/", os.sep)))
    if to_file:
        assert out_path is not None
        if len(files) != 1:
            raise CliError(f"--out {out!r} is a file name but there are {len(files)} inputs; "
                           "give a folder")
        if out_path.suffix.lower() not in allowed:
            raise CliError(f"--out {out!r}: --output {kind} is written as "
                           f"{' or '.join(allowed)}")
        targets = [(files[0], out_path)]
        folders = {out_path.parent}
    else:
        targets = [(f, (out_path or f.parent) / f"{f.stem}_{kind}{suffix}") for f in files]
        folders = {t.parent for _, t in targets}
        seen: dict[Path, Path] = {}
        for src, dst in targets:
            if dst in seen:
                raise CliError(f"inputs {str(seen[dst])!r} and {str(src)!r} would both be "
                               f"written to {str(dst)!r}; give them different names")
            seen[dst] = src
    for src, dst in targets:
        if dst.resolve() == src.resolve():
            raise CliError(f"output {str(dst)!r} would overwrite its input")
    for folder in sorted(folders):
        _check_writable(folder)
    return Plan(targets)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CliError(f"output folder {str(folder)!r} exists and is not a folder") from None
    except OSError as e:
        raise CliError(f"cannot create output folder {str(folder)!r}: {e.strerror or e}") from e
    if not folder.is_dir():
        raise CliError(f"output folder {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"output folder {str(folder)!r} is not writable")


# ---------------------------------------------------------------------------------------------
# model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise CliError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {name!r}: CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CliError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_model(path: str) -> Any:
    """A unet_fast or milesial checkpoint, detected from its content, as a UNet in eval mode."""
    from unet_fast.checkpoint import (
        CheckpointError,
        from_checkpoint_dict,
        is_unet_fast_checkpoint,
        read,
    )
    from unet_fast.milesial import looks_like_milesial

    try:
        obj = read(path)
        if not is_unet_fast_checkpoint(obj) and looks_like_milesial(obj):
            return _milesial(obj, path)
        return from_checkpoint_dict(obj, path)
    except CheckpointError as e:
        raise CliError(str(e)) from e


def _milesial(obj: Any, path: str) -> Any:
    from unet_fast.checkpoint import CheckpointError
    from unet_fast.milesial import from_milesial

    try:
        return from_milesial(obj)
    except CheckpointError as e:
        # name the file rather than "milesial state dict"
        raise CheckpointError(str(e).replace("milesial state dict",
                                             f"milesial checkpoint {path!r}", 1)) from e


# ---------------------------------------------------------------------------------------------
# the command


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from unet_fast import image_io

    files = collect_inputs(args.inputs)
    plan = plan_outputs(files, args.out, args.output, args.format)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint)
    cfg = model.config
    if args.threshold is not None and cfg.num_classes > 2:
        raise CliError(f"--threshold is for binary models (1 or 2 classes); this one has "
                       f"{cfg.num_classes}, its mask is the argmax")
    try:
        model = model.to(device=device, dtype=DTYPES[args.dtype])
    except RuntimeError as e:
        raise CliError(f"cannot move the model to {device} ({_first_line(e)})") from e
    show = sys.stderr.isatty() if args.progress is None else args.progress
    mask_values = getattr(model, "mask_values", None)
    bar = tqdm(plan.targets, desc="images", unit="img", disable=not show, file=sys.stderr)
    for src, dst in bar:
        bar.set_postfix_str(src.name, refresh=False)
        _segment_one(model, src, dst, args, device, show, mask_values, image_io)
    bar.close()
    return 0


def _segment_one(model: Any, src: Path, dst: Path, args: argparse.Namespace,
                 device: torch.device, show: bool, mask_values: Any, image_io: Any) -> None:
    import unet_fast

    cfg = model.config
    try:
        image = image_io.read_image(src)
        image = image_io.match_channels(image, cfg.in_channels, f"image {str(src)!r}")
    except image_io.ImageError as e:
        raise CliError(str(e)) from e
    x = image.to(device=device, dtype=DTYPES[args.dtype])
    binary = cfg.num_classes == 1 or (cfg.num_classes == 2 and args.threshold is not None)
    want = "probs" if args.output == "probs" or binary else "labels"
    try:
        y = unet_fast.segment(model, x, tile_size=args.tile_size, batch_size=args.batch_size,
                              output=want, tta=args.tta, progress=show)
    except torch.OutOfMemoryError as e:
        raise CliError(f"out of memory on {src!s} ({_first_line(e)}); try a smaller "
                       "--tile-size or --batch-size") from e
    except (ValueError, TypeError, RuntimeError) as e:
        raise CliError(f"cannot segment {str(src)!r}: {_first_line(e)}") from e
    y = y.float().cpu() if y.is_floating_point() else y.cpu()
    try:
        if args.output == "probs":
            image_io.write_probs(dst, y)
            return
        if binary:
            threshold = 0.5 if args.threshold is None else args.threshold
            labels = (y[-1] > threshold).long()
        else:
            labels = y.long()
        if args.output == "overlay":
            image_io.write_overlay(dst, image, labels)
        elif mask_values is not None:
            values = image_io.apply_mask_values(labels, mask_values)
            image_io.write_mask(dst, values, cfg.num_classes)
        else:
            image_io.write_mask(dst, labels, max(cfg.num_classes, 2))
    except image_io.ImageError as e:
        raise CliError(str(e)) from e
    except OSError as e:
        raise CliError(f"cannot write {str(dst)!r}: {e.strerror or _first_line(e)}") from e
    except ValueError as e:
        raise CliError(f"cannot write {str(dst)!r}: {_first_line(e)}") from e
