"""``unet-fast train``: train a U-Net on a folder of images and masks with the paper's recipe."""

from __future__ import annotations

import argparse
import math


def _class_weights(text: str) -> str | list[float] | None:
    if text == "balanced":
        return "balanced"
    if text == "none":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise argparse.ArgumentTypeError(
            f"expected 'balanced', 'none' or 'BACKGROUND,FOREGROUND' weights, got {text!r}")
    return values


class _ShowDefaults(argparse.HelpFormatter):
    """Appends "(default: X)" to every option with a real default (not None, not a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and action.default is not None and action.default is not False
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a U-Net on images + masks (weight map, elastic deformation)",
        description="Train a U-Net on DATA/images/* and DATA/masks/* (.npy, .png, .tif) with the "
                    "paper's recipe: overlap-tile crops, elastic deformation, weighted "
                    "cross-entropy. Writes OUT/last.pt and OUT/best.pt.",
        formatter_class=_ShowDefaults)
    p.add_argument("data", help="folder with images/ and masks/ subfolders (a mask is named like "
                                "its image, or NAME_mask.EXT)")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="checkpoint folder (last.pt, best.pt)")
    p.add_argument("--val-data", metavar="DIR",
                   help="validation folder, same layout (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="fraction of the images held out for validation when there is no "
                        "--val-data")
    p.add_argument("--mask-type", choices=("instance", "class"), default="instance",
                   help="instance: 0 = background, 1..K = cells (trains background/cell); "
                        "class: pixel values are class indices 0..C-1")
    p.add_argument("--num-classes", type=int, default=2, metavar="C",
                   help="output classes (2 for instance masks)")
    p.add_argument("--base-channels", type=int, default=64, metavar="N",
                   help="channels of the first level, as in the paper")
    p.add_argument("--depth", type=int, default=4, metavar="D",
                   help="number of down-sampling steps, as in the paper")
    p.add_argument("--padding", choices=("valid", "same"), default="valid",
                   help="valid: unpadded convolutions as in the paper; same: zero-padded")
    p.add_argument("--dropout", type=float, default=0.5, metavar="P",
                   help="dropout at the end of the contracting path (0: none)")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="epochs to train (with --resume: the total)")
    p.add_argument("--steps-per-epoch", type=int, default=100, metavar="N",
                   help="optimizer steps per epoch")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="crops per step, as in the paper")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd (momentum, the paper) or adam")
    p.add_argument("--lr", type=float, help="learning rate (default: 0.01 for SGD, 1e-3 for Adam)")
    p.add_argument("--momentum", type=float, default=0.99, help="SGD momentum, as in the paper")
    p.add_argument("--tile", type=int, metavar="N",
                   help="input crop size, a valid input size of the network (default: fits the "
                        "smallest image, at most 572)")
    p.add_argument("--w0", type=float, default=10.0, help="border weight (0: no border term)")
    p.add_argument("--sigma", type=float, default=5.0, help="border weight width in pixels")
    p.add_argument("--class-weights", type=_class_weights, default="balanced",
                   help="'balanced', 'none' or 'BACKGROUND,FOREGROUND'")
    p.add_argument("--elastic-sigma", type=float, default=10.0,
                   help="std in px of the 3x3 displacement grid (0: off)")
    p.add_argument("--no-flips", action="store_true", help="no random flips/rotations")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="random seed (crops, augmentation, init)")
    p.add_argument("--resume", metavar="FILE",
                   help="checkpoint (last.pt) to continue from; --epochs is the total")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from unet_fast.cli import CliError
    from unet_fast.training import train

    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            raise CliError(f"unknown --device {args.device!r} (e.g. cpu, cuda, cuda:1)") from None

    settings = dict(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                    batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                    momentum=args.momentum, tile=args.tile, elastic_sigma=args.elastic_sigma,
                    flips=not args.no_flips, amp=not args.no_amp, seed=args.seed)
    try:
        trainer = train(args.data, args.out, val_data=args.val_data,
                        val_fraction=args.val_fraction, mask_type=args.mask_type,
                        num_classes=args.num_classes, base_channels=args.base_channels,
                        depth=args.depth, padding=args.padding, dropout=args.dropout,
                        w0=args.w0, sigma=args.sigma, class_weights=args.class_weights,
                        resume=args.resume, device=args.device, progress=not args.quiet,
                        **settings)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e).splitlines()[0]) from e
    last = trainer.history[-1] if trainer.history else None
    if last is not None:
        best = "n/a" if math.isinf(trainer.best_iou) else f"{trainer.best_iou:.4f}"
        print(f"trained {last['epoch']} epochs: loss {last['loss']:.4f}, "
              f"val IoU {last['val_iou']:.4f} (best {best}); checkpoints in {args.out}")
    return 0
