"""Large images on dask: throughput with 1 and 2 worker processes, and worker peak memory
against image size (it should stay flat: a task holds one chunk plus its context).

    python benchmarks/dask_scaling.py [--sizes 2048 8192 20480] [--throughput-size 4096]
                                     [--chunk 1024] [--base-channels 2] [--depth 2]

Needs the extra ``unet_fast[distributed]``. For each image side S it writes a synthetic uint8
S x S zarr image band by band (the driver never holds it), then segments it into labels with
``segment_large`` on a fresh LocalCluster (so each worker's peak RSS, /proc's ``VmHWM``, belongs
to this run alone; the peak after a 64 x 64 warm-up pass is reported as the baseline of an idle
worker with torch and the model loaded). Prints a table and writes
``results/dask-scaling-<cpu|gpu>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import unet_fast


def _peak_rss() -> int:
    """This process's peak resident memory in bytes since it started its program.

    ``VmHWM`` of /proc, not ``ru_maxrss``: the workers are spawned (fork, then exec), and
    ``ru_maxrss`` survives exec, so it would report the driver's size at the fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: KiB


def make_image(path: Path, side: int, chunk: int) -> None:
    """A smooth pattern plus noise (compresses like a real scan), written band by band."""
    import zarr

    arr = zarr.create_array(str(path), shape=(side, side), chunks=(chunk, chunk), dtype="uint8",
                            overwrite=True)
    rng = np.random.default_rng(0)
    cos_x = np.cos(np.arange(side, dtype=np.float32) / 53.0)
    for y0 in range(0, side, chunk):
        y = np.arange(y0, min(y0 + chunk, side), dtype=np.float32)[:, None]
        band = rng.standard_normal((len(y), side), dtype=np.float32)
        band *= 20
        band += 127 + 60 * np.sin(y / 37.0) * cos_x
        arr[y0:y0 + len(y)] = np.clip(band, 0, 255).astype(np.uint8)


def _warm_up(model_path: str) -> int:
    """In a worker: load the model as the tasks will (cached) and run it once; the peak RSS."""
    from unet_fast.distributed.worker import ModelSpec, checkpoint_key, get_model

    model = get_model(ModelSpec(checkpoint_key(model_path), model_path))
    unet_fast.segment(model, torch.rand(1, 64, 64))
    return _peak_rss()


def run_one(image: Path, model_path: Path, workers: int, chunk: int, tmp: Path) -> dict:
    from unet_fast.distributed import segment_large
    from unet_fast.distributed.cluster import client_for

    with client_for(workers=workers) as client:
        # every worker imports torch and loads the model before the clock starts
        idle = max(client.run(_warm_up, str(model_path.resolve())).values())
        out = tmp / f"out-{workers}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        stats = segment_large(str(image), str(model_path), out, chunk=chunk, client=client)
        peaks = sorted(client.run(_peak_rss).values())
    shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "seconds": round(stats.seconds, 2), "chunks": stats.chunks,
            "worker_peak_rss_mib": [round(p / 2**20) for p in peaks],
            "idle_worker_peak_rss_mib": round(idle / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20480])
    ap.add_argument("--throughput-size", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--base-channels", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--memory-workers", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a new temporary one)")
    args = ap.parse_args()

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="unet_fast_dask_"))
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=2, base_channels=args.base_channels,
                           depth=args.depth).eval()
    model_path = tmp / "model.pt"
    unet_fast.save(model, model_path)
    result = {"device": "gpu" if torch.cuda.is_available() else "cpu", "cpu": platform.processor()
              or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
              "chunk": args.chunk, "model": {"base_channels": args.base_channels,
                                              "depth": args.depth}, "throughput": [], "memory": []}

    side = args.throughput_size
    image = tmp / f"in-{side}.zarr"
    make_image(image, side, args.chunk)
    for workers in (1, 2):
        row = run_one(image, model_path, workers, args.chunk, tmp)
        row["size"] = side
        row["mpx_per_s"] = round(side * side / 1e6 / row["seconds"], 2)
        result["throughput"].append(row)
        print(f"throughput  {side}^2  {workers} worker(s): {row['seconds']:8.1f} s  "
              f"{row['mpx_per_s']:6.2f} Mpx/s", flush=True)
    shutil.rmtree(image, ignore_errors=True)

    for side in args.sizes:
        image = tmp / f"in-{side}.zarr"
        t = time.perf_counter()
        make_image(image, side, args.chunk)
        written = time.perf_counter() - t
        row = run_one(image, model_path, args.memory_workers, args.chunk, tmp)
        row.update(size=side, mpx_per_s=round(side * side / 1e6 / row["seconds"], 2),
                   input_write_s=round(written, 1),
                   whole_image_logits_mib=round(2 * side * side * 4 / 2**20))
        result["memory"].append(row)
        print(f"memory      {side}^2  {args.memory_workers} workers: {row['seconds']:8.1f} s  "
              f"{row['mpx_per_s']:6.2f} Mpx/s  worker peak RSS {row['worker_peak_rss_mib']} MiB "
              f"(idle {row['idle_worker_peak_rss_mib']} MiB; segment() would hold "
              f"{row['whole_image_logits_mib']} MiB of logits alone)", flush=True)
        shutil.rmtree(image, ignore_errors=True)
    result["driver_peak_rss_mib"] = round(_peak_rss() / 2**20)
    out = Path(__file__).parent / "results" / f"dask-scaling-{result['device']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"driver peak RSS {result['driver_peak_rss_mib']} MiB; wrote {out}", file=sys.stderr)
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
