"""Per-layer table of the GPU forward: FLOPs, fewest bytes, floor, and (on a GPU) each layer's time
through unet_fast's op and through aten/cuDNN, with their relative L2 error.

    python benchmarks/layers.py                          # paper network, 572 tile, batch 1, bf16
    python benchmarks/layers.py --model same --batch 16 --dtype fp16

Without a GPU it prints the counts (floors too when --tflops and --gbs are given); with one it
measures the ceilings, times every layer and writes
``benchmarks/results/layers-<model>-<size>-b<batch>-<dtype>-<device>.json`` after every layer
(``"complete": false`` until the whole forward is timed too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from unet_fast._atomic import atomic_path
from unet_fast.benchmark.ceilings import measure_ceilings
from unet_fast.benchmark.environment import device_slug, environment
from unet_fast.benchmark.flags import backend_flags
from unet_fast.benchmark.layer_timing import time_layers
from unet_fast.benchmark.layers import (
    PRECISIONS,
    add_network_arguments,
    format_plan,
    layer_plan,
    network_from_args,
)
from unet_fast.benchmark.timing import time_cuda
from unet_fast.config import UNetConfig

CEILING_FOR = {"bf16": "matmul_bf16", "fp16": "matmul_fp16", "fp32": "matmul_fp32",
               "tf32": "matmul_tf32"}
# Largest relative L2 difference per layer between unet_fast's op and aten's on the same inputs,
# both in the precision named. IEEE fp32: DESIGN.md's 1e-5. Otherwise both sides round every
# output (and TF32 every operand) once, ~2^-9 (bf16) / 2^-11 (fp16, TF32) relative, so two
# correct implementations differ by a few 1e-3 at most; these bounds are ~5x that, and a
# miscompiled tile is off by O(1).
MAX_REL_L2 = {"fp32": 1e-5, "tf32": 2e-3, "fp16": 2e-3, "bf16": 1e-2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/layers.py", description=__doc__.split("\n")[0])
    add_network_arguments(p)
    p.add_argument("--dtype", choices=tuple(PRECISIONS), default="bf16")
    p.add_argument("--tflops", type=float, help="matmul rate for the floors (default: measured "
                   "on the GPU; none on the CPU)")
    p.add_argument("--gbs", type=float, help="copy bandwidth in GB/s for the floors (default: "
                   "measured on the GPU; none on the CPU)")
    p.add_argument("--time", action="store_true", help="time the layers on the CPU too (needs "
                   "TRITON_INTERPRET=1; tiny networks only); on a GPU they are always timed")
    p.add_argument("--target-ms", type=float, default=200.0, help="timed milliseconds per row")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--max-rel-l2", type=float, help="fail (exit 1) when a layer's relative L2 "
                   "difference to aten exceeds this (default per dtype: "
                   + ", ".join(f"{k} {v:g}" for k, v in MAX_REL_L2.items()) + ")")
    return p.parse_args(argv)


def error_failures(measured: dict[str, dict], bound: float) -> list[str]:
    """One line per layer whose error against aten is over ``bound`` (NaN and missing fail)."""
    out = []
    for name, row in measured.items():
        err = row.get("rel_l2")
        if err is None or not err <= bound:
            out.append(f"FAIL {name}: relative L2 vs aten {err} > {bound:g}")
    return out


def _forward_ms(cfg: UNetConfig, size: int, batch: int, dtype: torch.dtype, tf32: bool,
                target_ms: float) -> dict:
    """The whole forward (eager launches and CUDA graph), for the gap to the sum of layers."""
    from unet_fast import UNet
    from unet_fast.backends.cuda_triton import CudaTritonBackend
    from unet_fast.benchmark.row_run import _registered

    model = UNet(**cfg.to_dict()).eval().to("cuda", dtype)
    model.check_finite = False
    xs = [torch.randn(batch, cfg.in_channels, size, size, device="cuda").to(dtype)
          for _ in range(2)]
    out = {}
    # the backend takes TF32 from cudnn.allow_tf32, as PyTorch's convolutions do
    with backend_flags({"cudnn.allow_tf32": tf32}), torch.no_grad():
        for key, graphs in (("forward_eager", False), ("forward_cuda_graph", True)):
            with _registered("cuda", CudaTritonBackend(cuda_graphs=graphs)):
                out[key] = time_cuda(model, xs, None, None, target_ms)["median_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, size = network_from_args(args)
    except ValueError as e:
        print(f"benchmarks/layers.py: error: {e}", file=sys.stderr)
        return 2
    dtype, tf32 = PRECISIONS[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timing = device == "cuda" or args.time
    if timing and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("benchmarks/layers.py: error: --time on the CPU needs TRITON_INTERPRET=1",
              file=sys.stderr)
        return 2

    plan = layer_plan(cfg, size, size, args.batch, dtype, tf32=tf32)
    tflops, gbs, ceilings = args.tflops, args.gbs, None
    if device == "cuda" and (tflops is None or gbs is None):
        ceilings = measure_ceilings("cuda")
        tflops = tflops or ceilings[CEILING_FOR[args.dtype]]["tflops"]
        gbs = gbs or ceilings["copy"]["gbps"]

    out_dir = Path(args.out_dir)
    path = out_dir / f"layers-{args.model}-{size}-b{args.batch}-{args.dtype}-{device_slug(device)}.json"
    env = environment(device) if timing else None

    def save(rows: list[dict], forward: dict, complete: bool) -> None:
        """Write what is measured so far (atomically): a killed run keeps its finished layers."""
        doc = {
            "kind": "layers", "complete": complete, "model": args.model, "config": cfg.to_dict(),
            "size": size, "batch": args.batch, "dtype": args.dtype, "environment": env,
            "ceilings": ceilings, "floor_tflops": tflops, "floor_gbs": gbs,
            "flops": plan.flops, "min_bytes": plan.min_bytes, "forward_ms": forward,
            "layers": [dict(r, flops=layer.flops, min_bytes=layer.min_bytes,
                            out_shape=list(layer.outputs[0].shape),
                            floor_ms=layer.floor_ms(tflops, gbs)[0] if tflops and gbs else None)
                       for r, layer in zip(rows, plan.layers, strict=False)],
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))

    measured, rows, forward = {}, [], {}
    if timing:
        rows = time_layers(plan, device, target_ms=args.target_ms,
                           on_row=lambda done: save(done, {}, complete=False))
        measured = {r["name"]: {"unet_fast": r.get("unet_fast", {}).get("median_ms"),
                                "aten": r.get("aten", {}).get("median_ms"),
                                "rel_l2": r.get("rel_l2_vs_aten")} for r in rows}
        if device == "cuda":
            forward = _forward_ms(cfg, size, args.batch, dtype, tf32, args.target_ms)

    title = (f"{args.model} network, {args.batch}x{cfg.in_channels}x{size}x{size}, {args.dtype}, "
             f"{device}")
    print(title)
    if tflops and gbs:
        print(f"ceilings: {tflops:.1f} TFLOP/s, {gbs:.0f} GB/s"
              + (" (measured in this run)" if ceilings else " (given on the command line)"))
    print(format_plan(plan, tflops, gbs, measured))
    for key, ms in forward.items():
        print(f"{key}: {ms:.4f} ms")
    if not timing:
        return 0
    save(rows, forward, complete=True)
    print(f"wrote {path}", file=sys.stderr)
    bound = args.max_rel_l2 if args.max_rel_l2 is not None else MAX_REL_L2[args.dtype]
    failures = error_failures(measured, bound)
    for line in failures:
        print(line)
    print(f"error check: {len(measured) - len(failures)}/{len(measured)} layers within "
          f"{bound:g} of aten")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
