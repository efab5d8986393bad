"""Per-layer time of the CPU backend's 3x3 convolutions: direct (oneDNN) vs Winograd F(4x4, 3x3)
vs F(2x2, 3x3) on the layers' real inputs, against the arithmetic floor, and which one the
backend's own measured plan picked.

    python benchmarks/cpu_layers.py [--model paper|same] [--dtype fp32|bf16] [--threads 2]

The floor of a layer is its direct FLOPs (2 per multiply-add) at the 3x3-convolution ceiling
measured in the same run (the best oneDNN throughput on a large 3x3 layer, as benchmarks/run.py
measures it); ``wino4 floor`` is F(4x4)'s GEMM FLOPs (36 products per 4x4 output tile) at the same
rate, i.e. what Winograd would take if its transforms were free. The tactics of one layer are
timed interleaved (rotated each round), median of ``--repeats``. Writes
benchmarks/results/cpu-layers-<model>-<dtype>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import unet_fast  # noqa: E402
from unet_fast.backends import cpu_conv3x3  # noqa: E402
from unet_fast.benchmark.ceilings import measure_ceilings  # noqa: E402
from unet_fast.benchmark.environment import cpu_name  # noqa: E402
from unet_fast.reference import UNet as Reference  # noqa: E402


def capture_layers(model: unet_fast.UNet, x: torch.Tensor) -> list[tuple]:
    """(layer, input, skip, same, chosen tactic) for every 3x3 layer of one planned forward."""
    seen: list[tuple] = []
    real = cpu_conv3x3._PlannedForward.conv

    def conv(self, layer, inp, relu=True, skip=None, same=False):
        out = real(self, layer, inp, relu, skip, same)
        seen.append((layer, inp, skip, same, self.measured[-1] if self.measured else None))
        return out

    cpu_conv3x3._PlannedForward.conv = conv
    try:
        with torch.no_grad():
            model(x)
    finally:
        cpu_conv3x3._PlannedForward.conv = real
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["paper", "same"], default="paper")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    ref = Reference(padding="same", in_channels=3) if args.model == "same" else Reference()
    model = unet_fast.UNet.from_reference(ref.eval()).to(dtype)
    size = 512 if args.model == "same" else 572
    x = torch.randn(1, ref.config.in_channels, size, size, dtype=dtype)
    ceiling = measure_ceilings("cpu")[f"conv3x3_{args.dtype}"]["tflops"] * 1e12
    rows = []
    for i, (layer, inp, skip, same, chosen) in enumerate(capture_layers(model, x)):
        tactics = layer.candidates()
        times: dict[str, list[float]] = {t: [] for t in tactics}
        with torch.no_grad():
            for t in tactics:
                layer.run(t, inp, True, skip, same)  # build the form, warm up
            for r in range(args.repeats):
                for t in tactics[r % len(tactics):] + tactics[:r % len(tactics)]:
                    start = time.perf_counter()
                    layer.run(t, inp, True, skip, same)
                    times[t].append(time.perf_counter() - start)
            layer.keep_only({chosen} if chosen else set())
        h, w = inp.shape[-2:]
        pad = 1 if args.model == "same" else 0
        oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
        flops = 2 * 9 * oh * ow * layer.in_channels * layer.out_channels
        wino_flops = 2 * 36 * -(-oh // 4) * -(-ow // 4) * layer.in_channels * layer.out_channels
        ms = {t: statistics.median(v) * 1e3 for t, v in times.items()}
        rows.append({"layer": i, "in": layer.in_channels, "out": layer.out_channels, "hw": [h, w],
                     "two_sources": skip is not None, "ms": ms, "chosen": chosen,
                     "floor_ms": flops / ceiling * 1e3, "wino4_floor_ms": wino_flops / ceiling * 1e3})
    out = ROOT / "benchmarks" / "results" / f"cpu-layers-{args.model}-{args.dtype}.json"
    doc = {"model": args.model, "size": size, "dtype": args.dtype, "threads": args.threads,
           "conv3x3_ceiling_tflops": ceiling / 1e12, "repeats": args.repeats,
           "cpu": cpu_name(),
           "torch": torch.__version__, "layers": rows}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"| # | in->out | input | direct ms | F(4x4) ms | F(2x2) ms | floor ms | F(4x4) floor ms | "
          f"chosen |  ({args.model} {size}, {args.dtype}, {args.threads} threads, 3x3 ceiling "
          f"{ceiling / 1e9:.0f} GFLOP/s)")
    print("|---|---|---|---|---|---|---|---|---|")
    total = {"direct": 0.0, "chosen": 0.0, "floor": 0.0}
    for r in rows:
        ms = r["ms"]
        cell = {t: f"{ms[t]:.1f}" if t in ms else "-" for t in ("direct", "winograd4", "winograd2")}
        print(f"| {r['layer']} | {r['in']}->{r['out']}{' (2 src)' if r['two_sources'] else ''} | "
              f"{r['hw'][0]}x{r['hw'][1]} | {cell['direct']} | {cell['winograd4']} | "
              f"{cell['winograd2']} | {r['floor_ms']:.1f} | {r['wino4_floor_ms']:.1f} | {r['chosen']} |")
        total["direct"] += ms["direct"]
        total["chosen"] += ms.get(r["chosen"] or "direct", ms["direct"])
        total["floor"] += r["floor_ms"]
    print(f"\nsum of 3x3 layers: direct {total['direct']:.0f} ms, as planned {total['chosen']:.0f} ms "
          f"({total['direct'] / total['chosen']:.2f}x), direct floor {total['floor']:.0f} ms; wrote {out}")


if __name__ == "__main__":
    main()
