"""``unet-fast segment``: segment images with a checkpoint and write masks, probabilities or
overlays. Every user error ends in one :class:`~unet_fast.cli.CliError` line. The checkpoint and
every input are read and checked before the first output is written or an output folder made,
and no output file is ever left half-written (each is written under a temporary name and
renamed)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
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
fewer; 16-bit PNGs only if gray: Pillow reads colour ones at 8 bits, so they are refused, save
them as 16-bit TIFF), TIFF (8/16-bit or float; channels where its axes say), .npy (H, W),
(C, H, W) or (H, W, C) (channels-last when the last axis has <= 4 entries and the first more).
uint8 is scaled by 1/255, uint16 by 1/65535, floats are used as they are. A folder stands for
the image files directly inside it, except this command's outputs (*_mask.*, *_probs.*,
*_overlay.*), which are skipped; name such a file to segment it. Every input is read and
checked before the model runs: one bad input fails the command before anything is written.
An image with more pixels than Pillow's limit (178956970, colour channels not counted) is
refused from its header, whatever its format; --max-pixels N changes the limit (0: none).

outputs: in a folder, NAME_mask.png (binary: 0/255; more classes: a palette PNG whose pixel
values are the labels 0..K-1, each class its own colour, uint16 gray beyond 256 classes; .tif and
.npy masks hold the raw labels; a milesial checkpoint's mask_values are written as its
predict.py writes them), NAME_probs.npy
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
                        "overlay, npy for probs); a file name given to --out carries its own")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="compute precision (default: float32)")
    p.add_argument("--tile-size", type=_positive, metavar="N",
                   help="the network's input window in pixels (images of any size are cut into "
                        "such tiles); must be a valid input size for valid-padding networks, "
                        "e.g. 572 for the paper's (default: chosen from the memory budget)")
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="tiles per forward pass (default: automatic)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over flips (slower, smoother)")
    p.add_argument("--threshold", type=_probability, metavar="P",
                   help="binary models (1 or 2 classes): foreground where its probability "
                        "> P (default: 0.5 for 1 class, argmax for 2)")
    p.add_argument("--max-pixels", type=_non_negative, metavar="N",
                   help="refuse images with more than N pixels before decoding them, a guard "
                        "against decompression bombs; 0: no limit (default: Pillow's limit, "
                        "178956970, for every format)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress bars (default: only on a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show progress bars")
    p.set_defaults(run=run)
    from unet_fast.distributed.cli import add_arguments  # light: imports no dask

    add_arguments(p)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
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


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is named like a file this command writes (``NAME_mask.png``, ...)."""
    return any(path.stem.endswith(f"_{kind}") for kind in KINDS)


def collect_inputs(items: list[str]) -> list[Path]:
    """The image files named by ``items``. A folder expands to the image files directly inside
    it, except those named like this command's outputs (``*_mask.*``, ``*_probs.*``,
    ``*_overlay.*``), so a second run does not segment the first run's results."""
    from unet_fast.image_io import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            try:
                images = sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                                and not p.name.startswith("."))
            except OSError as e:
                raise CliError(f"cannot list folder {item!r}: {e.strerror or e}") from e
            found = [p for p in images if not is_own_output(p)]
            if not found:
                skipped = len(images)
                why = (f"; skipped {skipped} output{'s' * (skipped != 1)} of unet-fast "
                       "(*_mask.*, *_probs.*, *_overlay.*): name them to segment them"
                       if skipped else "")
                raise CliError(f"folder {item!r} holds no image files "
                               f"({', '.join(IMAGE_SUFFIXES)}){why}")
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
    """Where each input's result goes, and the output folders that do not exist yet."""

    targets: list[tuple[Path, Path]]
    folders: list[Path]


def plan_outputs(files: list[Path], out: str | None, kind: str, fmt: str | None) -> Plan:
    """Check (without creating anything) where each input's result will be written."""
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
        if fmt and out_path.suffix.lower() not in {".tif": (".tif", ".tiff")}.get(suffix, (suffix,)):
            raise CliError(f"--out {out!r} and --format {fmt} disagree; drop --format (it is "
                           "for folders) or name the file with its extension")
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
    missing: list[Path] = []
    for folder in sorted(folders):
        missing.extend(_check_writable(folder))
    return Plan(targets, sorted(set(missing), key=lambda p: len(p.parts)))


