"""Tiling overhead: time in extract_tiles + stitch_tiles as a fraction of a whole segment() call.

    python benchmarks/tiling_overhead.py [--device cpu|cuda] [--base-channels 16] [--size 2000 1500]

Wraps the two native ops as segment() sees them and accumulates their wall time (synchronising
the device around each call on CUDA), then prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import unet_fast as uf
import unet_fast.tiling.overlap_tile as seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--size", type=int, nargs=2, default=(2000, 1500))
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--memory-budget", type=int, default=None)
    ap.add_argument("--model", choices=("fast", "reference"), default="fast")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ref = uf.reference.UNet(base_channels=args.base_channels).eval().to(device)
    model = ref if args.model == "reference" else uf.UNet.from_reference(ref).eval()
    image = torch.rand(1, *args.size, device=device)
    spent = {"extract_tiles": 0.0, "stitch_tiles": 0.0}
    originals = {name: getattr(seg, name) for name in spent}

    def timed(name):
        def call(*a, **k):
            sync()
            start = time.perf_counter()
            out = originals[name](*a, **k)
            sync()
            spent[name] += time.perf_counter() - start
            return out
        return call

    kwargs = dict(tile_size=args.tile_size, memory_budget=args.memory_budget)
    seg.segment(model, image[..., :400, :400], **kwargs)  # warm-up
    for name in spent:
        setattr(seg, name, timed(name))
    sync()
    start = time.perf_counter()
    seg.segment(model, image, **kwargs)
    sync()
    total = time.perf_counter() - start
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.model, "base_channels": args.base_channels, "size": list(args.size),
        "tile_size": args.tile_size, "total_s": round(total, 4),
        "extract_s": round(spent["extract_tiles"], 5), "stitch_s": round(spent["stitch_tiles"], 5),
        "overhead_fraction": round(sum(spent.values()) / total, 5),
    }))


if __name__ == "__main__":
    main()
