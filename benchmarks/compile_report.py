"""Compile every kernel of the GPU forward for an NVIDIA architecture on this machine (no GPU
needed) and report registers, spills, shared memory and the Hopper instructions in the code.

    python benchmarks/compile_report.py                          # paper network, bf16, sm_90
    python benchmarks/compile_report.py --model same --dtypes bf16,tf32 --check

``--check`` exits 1 when a kernel spills, overflows shared memory, or (bf16/fp16/TF32) a GEMM
kernel lacks wgmma or asynchronous copies, or has an asynchronous copy narrower than 16 bytes
where its tiles allow 16 (TF32 weights packed N-contiguous were copied 4 bytes at a time).
Needs a process without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from unet_fast.benchmark.layers import (
    PRECISIONS,
    add_network_arguments,
    layer_plan,
    network_from_args,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/compile_report.py",
                                description=__doc__.split("\n")[0])
    add_network_arguments(p)
    p.add_argument("--dtypes", default="bf16", help="comma-separated: bf16, fp16, fp32, tf32")
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (Hopper)")
    p.add_argument("--first-config-only", action="store_true",
                   help="compile only the tile each conv uses without tuning (the shape-aware "
                        "default), not every autotuning candidate")
    p.add_argument("--unfused-pool", action="store_true",
                   help="standalone max-pool kernel instead of the conv epilogue")
    p.add_argument("--check", action="store_true", help="exit 1 on any problem found")
    p.add_argument("--json", help="also write the report as JSON to this path")
    return p.parse_args(argv)


# LDGSTS.E (4 bytes), LDGSTS.E.64, LDGSTS.E.BYPASS.128, ...: the width is the last number
_LDGSTS = re.compile(r"\bLDGSTS((?:\.[A-Z0-9_]+)*)")
_GEMM_KERNELS = ("conv3x3_kernel", "upconv2x2_kernel")


def _copy_bytes(suffixes: str) -> int:
    widths = [int(p) for p in suffixes.split(".") if p in ("32", "64", "128")]
    return (widths[-1] if widths else 32) // 8


def async_copies(layers, arch: int, all_configs: bool) -> list[dict]:
    """Per GEMM kernel variant of ``layers``: its asynchronous global->shared copies (``LDGSTS``)
    by width in bytes, read from the cubin. Compiles through the same launchers as
    :func:`unet_fast.benchmark.compile_report.compile_layers` (after it, every compile is a hit in
    the JIT's cache)."""
    from unet_fast.triton_kernels import tuning

    from unet_fast.benchmark.compile_report import _CompileOnly, _tool, cuda_target
    from unet_fast.benchmark.layers import TensorSpec
    from unet_fast.ops.fused import LAUNCHES

    tool = _tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (Triton ships one in backends/nvidia/bin)")
    out: list[dict] = []
    every = tuning.all_candidates() if all_configs else contextlib.nullcontext()
    with cuda_target(arch), every, tempfile.TemporaryDirectory() as d, torch.no_grad():
        for layer in layers:
            sink: list = []
            args = tuple(a.empty("cpu") if isinstance(a, TensorSpec) else a for a in layer.args)
            LAUNCHES[layer.op](*args, wrap=lambda k, sink=sink: _CompileOnly(k, sink, all_configs))
            for name, config, compiled in sink:
                if name not in _GEMM_KERNELS:
                    continue
                path = os.path.join(d, "k.cubin")
                Path(path).write_bytes(compiled.asm["cubin"])
                sass = subprocess.run([tool, "--dump-sass", path], capture_output=True,
                                      text=True, check=True).stdout
                widths = Counter(_copy_bytes(m) for m in _LDGSTS.findall(sass))
                out.append({"layer": layer.name, "kernel": name, "config": config,
                            "bytes": {str(b): n for b, n in sorted(widths.items())}})
    return out


def tiles_fill_16_bytes(config: dict, itemsize: int) -> bool:
    """Whether both GEMM operand tiles of a variant hold 16 bytes per thread: a smaller tile (a
    16x16 weight tile of a 16-channel layer, say) cannot be copied 16 bytes at a time whatever
    its layout."""
    m = config.get("BLOCK_M") or config["BLOCK_H"] * config["BLOCK_W"]
    k, n = config["BLOCK_K"], config["BLOCK_N"]
    return min(m, n) * k * itemsize >= 16 * 32 * config["num_warps"]


def narrow_copies(copies: list[dict], itemsize: int) -> list[str]:
    """One line per kernel variant with an asynchronous copy narrower than 16 bytes (variants
    whose tiles are too small for 16-byte copies are not judged)."""
    lines = []
    for c in copies:
        if not tiles_fill_16_bytes(c["config"], itemsize):
            continue
        narrow = sum(n for b, n in c["bytes"].items() if int(b) < 16)
        if narrow:
            total = sum(c["bytes"].values())
            lines.append(f"{c['layer']} {c['kernel']} {c['config']}: {narrow} of {total} "
                         f"asynchronous copies narrower than 16 bytes")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prog = "benchmarks/compile_report.py"
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(f"{prog}: error: unset TRITON_INTERPRET (the interpreter compiles nothing)",
              file=sys.stderr)
        return 2
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in PRECISIONS]
    try:
        if bad or not dtypes:
            raise ValueError(f"--dtypes must name some of {', '.join(PRECISIONS)}, "
                             f"got {args.dtypes!r}")
        cfg, size = network_from_args(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    import triton

    from unet_fast.benchmark.compile_report import compile_layers, format_report, problems

    doc = {"triton": triton.__version__, "torch": torch.__version__, "arch": args.arch,
           "model": args.model, "size": size, "batch": args.batch, "config": cfg.to_dict(),
           "reports": {}}
    found: list[str] = []
    for name in dtypes:
        dtype, tf32 = PRECISIONS[name]
        plan = layer_plan(cfg, size, size, args.batch, dtype, tf32=tf32,
                          fuse_pool=not args.unfused_pool)
        t0 = time.perf_counter()
        kernels = compile_layers(plan.layers, args.arch, all_configs=not args.first_config_only)
        issues = problems(kernels, tensor_cores=name != "fp32")
        copies = async_copies(plan.layers, args.arch, all_configs=not args.first_config_only)
        if name != "fp32":  # IEEE fp32 runs on the FMA units: its operand layout is free
            issues += narrow_copies(copies, dtype.itemsize)
        found += [f"{name}: {line}" for line in issues]
        print(f"\n{args.model} {size}x{size} batch {args.batch}, {name}, sm_{args.arch}, triton "
              f"{triton.__version__} ({time.perf_counter() - t0:.0f} s to compile)")
        print(format_report(kernels))
        widths = Counter()
        for c in copies:
            widths.update({int(b): n for b, n in c["bytes"].items()})
        print("asynchronous copies of the GEMM kernels (LDGSTS), by bytes: "
              + (", ".join(f"{n} x {b} B" for b, n in sorted(widths.items())) or "none"))
        doc["reports"][name] = {"kernels": [k.to_json() for k in kernels], "problems": issues,
                                "async_copies": copies}
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)
    print("\nproblems:" if found else "\nno problems found", *found, sep="\n  ")
    return 1 if found and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
