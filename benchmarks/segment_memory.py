"""Peak resident memory of ``segment()`` on a large image, per output kind and padding.

Each measurement runs ``tests/segment_memory_probe.py`` in a fresh process (peak RSS of the
call alone, after a warm-up). Defaults: a 12000x12000 one-channel image, a tiny network (base 2,
depth 2) and a 64 MiB ``memory_budget``, which is issue 19's case::

    python benchmarks/segment_memory.py [--size 12000] [--budget-mib 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).resolve().parent.parent / "tests" / "segment_memory_probe.py"


def measure(size: int, budget: int, output: str, padding: str, kind: str = "fast") -> dict:
    """One probe run: its JSON line as a dict."""
    res = subprocess.run([sys.executable, str(PROBE), kind, "2", str(size), str(size),
                          str(budget), output, "2", padding],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=12000)
    p.add_argument("--budget-mib", type=int, default=64)
    p.add_argument("--outputs", default="labels,logits")
    args = p.parse_args()
    mib = 2**20
    # the probe's peak excludes the input, which is resident before the call
    print(f"{'padding':8} {'output':7} {'peak MiB':>9} {'input':>7} {'result':>7} "
          f"{'peak-result':>12} {'s':>6}")
    for padding in ("valid", "same"):
        for output in args.outputs.split(","):
            r = measure(args.size, args.budget_mib * mib, output, padding)
            extra = r["peak_bytes"] - r["result_bytes"]
            print(f"{padding:8} {output:7} {r['peak_bytes'] / mib:9.0f} "
                  f"{r['input_bytes'] / mib:7.0f} {r['result_bytes'] / mib:7.0f} "
                  f"{extra / mib:12.0f} {r['seconds']:6.1f}", flush=True)


if __name__ == "__main__":
    main()
