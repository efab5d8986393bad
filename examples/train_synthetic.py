"""Train on synthetic touching cells, with and without the paper's weight map, on the CPU.

    python examples/train_synthetic.py

Generates a training and a test set (unet_fast.training.synthetic), trains the same small U-Net
twice from the same initialisation and the same sequence of augmented crops (once with the
border weight map w0=10, sigma=5 and balanced class weights, once with plain cross-entropy),
then reports on the test set the foreground IoU and the fraction of touching-cell pairs that come
out as separate objects, and checks that unet_fast.UNet and the reference U-Net give the same
masks from the trained checkpoint. Repeated for each seed of --seeds (default 0,1,2), with
totals over the seeds; results also go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import unet_fast
from unet_fast import reference
from unet_fast.benchmark.environment import cpu_name
from unet_fast.training import train
from unet_fast.training.checkpoint import load_model
from unet_fast.training.data import load_folder
from unet_fast.training.metrics import iou, separated_fraction
from unet_fast.training.synthetic import write_dataset
from unet_fast.training.trainer import predict_mask


def score(model: torch.nn.Module, samples: list, instances: list[np.ndarray]) -> dict:
    ious, sep_ok, sep_n = [], 0.0, 0
    for s, lab in zip(samples, instances, strict=True):
        pred = predict_mask(model, s.image)
        ious.append(iou(pred, s.target.numpy()))
        frac, n = separated_fraction(pred == 1, lab)
        sep_ok += frac * n
        sep_n += n
    return {"foreground_iou": float(np.mean(ious)), "separated": sep_ok / max(sep_n, 1),
            "touching_pairs": sep_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/synthetic", help="data, checkpoints and results")
    ap.add_argument("--train-images", type=int, default=16)
    ap.add_argument("--test-images", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2",
                    help="comma list: each seed draws its own data, initialisation and crops")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")]
    runs = {seed: run_seed(args, seed, Path(args.out) / f"seed{seed}") for seed in seeds}
    summary: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "threads": args.threads,
                     "torch": torch.__version__, "args": vars(args), "seeds": runs, "total": {}}
    print(f"\nover {len(seeds)} seed(s):")
    for name in next(iter(runs.values()))["variants"]:
        per = [r["variants"][name] for r in runs.values()]
        pairs = sum(v["touching_pairs"] for v in per)
        ok = sum(round(v["separated"] * v["touching_pairs"]) for v in per)
        mean_iou = float(np.mean([v["foreground_iou"] for v in per]))
        summary["total"][name] = {"mean_foreground_iou": mean_iou, "separated_pairs": ok,
                                  "touching_pairs": pairs}
        print(f"{name:40s} mean IoU {mean_iou:.4f}  separated {ok}/{pairs} = {ok / pairs:.3f}")
    same = sum(r["fast_vs_reference_identical_pixels"] for r in runs.values()) / len(runs)
    print(f"unet_fast.UNet vs reference: {100 * same:.3f}% of mask pixels identical")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(summary, indent=2))


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict:
    """Both variants for one seed: data, initialisation and crops all drawn from ``seed``."""
    cells = dict(n_cells=16)
    write_dataset(out / "train", args.train_images, args.size, seed=seed, **cells)
    write_dataset(out / "test", args.test_images, args.size, seed=seed + 1000, **cells)
    test = load_folder(out / "test")
    test_instances = [np.load(p) for p in sorted((out / "test" / "masks").glob("*.npy"))]

    common = dict(val_data=out / "test", base_channels=args.base_channels, depth=args.depth,
                  dropout=0.0, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                  optimizer=args.optimizer, seed=seed, device="cpu", progress=False)
    variants = {"weight map (w0=10, sigma=5, balanced)": dict(w0=10.0, sigma=5.0,
                                                               class_weights="balanced"),
                "plain cross-entropy": dict(w0=0.0, class_weights=None)}
    results: dict = {"variants": {}}
    for name, kw in variants.items():
        t0 = time.perf_counter()
        ckdir = out / ("weighted" if kw["w0"] else "plain")
        trainer = train(out / "train", ckdir, **common, **kw)
        secs = time.perf_counter() - t0
        model = load_model(ckdir / "last.pt")
        res = score(model, test, test_instances)
        res.update(train_seconds=round(secs, 1), tile=trainer.tile,
                   val_iou_per_epoch=[round(h["val_iou"], 4) for h in trainer.history])
        results["variants"][name] = res
        print(f"seed {seed}  {name:40s} IoU {res['foreground_iou']:.4f}  separated "
              f"{res['separated']:.3f} of {res['touching_pairs']} touching pairs  "
              f"({secs:.0f} s)")

    ref = load_model(out / "weighted" / "last.pt", reference.UNet)
    fast = load_model(out / "weighted" / "last.pt", unet_fast.UNet)
    same = total = 0
    for s in test:
        a, b = predict_mask(ref, s.image), predict_mask(fast, s.image)
        same += int((a == b).sum())
        total += a.size
    results["fast_vs_reference_identical_pixels"] = same / total
    return results


if __name__ == "__main__":
    main()
