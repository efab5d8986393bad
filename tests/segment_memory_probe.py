"""Run by tests/test_segment.py in a fresh process: peak resident memory of one segment() call.

Usage: ``segment_memory_probe.py KIND BASE H W BUDGET [OUTPUT [DEPTH [PADDING]]]`` with KIND
``reference`` or ``fast`` (defaults: logits, depth 4, valid). Prints one JSON line.

The peak is the kernel's high-water mark of resident memory (VmHWM), reset through
/proc/self/clear_refs just before the call after a warm-up run (weights packed, allocator and
thread pools started), minus the resident memory at that moment (which holds the input image):
everything the call touched, torch allocations, oneDNN scratch and allocator slack included.
"""

from __future__ import annotations

import json
import sys
import time

import torch

import unet_fast as uf


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def main() -> None:
    kind, base_channels, h, w, budget = sys.argv[1], *map(int, sys.argv[2:6])
    output = sys.argv[6] if len(sys.argv) > 6 else "logits"
    depth = int(sys.argv[7]) if len(sys.argv) > 7 else 4
    padding = sys.argv[8] if len(sys.argv) > 8 else "valid"
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ref = uf.reference.UNet(base_channels=base_channels, depth=depth, padding=padding).eval()
    model = ref if kind == "reference" else uf.UNet.from_reference(ref).eval()
    image = torch.rand(1, h, w)
    uf.segment(model, image[:, :300, :300], memory_budget=budget, output=output)  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _status_bytes("VmRSS")
    start = time.perf_counter()
    out = uf.segment(model, image, memory_budget=budget, output=output)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") - base
    print(json.dumps({"peak_bytes": peak, "result_bytes": out.numel() * out.element_size(),
                      "input_bytes": image.numel() * image.element_size(),
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