def _check_writable(folder: Path) -> list[Path]:
    """The folders that must be created for ``folder`` to exist (outermost first), after checking
    that the nearest existing one is a writable folder."""
    missing = []
    existing = folder
    while not existing.exists():
        if existing.is_symlink() or existing.parent == existing:
            raise CliError(f"cannot create output folder {str(folder)!r}: "
                           f"{str(existing)!r} is a dangling link")
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            raise CliError(f"output folder {str(folder)!r} exists and is not a folder")
        raise CliError(f"cannot create output folder {str(folder)!r}: "
                       f"{str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == folder:
            raise CliError(f"output folder {str(folder)!r} is not writable")
        raise CliError(f"cannot create output folder {str(folder)!r}: "
                       f"{str(existing)!r} is not writable")
    return missing[::-1]


def _make_folders(folders: list[Path]) -> list[Path]:
    """Create ``folders`` (outermost first); the ones this call created, for clean-up."""
    made = []
    for folder in folders:
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                _remove_empty(made)
                raise CliError(f"output folder {str(folder)!r} exists and is not a folder") from None
            continue
        except OSError as e:
            _remove_empty(made)
            raise CliError(f"cannot create output folder {str(folder)!r}: "
                           f"{e.strerror or e}") from e
        made.append(folder)
    return made


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            pass


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


# decoded inputs kept between the up-front check and the run (larger sets are read twice)
KEEP_BYTES = 512 * 2**20


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from unet_fast.distributed import cli as cluster_cli

    if cluster_cli.wants_distributed(args):  # zarr in or out, or a dask cluster
        return cluster_cli.run(args)
    files = collect_inputs(args.inputs)
    plan = plan_outputs(files, args.out, args.output, args.format)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint)
    cfg = model.config
    if args.threshold is not None and cfg.num_classes > 2:
        raise CliError(f"--threshold is for binary models (1 or 2 classes); this one has "
                       f"{cfg.num_classes}, its mask is the argmax")
    if args.tile_size is not None:
        check_tile_size(args.tile_size, cfg)
    limit = _pixel_limit(args)
    images = check_inputs(files, cfg.in_channels, limit)
    try:
        model = model.to(device=device, dtype=DTYPES[args.dtype])
    except RuntimeError as e:
        raise CliError(f"cannot move the model to {device} ({_first_line(e)})") from e
    show = sys.stderr.isatty() if args.progress is None else args.progress
    mask_values = getattr(model, "mask_values", None)
    if mask_values is not None and args.output == "mask":
        from unet_fast.image_io import check_mask_values

        try:  # before anything runs or is written
            check_mask_values(mask_values, cfg.num_classes)
        except ValueError as e:
            raise CliError(f"checkpoint {args.checkpoint!r}: {e}") from e
    with _sigterm_interrupts():
        made, marks = _claim_folders(plan)
        try:
            bar = tqdm(plan.targets, desc="images", unit="img", disable=not show,
                       file=sys.stderr)
            for src, dst in bar:
                bar.set_postfix_str(src.name, refresh=False)
                image = images.pop(src, None)
                if image is None:
                    image = read_input(src, cfg.in_channels, limit)
                _segment_one(model, image, src, dst, args, device, show, mask_values)
                tqdm.write(f"wrote {dst}", file=sys.stdout)  # one line per output, above any bar
            bar.close()
        except BaseException:
            _unmark(marks)
            # the folders this run created, if empty: none another run marked or wrote into
            _remove_empty(made)
            raise
        _unmark(marks)
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler) interrupts like Ctrl-C, so the clean-up runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _claim_folders(plan: Plan) -> tuple[list[Path], list[Path]]:
    """Create the missing output folders, mark every output folder as used by this run (an
    interrupted run removes only empty folders it made, and the mark keeps this one's from
    being empty) and remove the temporary files that killed runs left there. Returns the
    folders made and the marks."""
    from unet_fast import _atomic

    made = _make_folders(plan.folders)
    marks: list[Path] = []
    try:
        for folder in sorted({dst.parent for _, dst in plan.targets}):
            for _ in range(5):
                try:
                    marks.append(_atomic.mark_in_use(folder))
                    break
                except FileNotFoundError:
                    # an interrupted run removed the empty folder it made: make it again
                    made.extend(_make_folders(_check_writable(folder)))
            else:
                raise CliError(f"output folder {str(folder)!r} keeps disappearing")
            _atomic.remove_stale(folder)
    except OSError as e:
        _unmark(marks)
        _remove_empty(made)
        raise CliError(f"cannot write into output folder: {e.strerror or e}") from e
    except BaseException:
        _unmark(marks)
        _remove_empty(made)
        raise
    return made, marks


def _unmark(marks: list[Path]) -> None:
    from unet_fast import _atomic

    for mark in marks:
        _atomic.unmark(mark)
    marks.clear()


def _pixel_limit(args: argparse.Namespace) -> int | None:
    from unet_fast import image_io

    n = getattr(args, "max_pixels", None)
    return image_io.MAX_PIXELS if n is None else (n or None)


def read_input(src: Path, channels: int, max_pixels: int | None) -> torch.Tensor:
    """The image at ``src`` as the model's input ``(C, H, W)``: readable, within ``max_pixels``
    (None: no limit), with ``channels`` channels (after dropping an alpha channel) and finite."""
    from unet_fast import image_io

    try:
        image = image_io.read_image(src, max_pixels=max_pixels)
        image = image_io.match_channels(image, channels, f"image {str(src)!r}")
    except image_io.TooManyPixelsError as e:
        raise CliError(f"{e.describe()}; if you mean it, give --max-pixels N (0: no "
                       "limit)") from e
    except image_io.ImageError as e:
        raise CliError(str(e)) from e
    if image.is_floating_point() and not torch.isfinite(image).all():
        raise CliError(f"image {str(src)!r} contains NaN or Inf pixels, which cannot be "
                       "segmented; replace them (e.g. with numpy.nan_to_num) first")
    return image


def check_inputs(files: list[Path], channels: int,
                 max_pixels: int | None) -> dict[Path, torch.Tensor]:
    """Read every input once before anything is written, so one bad file fails the command
    without results for the others; returns the images that fit in :data:`KEEP_BYTES`."""
    kept: dict[Path, torch.Tensor] = {}
    total = 0
    for src in files:
        image = read_input(src, channels, max_pixels)
        nbytes = image.numel() * image.element_size()
        if total + nbytes <= KEEP_BYTES:
            kept[src] = image
            total += nbytes
    return kept


def check_tile_size(n: int, cfg: Any) -> None:
    """Reject a ``--tile-size`` the network cannot take as its input window."""
    from unet_fast import sizes

    if sizes.is_valid_input_size(n, cfg.depth, cfg.padding):
        return
    below, above = sizes.nearest_valid_sizes(n, cfg.depth, cfg.padding)
    if cfg.padding == "same":
        rule = f"at least {above}"
    else:
        step, lo = 2**cfg.depth, sizes.min_input_size(cfg.depth, cfg.padding)
        nearest = f"{below} or {above}" if below is not None else str(above)
        rule = f"{step}k + {lo % step} and at least {lo}; nearest: {nearest}"
    raise CliError(f"--tile-size {n} is not an input window this {cfg.padding}-padding U-Net "
                   f"of depth {cfg.depth} takes: use {rule} (images of any size are tiled "
                   "anyway; leave --tile-size out to have it chosen)")


def _segment_one(model: Any, image: torch.Tensor, src: Path, dst: Path,
                 args: argparse.Namespace, device: torch.device, show: bool,
                 mask_values: Any) -> None:
    import unet_fast
    from unet_fast import image_io

    cfg = model.config
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
        if "NaN or Inf" in str(e):  # finite in float32 (checked), so beyond the range of --dtype
            raise CliError(f"image {str(src)!r} has pixel values beyond the range of --dtype "
                           f"{args.dtype}; use --dtype float32") from e
        detail = _first_line(e).replace(" (or use segment() for any size)", "")
        raise CliError(f"cannot segment {str(src)!r}: {detail}") from e
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
        else:
            image_io.write_mask(dst, labels, max(cfg.num_classes, 2), mask_values)
    except image_io.ImageError as e:
        raise CliError(str(e)) from e
    except OSError as e:
        raise CliError(f"cannot write {str(dst)!r}: {e.strerror or _first_line(e)}") from e
    except ValueError as e:
        raise CliError(f"cannot write {str(dst)!r}: {_first_line(e)}") from e
