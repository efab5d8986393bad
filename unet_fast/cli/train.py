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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a U-Net on images + masks (weight map, elastic deformation)",
        description="Train a U-Net on DATA/images/* and DATA/masks/* (.npy, .png, .tif) with the "
                    "paper's recipe: overlap-tile crops, elastic deformation, weighted "
                    "cross-entropy. Writes OUT/last.pt and OUT/best.pt.")
    p.add_argument("data", help="folder with images/ and masks/ subfolders")
    p.add_argument("-o", "--out", required=True, help="checkpoint folder")
    p.add_argument("--val-data", help="validation folder (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--mask-type", choices=("instance", "class"), default="instance")
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--padding", choices=("valid", "same"), default="valid")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--lr", type=float, help="default 0.01 (SGD) or 1e-3 (Adam)")
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--tile", type=int, help="input crop size (a valid size; default: fits the "
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="checkpoint (last.pt) to continue from; --epochs is the total")
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
