"""benchmarks/host_overhead.py: what one forward of the cuda-triton backend asks of the GPU, with
every launch stubbed (no GPU needed). Checks the structure (one graph replay and no kernel launch
at small batches by default, every kernel launched otherwise), not the time."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "host_overhead.py"
DEPTH = 2
# per forward: two convs per encoder level, two at the bottleneck, an up-conv and two convs per
# decoder level
KERNELS = 2 * DEPTH + 2 + 3 * DEPTH


def _run(tmp_path, *args: str) -> dict[str, dict]:
    out = tmp_path / "host.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--base-channels", "8", "--depth",
                           str(DEPTH), "--calls", "20", "--json", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not GPU time" in proc.stdout
    return {r["name"]: r for r in json.loads(out.read_text())}


def test_batch_1_replays_one_graph_by_default(tmp_path):
    rows = _run(tmp_path)
    graph = {"launches": 0, "captures": 0, "replays": 1}
    assert rows["default"]["per_forward"] == graph and rows["default"]["device"] == "meta"
    assert rows["graphs"]["per_forward"] == graph
    assert rows["no graphs"]["per_forward"] == {"launches": KERNELS, "captures": 0, "replays": 0}
    assert rows["no graphs"]["device"] == "cpu"
    assert all(r["median_us"] > 0 and r["calls"] == 20 for r in rows.values())


def test_larger_batches_launch_the_kernels_by_default(tmp_path):
    from unet_fast.backends import _graphs

    rows = _run(tmp_path, "--batch", str(_graphs.AUTO_MAX_BATCH + 1), "--dtype", "bf16")
    assert rows["default"]["per_forward"] == {"launches": KERNELS, "captures": 0, "replays": 0}
    assert rows["graphs"]["per_forward"] == {"launches": 0, "captures": 0, "replays": 1}


def test_refuses_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr
