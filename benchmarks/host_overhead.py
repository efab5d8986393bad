"""CPU-side cost of one forward of the ``cuda-triton`` backend, measured without a GPU: every GPU
launch is stubbed, so the figure is the host's Python/dispatcher work per forward, **not** GPU
time and not a latency.

    python benchmarks/host_overhead.py                       # paper network, 572, batch 1, fp32
    python benchmarks/host_overhead.py --batch 16 --calls 500 --json out.json

What stands in for the GPU (all undone on exit):

* with CUDA graphs (the default at small batches) tensors live on the ``meta`` device and report
  ``is_cuda``: a replayed forward touches no kernel, and the static input's copy and the output's
  clone cost what a CUDA op's dispatch costs, without the driver call;
* without them tensors are CPU tensors the ops accept as the interpreter's (the kernels' host
  path is the GPU's: tile choice, launch), outputs allocated by the CPU allocator (no data is
  touched), and a Triton launch (``JITFunction.run``: argument binding, specialisation, cache
  lookup and the driver call) does nothing but count itself;
* CUDA streams, graph capture and replay are fakes that count captures and replays (a replay
  is one driver call on a GPU; the static input's copy and the output's clone are two more);
* the kernels' self-check (its first call per key) passes without running.

Each configuration is warmed up (the first call per input shape captures its graph), then timed
call by call with ``time.perf_counter_ns``; the median is the figure (p10/p90 beside it, as the
machine may be shared). Runs in a process without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PROG = "benchmarks/host_overhead.py"


@dataclass
class Counts:
    """What the stubbed GPU was asked to do."""

    launches: int = 0  # Triton kernel launches
    captures: int = 0  # CUDA graphs captured
    replays: int = 0  # CUDA graph replays

    def snapshot(self) -> Counts:
        return Counts(self.launches, self.captures, self.replays)

    def minus(self, other: Counts) -> Counts:
        return Counts(self.launches - other.launches, self.captures - other.captures,
                      self.replays - other.replays)


class _FakeStream:
    """Every fake stream is the one default stream (as for a caller that never picks one)."""

    def __init__(self, device=None, **kwargs) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FakeStream)

    __hash__ = object.__hash__

    def wait_stream(self, other) -> None:
        pass


def _setattrs(patches: list[tuple[object, str, object]]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for obj, name, value in patches:
        missing = object()
        old = obj.__dict__.get(name, missing) if isinstance(obj, type) else getattr(obj, name)

        def restore(obj=obj, name=name, old=old, missing=missing):
            if old is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, old)

        setattr(obj, name, value)
        stack.callback(restore)
    return stack


@contextlib.contextmanager
def stubbed_gpu() -> Iterator[Counts]:
    """Within the block the backend runs on ``meta`` tensors as if they were CUDA ones, and
    nothing is launched (module docstring); yields the running counts."""
    from triton.runtime.jit import JITFunction

    from unet_fast.backends import self_check
    from unet_fast.ops import fused

    counts = Counts()

    class FakeGraph:
        def __init__(self, *args, **kwargs) -> None:
            counts.captures += 1

        def replay(self) -> None:
            counts.replays += 1

    def launch(self, *args, **kwargs):
        counts.launches += 1

    def check(model, device, dtype, kernels):
        return self_check.Verdict(True, 0.0, 0.0, "")

    real_autocast = torch.is_autocast_enabled

    def autocast_enabled(device_type=None):  # autocast has no meta state: CUDA's stands in
        if device_type is None:
            return real_autocast()
        return real_autocast("cuda" if device_type == "meta" else device_type)

    patches = [
        (torch, "is_autocast_enabled", autocast_enabled),
        (torch.Tensor, "is_cuda", property(lambda t: t.device.type in ("cuda", "meta"))),
        (JITFunction, "run", launch),
        (torch.cuda, "Stream", _FakeStream),
        (torch.cuda, "current_stream", _FakeStream),
        (torch.cuda, "stream", lambda s: contextlib.nullcontext()),
        (torch.cuda, "CUDAGraph", FakeGraph),
        (torch.cuda, "graph", lambda g, **kw: contextlib.nullcontext()),
        (torch.cuda, "is_current_stream_capturing", lambda: False),
        (self_check, "run_check", check),
        (fused, "INTERPRET", True),  # the ops take CPU tensors (the kernels' own flag stays off)
    ]
    with _setattrs(patches):
        yield counts


@dataclass
class Result:
    """One configuration's per-forward host cost (microseconds) and GPU work asked for."""

    name: str
    batch: int
    calls: int
    median_us: float
    p10_us: float
    p90_us: float
    per_forward: dict = field(default_factory=dict)  # Counts of one steady-state forward
    device: str = ""  # what the tensors were: meta (graph replay) or cpu (launches)


def measure(name: str, backend, model, x: torch.Tensor, calls: int, counts: Counts,
            warmup: int = 3) -> Result:
    """Time ``backend.forward(model, x)`` ``calls`` times after ``warmup`` calls."""
    with torch.inference_mode():
        for _ in range(warmup):
            backend.forward(model, x)
        before = counts.snapshot()
        backend.forward(model, x)
        one = counts.snapshot().minus(before)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            backend.forward(model, x)
            times.append((time.perf_counter_ns() - t0) / 1e3)
    deciles = statistics.quantiles(times, n=10)
    return Result(name, x.shape[0], calls, statistics.median(times), deciles[0], deciles[-1],
                  asdict(one))


def run(args: argparse.Namespace) -> list[Result]:
    from unet_fast.backends.cuda_triton import CudaTritonBackend
    from unet_fast.benchmark.cases import network_config, network_size
    from unet_fast.benchmark.layers import PRECISIONS
    from unet_fast.model import UNet

    dtype, tf32 = PRECISIONS[args.dtype]
    cfg = network_config(args.model, base_channels=args.base_channels, depth=args.depth)
    size = args.size or network_size(args.model, args.depth)
    shape = (args.batch, cfg.in_channels, size, size)
    old_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    results = []
    try:
        with stubbed_gpu() as counts:
            for name, kwargs in (("default", {}), ("graphs", {"cuda_graphs": True}),
                                 ("no graphs", {"cuda_graphs": False})):
                # meta tensors where the forward replays a graph (no op runs), else CPU ones
                for device in ("meta", "cpu"):
                    with torch.device(device):
                        model = UNet(**cfg.to_dict()).eval().to(dtype)
                    x = torch.zeros(shape, device=device, dtype=dtype)
                    backend = CudaTritonBackend(self_check=True, **kwargs)
                    result = measure(name, backend, model, x, args.calls, counts)
                    if result.per_forward["replays"]:
                        break
                result.device = device
                results.append(result)
    finally:
        torch.backends.cudnn.allow_tf32 = old_tf32
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("paper", "same"), default="paper")
    p.add_argument("--size", type=int, help="input height = width (default 572 paper, 512 same)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "tf32"), default="fp32")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per configuration")
    p.add_argument("--json", help="also write the results as JSON to this path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(f"{PROG}: error: unset TRITON_INTERPRET (the launches to stub are the compiled "
              f"kernels')", file=sys.stderr)
        return 2
    results = run(args)
    print(f"{args.model} network, batch {args.batch}, {args.dtype}: host cost per forward, GPU "
          f"launches stubbed (median of {args.calls} calls; not GPU time)")
    for r in results:
        print(f"  {r.name:10s} {r.median_us:8.1f} us  (p10 {r.p10_us:.1f}, p90 {r.p90_us:.1f})"
              f"  per forward: {r.per_forward}, {r.device} tensors")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
