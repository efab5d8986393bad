"""Every Triton kernel of the GPU forward compiles for sm_90 (H100/H200) on this machine, with the
JIT's own specialisation, and the machine code is what Hopper needs: wgmma and 16-byte
asynchronous copies for bf16/fp16/TF32, no tensor cores for IEEE fp32, no spills, shared memory
in bounds.
No GPU needed (benchmarks/compile_report.py); catches what the interpreter cannot."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "compile_report.py"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


def _report(tmp_path, *args: str) -> dict:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--base-channels", "16", "--depth", "1",
                           "--check", "--json", str(out), *args],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _kernels(doc: dict, dtype: str) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for k in doc["reports"][dtype]["kernels"]:
        by_name.setdefault(k["kernel"], []).append(k)
    return by_name


def test_paper_network_bf16_every_autotune_candidate(tmp_path):
    doc = _report(tmp_path, "--model", "paper", "--dtypes", "bf16", "--base-channels", "64")
    kernels = _kernels(doc, "bf16")
    assert set(kernels) == {"conv3x3_kernel", "upconv2x2_kernel"}
    # 6 conv layers at depth 1 (2 encoder, 2 bottleneck, cat, head), each with every candidate
    # autotuning would try for it: the two 128-channel bottleneck convs also try 64-wide N tiles
    from unet_fast.triton_kernels.conv3x3 import _TC_NARROW_SHAPES, _TC_SHAPES

    convs = kernels["conv3x3_kernel"]
    assert len(convs) == 6 * len(_TC_SHAPES) + 2 * len(_TC_NARROW_SHAPES)
    bottleneck = [k for k in convs if k["layer"].startswith("bottleneck")]
    assert {k["config"]["BLOCK_N"] for k in bottleneck} == {64, 128}
    for k in kernels["conv3x3_kernel"] + kernels["upconv2x2_kernel"]:
        assert k["sass"].get("HGMMA", 0) > 0 and k["local_bytes"] == 0, k
        # every K loop is software-pipelined; the 1-channel first conv has no loop (one K step)
        first = k["layer"] == "enc0.conv1"
        assert k["config"].get("FLAT_K") == (16 if first else None), k
        assert first or k["sass"].get("LDGSTS", 0) > 0, k
    assert doc["reports"]["bf16"]["problems"] == []
    _assert_copies_16_bytes(doc, "bf16", len(convs) + len(kernels["upconv2x2_kernel"]))


def _assert_copies_16_bytes(doc: dict, dtype: str, variants: int) -> None:
    """Every asynchronous copy (LDGSTS) of every GEMM kernel variant moves 16 bytes."""
    copies = doc["reports"][dtype]["async_copies"]
    assert len(copies) == variants
    for c in copies:
        looped = c["layer"] != "enc0.conv1"  # the one-step K of the first conv copies nothing
        assert set(c["bytes"]) == ({"16"} if looped else set()), c


def test_paper_network_tf32_weights_copied_16_bytes(tmp_path):
    """TF32 wgmma reads its weight operand K-major: the weights are packed K-contiguous so that
    the pipeline copies them 16 bytes at a time (packed N-contiguous, 80% of the copies moved 4
    bytes), in every autotuning candidate, without spills."""
    doc = _report(tmp_path, "--model", "paper", "--dtypes", "tf32", "--base-channels", "64")
    kernels = _kernels(doc, "tf32")
    gemm = kernels["conv3x3_kernel"] + kernels["upconv2x2_kernel"]
    for k in gemm:
        assert k["sass"].get("HGMMA", 0) > 0 and k["local_bytes"] == 0, k
        assert k["registers"] <= 255, k
    _assert_copies_16_bytes(doc, "tf32", len(gemm))
    assert doc["reports"]["tf32"]["problems"] == []


def test_same_network_other_precisions_and_unfused_pool(tmp_path):
    doc = _report(tmp_path, "--model", "same", "--upsample", "bilinear",
                  "--dtypes", "fp16,tf32,fp32", "--first-config-only", "--unfused-pool")
    for dtype in ("fp16", "tf32"):
        kernels = _kernels(doc, dtype)
        assert {"conv3x3_kernel", "maxpool2x2_kernel", "upsample_bilinear2x_kernel"} <= set(kernels)
        assert all(k["sass"].get("HGMMA", 0) > 0 for k in kernels["conv3x3_kernel"])
    # IEEE fp32 must not be rounded to TF32 on the tensor cores
    assert all(k["sass"].get("HGMMA", 0) == 0 and k["sass"].get("HMMA", 0) == 0
               for k in _kernels(doc, "fp32")["conv3x3_kernel"])


def test_crop_concat_compiles(tmp_path):
    code = (
        "import torch\n"
        "from unet_fast.benchmark.compile_report import compile_layers, problems\n"
        "from unet_fast.benchmark.layers import Layer, TensorSpec\n"
        "cl = lambda s: TensorSpec(s, torch.empty(s).contiguous("
        "memory_format=torch.channels_last).stride(), torch.float16)\n"
        "layer = Layer('cat', 'crop_concat', (cl((1, 32, 40, 40)), cl((1, 32, 32, 32)), False),"
        " (), 0, 0)\n"
        "ks = compile_layers([layer])\n"
        "assert [k.kernel for k in ks] == ['crop_concat_kernel'] and not problems(ks, True), ks\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_wide_head_candidates_do_not_spill(tmp_path):
    """The fused head holds all of C_out in one tile: at 129-256 channels (BLOCK_N 256) the
    128-pixel 4-warp and 256-pixel tiles used to spill 0.6-1 KB; every candidate left must not."""
    code = (
        "import torch\n"
        "from unet_fast.benchmark.compile_report import compile_layers, problems\n"
        "from unet_fast.benchmark.layers import Layer, TensorSpec\n"
        "def spec(s, d):\n"
        "    t = torch.empty(s)\n"
        "    t = t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t\n"
        "    return TensorSpec(s, t.stride(), d)\n"
        "for dt, tf32 in ((torch.bfloat16, False), (torch.float32, True), (torch.float32, False)):\n"
        "    args = (spec((1, 64, 30, 30), dt), spec((576, 200), dt), spec((200,), dt),\n"
        "            spec((200, 2), dt), spec((2,), dt), 0, tf32)\n"
        "    ks = compile_layers([Layer('head', 'conv3x3_head', args, (), 0, 0)])\n"
        "    assert ks and all(k.config['BLOCK_N'] == 256 for k in ks), ks\n"
        "    bad = [(k.config, k.local_bytes) for k in ks if k.local_bytes]\n"
        "    assert not bad, (dt, tf32, bad)\n"
        "    print(dt, tf32, len(ks), 'candidates, no spills')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("no spills") == 3


def test_narrow_copies_judged_only_where_the_tiles_allow_16_bytes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compile_report_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    big = {"BLOCK_H": 8, "BLOCK_W": 16, "BLOCK_K": 32, "BLOCK_N": 128, "num_warps": 4}
    small = {**big, "BLOCK_K": 16, "BLOCK_N": 16}  # 16x16 fp32 weights: 8 bytes a thread
    copies = [{"layer": "a", "kernel": "conv3x3_kernel", "config": c, "bytes": {"4": 8, "16": 8}}
              for c in (big, small)]
    (line,) = script.narrow_copies(copies, 4)
    assert line.startswith("a conv3x3_kernel") and "8 of 16" in line and "'BLOCK_N': 128" in line
    assert script._copy_bytes(".E.BYPASS.128") == 16 and script._copy_bytes(".E") == 4
    assert script._copy_bytes(".E.64") == 8


def test_refuses_interpreter_process():
    env = {**_env(), "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "TRITON_INTERPRET" in proc.stderr
