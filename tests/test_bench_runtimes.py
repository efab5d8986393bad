"""The CPU benchmark's comparison with other runtimes and its honest % of peak: OpenVINO and ONNX
Runtime rows on a tiny network (checked against the float64 reference, precision read back from
OpenVINO's executable graph), the note when a library is missing, the interleaved timing's
order, and the 3x3-convolution ceiling the CPU rows' % of peak is taken against."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from unet_fast.benchmark import main, runner, runtimes
from unet_fast.benchmark.ceilings import measure_ceilings
from unet_fast.benchmark.summary import apply_peaks
from unet_fast.benchmark.timing import time_interleaved

FAKE_CEILINGS = {"matmul_fp32": {"tflops": 1.0}, "matmul_tf32": {"tflops": 1.0},
                 "matmul_bf16": {"tflops": 2.0}, "matmul_fp16": {"tflops": 2.0},
                 "conv3x3_fp32": {"tflops": 0.5}, "conv3x3_bf16": {"tflops": 1.0},
                 "copy": {"gbps": 10.0}}
TINY = ["--quick", "--model", "same", "--image-sizes", "none", "--threads", "1", "--no-plot"]


@pytest.fixture
def fake_ceilings(monkeypatch):
    monkeypatch.setattr(runner, "measure_ceilings",
                        lambda device, quick=False: json.loads(json.dumps(FAKE_CEILINGS)))


def _load(out_dir: Path) -> dict:
    (path,) = out_dir.glob("*.json")
    return json.loads(path.read_text())


def _rows(doc: dict) -> dict[str, dict]:
    return {r["row"]: r for r in doc["rows"]}


def test_openvino_and_onnxruntime_rows_on_a_tiny_network(tmp_path, fake_ceilings):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    ov = pytest.importorskip("openvino")
    assert main([*TINY, "--rows", "unet_fast-*,openvino-*,onnxruntime-*",
                 "--out-dir", str(tmp_path)]) == 0
    doc = _load(tmp_path)
    rows = _rows(doc)
    assert doc["environment"]["runtimes"]["openvino"] == ov.__version__.split("-")[0]
    assert doc["environment"]["runtimes"]["onnxruntime"]
    # bf16 through ONNX Runtime is not run, and says why; not an error
    assert rows["onnxruntime-bf16"]["status"] == "skipped"
    assert any(n.startswith("onnxruntime-bf16 not run") for n in doc["notes"])
    bf16_cpu = doc["environment"]["mkldnn_bf16"]
    for name in ("openvino-fp32", "openvino-bf16", "onnxruntime-fp32"):
        r = rows[name]
        if name == "openvino-bf16" and not bf16_cpu:
            assert r["status"] == "error" and "inference precision" in r["error"]
            continue
        assert r["status"] == "ok", r
        # the same weights as the other rows: close to the float64 reference network
        tol = 1e-4 if r["precision"] == "fp32" else 5e-2
        assert r["rel_l2_err"] < tol and r["label_agreement"] > 0.9
        assert r["settings"]["threads"] == 1 and r["onnx_export_s"] > 0
        assert r["interleaved"]["rows"] == (6 if bf16_cpu else 4)
        assert r["pct_of_peak"] == pytest.approx(100 * r["tflops"] / (
            0.5 if r["precision"] == "fp32" else 1.0))
    for prec, want in (("fp32", "f32"), ("bf16", "bf16")):
        r = rows[f"openvino-{prec}"]
        if r["status"] != "ok":
            continue
        settings = r["settings"]
        assert settings["INFERENCE_PRECISION_HINT"] == want
        assert settings["INFERENCE_NUM_THREADS"] == "1" and settings["NUM_STREAMS"] == "1"
        # every convolution of the executable graph runs in the row's precision: an fp32 row
        # on a bf16/AMX CPU did not fall back to OpenVINO's bf16 default
        precisions = settings["conv_runtime_precision"]
        assert precisions["Convolution"] and set(precisions["Convolution"]) == {want}
    summary = doc["summary"][0]["vs_runtimes"]["fp32"]
    assert summary["unet_fast_row"] == "unet_fast-fp32"
    assert summary["unet_fast_speedup_vs_openvino"] == pytest.approx(
        rows["openvino-fp32"]["median_ms"] / rows["unet_fast-fp32"]["median_ms"])
    assert summary["unet_fast_speedup_vs_onnxruntime"] == pytest.approx(
        rows["onnxruntime-fp32"]["median_ms"] / rows["unet_fast-fp32"]["median_ms"])
    # the runtimes are not "stock PyTorch"
    assert doc["summary"][0]["best_stock_row"] is None
    # OpenVINO's CPU plugin swaps the thread's alternate signal stack; left pointing at freed
    # memory, the next signal (the compile timeout's SIGALRM) would crash the process
    assert _alternate_signal_stack_is_usable()


def _alternate_signal_stack_is_usable() -> bool:
    """The calling thread's alternate signal stack is disabled or lies in mapped memory."""
    if not sys.platform.startswith("linux"):
        return True

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                    ("ss_size", ctypes.c_size_t)]

    current = StackT()
    assert ctypes.CDLL(None, use_errno=True).sigaltstack(None, ctypes.byref(current)) == 0
    if current.ss_flags & 2 or not current.ss_sp:  # SS_DISABLE
        return True
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= current.ss_sp and current.ss_sp + current.ss_size <= hi:
            return True
    return False


