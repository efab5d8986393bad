"""The per-layer plan of the GPU forward (benchmarks/layers.py): what each layer launches, its
FLOPs and fewest bytes, floors, and the per-layer timing harness (its aten equivalents must
compute what the ops compute)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from unet_fast.benchmark.layers import TensorSpec, format_plan, layer_plan
from unet_fast.config import UNetConfig
from unet_fast.flops import forward_flops

from .triton_helpers import INTERPRET, needs_triton

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAPER = UNetConfig(in_channels=1, num_classes=2)
SAME = UNetConfig(in_channels=3, num_classes=2, padding="same", upsample="bilinear")


@pytest.mark.parametrize("cfg,size,batch", [(PAPER, 572, 1), (PAPER, 572, 3), (SAME, 64, 2),
                                            (UNetConfig(norm="batch", depth=2), 60, 1)])
def test_plan_flops_are_the_networks(cfg, size, batch):
    plan = layer_plan(cfg, size, size, batch)
    assert plan.flops == batch * forward_flops(cfg, size, size)


def test_paper_plan_launch_order_and_shapes():
    plan = layer_plan(PAPER, 572, 572)
    ops = [layer.op for layer in plan.layers]
    assert ops == (["conv3x3", "conv3x3_pool"] * 4 + ["conv3x3"] * 2
                   + ["upconv2x2", "conv3x3_cat", "conv3x3"] * 3
                   + ["upconv2x2", "conv3x3_cat", "conv3x3_head"])
    assert plan.layers[0].name == "enc0.conv1"
    assert plan.layers[-1].name == "dec3.conv2+head"
    assert plan.layers[-1].outputs[0].shape == (1, 2, 388, 388)
    # the pooled encoder conv writes the skip and the pooled map
    assert [o.shape for o in plan.layers[1].outputs] == [(1, 64, 568, 568), (1, 64, 284, 284)]


def test_same_plan_uses_bilinear_kernel():
    plan = layer_plan(SAME, 64, 64)
    assert [layer.name for layer in plan.layers if layer.op == "upsample_bilinear2x"] == [
        f"dec{j}.upsample" for j in range(4)]


def test_fewest_bytes_and_floor():
    plan = layer_plan(PAPER, 572, 572, dtype=torch.bfloat16)
    conv = plan.layers[2]  # enc1.conv1: 64 -> 128 channels, 284 -> 282
    expected = 2 * (64 * 284 * 284 + 9 * 64 * 128 + 128 + 128 * 282 * 282)
    assert conv.min_bytes == expected
    assert conv.flops == 2 * 282 * 282 * 9 * 64 * 128
    # dec3.cat+conv1 reads only the 392x392 window of the 568x568 skip, not all of it
    cat = plan.layers[-2]
    skip_window = 64 * 392 * 392
    up = 64 * 392 * 392
    out = 64 * 390 * 390
    assert cat.min_bytes == 2 * (skip_window + up + 9 * 128 * 64 + 64 + out)
    ms, bound = conv.floor_ms(tflops=1000.0, bandwidth_gbs=100000.0)
    assert bound == "math" and ms == pytest.approx(conv.flops / 1e15 * 1e3)
    ms, bound = conv.floor_ms(tflops=1e6, bandwidth_gbs=1.0)
    assert bound == "memory" and ms == pytest.approx(conv.min_bytes / 1e9 * 1e3)


def test_format_plan_totals_and_columns():
    plan = layer_plan(PAPER, 572, 572)
    measured = {layer.name: {"unet_fast": 0.5, "rel_l2": 1e-3 * i}
                for i, layer in enumerate(plan.layers)}
    table = format_plan(plan, 800.0, 4000.0, measured)
    last = table.splitlines()[-1].split()
    assert last[:3] == ["sum", "of", "layers"] and last[3] == "300.86"
    assert float(last[-2]) == pytest.approx(0.5 * len(plan.layers))  # times add up
    assert float(last[-1]) == pytest.approx(1e-3 * (len(plan.layers) - 1))  # errors: the largest
    assert "-" in format_plan(plan).splitlines()[2]  # no ceilings: no floors


def test_tensor_spec_random_is_never_zero_and_keeps_strides():
    spec = TensorSpec.of(torch.empty(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    t = spec.random("cpu", torch.Generator().manual_seed(0))
    assert t.stride() == spec.stride and t.shape == spec.shape and bool((t != 0).all())


@needs_triton
@pytest.mark.parametrize("cfg,size", [
    (UNetConfig(in_channels=1, num_classes=3, base_channels=4, depth=1), 28),
    (UNetConfig(in_channels=3, num_classes=2, base_channels=4, depth=1, padding="same",
                upsample="bilinear"), 9),
])
def test_time_layers_aten_equivalents_match_the_ops(cfg, size):
    from unet_fast.benchmark.layer_timing import time_layers

    device = "cpu" if INTERPRET else "cuda"
    seen = []
    rows = time_layers(layer_plan(cfg, size, size, 2, torch.float32), device, repeats=1,
                       log=open(os.devnull, "w"), on_row=lambda done: seen.append(len(done)))
    assert seen == list(range(1, len(rows) + 1))  # told after every layer
    assert [r["name"] for r in rows] == [layer.name for layer in layer_plan(cfg, size, size).layers]
    for r in rows:
        assert "error" not in r, r
        assert r["rel_l2_vs_aten"] < 1e-5, r
        assert r["unet_fast"]["median_ms"] > 0 and r["aten"]["median_ms"] > 0


def _script(*args: str, interpret: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layers.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the counts-only mode is the CPU's")
def test_script_counts_without_gpu():
    proc = _script("--tflops", "800", "--gbs", "4000")
    assert proc.returncode == 0, proc.stderr
    assert "sum of layers" in proc.stdout and "300.86" in proc.stdout
    assert "given on the command line" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU timing mode")
def test_script_times_tiny_network_under_interpreter(tmp_path):
    proc = _script("--model", "same", "--base-channels", "4", "--depth", "1", "--size", "9",
                   "--dtype", "fp32", "--time", "--out-dir", str(tmp_path), interpret=True)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("layers-same-9-b1-fp32-*.json")
    import json

    doc = json.loads(path.read_text())
    assert len(doc["layers"]) == 7 and all(r["rel_l2_vs_aten"] < 1e-5 for r in doc["layers"])
    assert doc["complete"] is True and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert "error check: 7/7 layers within 1e-05 of aten" in proc.stdout


def test_script_error_check_fails_on_a_bad_layer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("layers_script", ROOT / "benchmarks" / "layers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    measured = {"ok": {"rel_l2": 1e-3}, "bad": {"rel_l2": 0.5}, "nan": {"rel_l2": float("nan")},
                "missing": {"rel_l2": None}}
    failures = script.error_failures(measured, 1e-2)
    assert [f.split(":")[0] for f in failures] == ["FAIL bad", "FAIL nan", "FAIL missing"]
    assert script.MAX_REL_L2["fp32"] == 1e-5  # DESIGN.md's IEEE fp32 bound


def test_script_networks_are_the_benchmarks():
    # the per-layer table must explain the benchmark's rows: same networks, same default sizes
    import argparse

    from unet_fast.benchmark.cases import model_config, network_size
    from unet_fast.benchmark.layers import add_network_arguments, network_from_args
    from unet_fast.benchmark.options import BenchOptions

    p = argparse.ArgumentParser()
    add_network_arguments(p)
    for name in ("paper", "same"):
        cfg, size = network_from_args(p.parse_args(["--model", name]))
        assert cfg == model_config(name, BenchOptions())
        assert size == network_size(name, 4) == (572 if name == "paper" else 512)


@pytest.mark.parametrize("args,message", [
    (("--size", "570"), "nearest valid"),
    (("--batch", "0"), "--batch"),
])
def test_script_bad_options_one_line(args, message):
    proc = _script(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU only")
def test_script_cpu_timing_needs_interpreter():
    proc = _script("--time")
    assert proc.returncode == 2 and "TRITON_INTERPRET=1" in proc.stderr