def test_a_missing_runtime_is_a_skipped_row_with_a_note(tmp_path, monkeypatch, fake_ceilings):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    assert main([*TINY, "--rows", "eager-nchw-fp32,openvino-*", "--out-dir", str(tmp_path)]) == 0
    doc = _load(tmp_path)
    rows = _rows(doc)
    assert rows["eager-nchw-fp32"]["status"] == "ok"
    for name in ("openvino-fp32", "openvino-bf16"):
        assert rows[name]["status"] == "skipped"
        assert rows[name]["error"].startswith("openvino is not installed")
        assert runtimes.INSTALL_HINT in rows[name]["error"]
    assert any(n.startswith("openvino-fp32, openvino-bf16 not run: openvino is not installed")
               for n in doc["notes"])
    assert doc["complete"] is True


def test_interleaved_rounds_rotate_the_order_and_the_inputs():
    calls: list[tuple[str, int]] = []
    inputs = [torch.zeros(1), torch.ones(1)]

    def recorder(name):
        return lambda x: calls.append((name, int(x.item())))

    stats = time_interleaved([recorder("a"), recorder("b"), recorder("c")], inputs, repeats=3,
                             warmup=1, settle_s=0)
    # one warm-up round, three timed; the order rotates by one each round
    assert [n for n, _ in calls] == list("abc" "bca" "cab" "abc")
    # consecutive calls never take the same input set
    assert [i for _, i in calls] == [k % 2 for k in range(12)]
    for s in stats:
        assert s["repeats"] == 3 and s["warmup"] == 1
        assert s["interleaved"]["rows"] == 3 and s["interleaved"]["rounds"] == 3


def test_interleaved_timing_drops_a_failing_callable_only():
    calls: list[str] = []

    def broken(x):
        calls.append("broken")
        raise RuntimeError("boom")

    ok, failed = time_interleaved([lambda x: calls.append("ok"), broken], [torch.zeros(1)],
                                  repeats=2, warmup=0, settle_s=0)
    assert isinstance(failed, RuntimeError) and calls.count("broken") == 1
    assert ok["repeats"] == 2


def test_conv3x3_ceiling_in_a_quick_measurement():
    ceilings = measure_ceilings("cpu", quick=True)
    for key in ("conv3x3_fp32", "conv3x3_bf16"):
        conv = ceilings[key]
        assert conv["tflops"] > 0 and "3x3" in conv["via"], conv
        (shape,) = conv["shapes"]
        # FLOPs of a same-padded 3x3 convolution, batch 1: 2 * 9 * C_in * C_out * H * W
        c, n = shape["channels"], shape["size"]
        assert shape["flop"] == 2 * 9 * c * c * n * n
        assert conv["tflops"] == pytest.approx(shape["flop"] / (shape["min_ms"] * 1e-3) / 1e12)


def test_percent_of_peak_uses_the_conv_ceiling_when_measured():
    row = {"status": "ok", "precision": "fp32", "tflops": 0.25, "case": "c", "batch": 1,
           "row": "r"}
    both = {"matmul_fp32": {"tflops": 1.0}, "conv3x3_fp32": {"tflops": 0.5}}
    assert apply_peaks([row], both) == []
    assert row["peak_ref"] == "conv3x3_fp32" and row["pct_of_peak"] == pytest.approx(50)
    assert row["pct_of_matmul_peak"] == pytest.approx(25)
    # a document from before the conv ceiling (or a GPU run) keeps the matmul reference
    apply_peaks([row], {"matmul_fp32": {"tflops": 1.0}})
    assert row["peak_ref"] == "matmul_fp32" and row["pct_of_peak"] == pytest.approx(25)
    # a row above the ceiling is flagged in a note
    row["tflops"] = 0.75
    (note,) = apply_peaks([row], both)
    assert "above 100% of the measured peak" in note and "c/b1/r" in note


def test_opt_in_rows_are_compared_beside_the_default_never_as_its_best():
    """A unet_fast row run with an opt-in setting (its ``env``), however fast, is not the best
    unet_fast row of its precision: it gets its own line in ``opt_in``."""
    from unet_fast.benchmark.summary import summarize

    def row(name, impl, ms, **extra):
        return {"case": "c", "batch": 1, "row": name, "impl": impl, "precision": "bf16",
                "status": "ok", "median_ms": ms, **extra}

    env = {"UNET_FAST_CPU_BF16_WINOGRAD": "1"}
    (entry,) = summarize([row("eager-cl-bf16", "eager-cl", 30.0),
                          row("unet_fast-bf16", "unet_fast", 20.0),
                          row("unet_fast-bf16-winograd", "unet_fast", 8.0, env=env),
                          row("openvino-bf16", "openvino", 16.0)])
    cmp = entry["vs_runtimes"]["bf16"]
    assert entry["best_unet_fast_row"] == cmp["unet_fast_row"] == "unet_fast-bf16"
    assert cmp["unet_fast_speedup_vs_openvino"] == pytest.approx(0.8)
    assert cmp["opt_in"] == [{"row": "unet_fast-bf16-winograd", "env": env, "ms": 8.0,
                              "speedup_vs_openvino": pytest.approx(2.0)}]


def test_a_rows_env_is_set_only_while_it_runs(monkeypatch):
    from unet_fast.benchmark.rows import RowSpec, make_call

    monkeypatch.delenv("UNET_FAST_CPU_BF16_WINOGRAD", raising=False)
    seen = []
    spec = RowSpec("r", "unet_fast", "fp32", "d", env={"UNET_FAST_CPU_BF16_WINOGRAD": "1"})
    call = make_call(spec, lambda x: seen.append(os.environ.get("UNET_FAST_CPU_BF16_WINOGRAD"))
                     or x, "cpu", None)
    call(torch.zeros(1))
    assert seen == ["1"] and "UNET_FAST_CPU_BF16_WINOGRAD" not in os.environ
