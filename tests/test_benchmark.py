"""The benchmark (unet_fast.benchmark, benchmarks/run.py, `unet-fast bench`): a --quick run writes
a complete, sane results document, table and plot; failures are recorded, not hidden."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import sizes
from unet_fast.benchmark import main
from unet_fast.benchmark.cases import Case, compare, mirror_extend
from unet_fast.benchmark.report import format_table
from unet_fast.benchmark.rows import cpu_rows, cuda_rows, select_rows
from unet_fast.config import UNetConfig

ROOT = Path(__file__).resolve().parent.parent
CPU_ROWS = [r.name for r in cpu_rows()]


def _load(out_dir: Path) -> dict:
    files = list(out_dir.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `benchmarks/run.py --quick` run (in-process), shared by the schema tests."""
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--threads", "1",
           "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, _load(out)


def test_quick_run_schema(quick_run):
    out, _proc, doc = quick_run
    env = doc["environment"]
    assert env["device"] == "cpu"
    for key in ("device_name", "torch", "triton", "cuda", "driver", "date", "git", "slug"):
        assert key in env
    assert (out / f"{env['slug']}.json").exists()
    # ceilings measured in this run: positive rates for both precisions and the copy
    assert doc["ceilings"]["matmul_fp32"]["tflops"] > 0
    assert doc["ceilings"]["matmul_bf16"]["tflops"] > 0
    assert doc["ceilings"]["copy"]["gbps"] > 0
    # measured before and after the rows; the better one is the peak
    fp32 = doc["ceilings"]["matmul_fp32"]
    assert len(fp32["measured"]) == 2 and fp32["tflops"] == max(fp32["measured"])
    assert isinstance(doc["notes"], list)
    keys = [c["key"] for c in doc["cases"]]
    assert keys == ["paper-188", "paper-image-96", "same-64"]
    assert all(c["flops_per_image"] > 0 for c in doc["cases"])
    for case in ("paper-188", "same-64"):
        rows = [r for r in doc["rows"] if r["case"] == case]
        assert [r["row"] for r in rows] == CPU_ROWS  # a row for every implementation
        for r in rows:
            if r["impl"] == "compile":
                assert r["status"] == "skipped" and "--quick" in r["error"]
                continue
            assert r["status"] == "ok", r
            assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["repeats"] == 2 and len(r["times_ms"]) == 2
            assert r["images_per_s"] == pytest.approx(1e3 / r["median_ms"])
            assert r["tflops"] > 0 and r["pct_of_peak"] > 0
            assert r["flops"] == next(c for c in doc["cases"] if c["key"] == case)[
                "flops_per_image"]
            assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0
            tol = 1e-4 if r["precision"] == "fp32" else 5e-2
            assert 0 <= r["rel_l2_err"] < tol, r
            assert r["label_agreement"] > (0.999 if r["precision"] == "fp32" else 0.9)
            assert r["speedup_vs_eager"] > 0
        fast = [r for r in rows if r["impl"] == "unet_fast"]
        assert {r["backend"] for r in fast} == {"cpu-onednn"}
    assert doc["summary"] and all("best_stock_row" in s for s in doc["summary"])


def test_quick_run_table_plot_and_progress(quick_run):
    out, proc, doc = quick_run
    for name in CPU_ROWS:
        assert name in proc.stdout
    assert "== paper-188  batch 1" in proc.stdout and "GFLOP/s" in proc.stdout
    assert format_table(doc).splitlines()[0].startswith("device:")
    # one progress line per row on stderr
    assert proc.stderr.count("] paper-188 b=1 ") == len(CPU_ROWS)
    pytest.importorskip("matplotlib")
    png = out / f"{doc['environment']['slug']}.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert doc["plot"] == str(png)


def test_image_case_through_segment(quick_run):
    _, _, doc = quick_run
    rows = [r for r in doc["rows"] if r["case"] == "paper-image-96"]
    assert [r["row"] for r in rows] == CPU_ROWS
    if not hasattr(unet_fast, "segment"):
        assert {r["status"] for r in rows} == {"not_available"}
        return
    for r in rows:
        if r["impl"] == "compile":
            continue
        assert r["status"] == "ok", r
        # overlap-tile equals one pass over the mirror-extended image (the float64 reference)
        tol = 1e-4 if r["precision"] == "fp32" else 5e-2
        assert r["rel_l2_err"] < tol and r["tile_size"] == "auto"


def test_image_case_not_available_without_segment(tmp_path, monkeypatch):
    monkeypatch.delattr(unet_fast, "segment", raising=False)
    assert main(["--quick", "--model", "paper", "--image-sizes", "40", "--rows", "eager-nchw-fp32",
                 "--threads", "1", "--no-plot", "--out-dir", str(tmp_path)]) == 0
    rows = {r["case"]: r for r in _load(tmp_path)["rows"]}
    assert rows["paper-188"]["status"] == "ok"
    assert rows["paper-image-40"]["status"] == "not_available"
    assert "segment" in rows["paper-image-40"]["error"]


def _one_pass_segment(model, image, tile_size=None, output="logits"):
    """A stand-in for unet_fast.segment: mirror-extend, one pass, crop (what tiling must equal)."""
    assert output == "logits"
    n = image.shape[-1]
    cfg = model.config
    case = Case("x", "paper", cfg, "image", n, n, 1, "",
                pass_size=sizes.input_size_for_output(n, cfg.depth, cfg.padding))
    x = torch.stack([mirror_extend(im.float().cpu(), case) for im in image]).to(image)
    return model(x)[..., :n, :n]


def test_image_case_and_row_failure_are_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(unet_fast, "segment", _one_pass_segment, raising=False)
    calls = {"n": 0}

    def broken_forward(self, x):
        calls["n"] += 1
        raise RuntimeError("boom from a broken backend")

    monkeypatch.setattr(unet_fast.UNet, "forward", broken_forward)
    rc = main(["--quick", "--model", "paper", "--sizes", "188", "--image-sizes", "40",
               "--rows", "eager-nchw-fp32,unet_fast-fp32", "--out-dir", str(tmp_path),
               "--threads", "1",
               "--no-plot"])
    assert rc == 0
    doc = _load(tmp_path)
    assert not list(tmp_path.glob("*.png"))
    by = {(r["case"], r["row"]): r for r in doc["rows"]}
    img = by[("paper-image-40", "eager-nchw-fp32")]
    assert img["status"] == "ok" and img["rel_l2_err"] < 1e-4 and img["label_agreement"] > 0.999
    # the failing implementation is reported with its error, and the run went on
    for case in ("paper-188", "paper-image-40"):
        bad = by[(case, "unet_fast-fp32")]
        assert bad["status"] == "error" and "boom from a broken backend" in bad["error"]
    assert calls["n"] >= 2
    captured = capsys.readouterr()
    assert "ERROR: RuntimeError: boom" in captured.err
    assert "error: RuntimeError: boom" in captured.out


def test_cli_bench_quick_runs(tmp_path):
    cmd = [sys.executable, "-m", "unet_fast.cli", "bench", "--quick", "--model", "same",
           "--rows", "unet_fast-*", "--no-plot", "--threads", "1", "--out-dir", str(tmp_path),
           "--tag", "ci"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = _load(tmp_path)
    assert next(tmp_path.glob("*.json")).name.endswith("-ci.json")
    assert [r["row"] for r in doc["rows"]] == ["unet_fast-fp32", "unet_fast-bf16"]
    assert all(r["status"] == "ok" for r in doc["rows"])
    assert "unet_fast-bf16" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--rows", "nope*"], "matches no cpu row"),
    (["--dtypes", "fp64"], "unknown --dtypes"),
    (["--model", "paper", "--sizes", "500"], "nearest valid"),
    (["--model", "huge"], "unknown --model"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--quick", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_row_selection_and_gpu_rows_are_complete():
    names = [r.name for r in cuda_rows()]
    for needed in ("eager-nchw-tf32", "eager-nchw-fp32", "eager-cl-bf16", "eager-cl-fp16",
                   "compile-bf16", "compile-max-autotune-bf16"):
        assert needed in names
    for prec in ("fp32", "tf32", "bf16", "fp16"):
        assert f"unet_fast-{prec}" in names and f"unet_fast-{prec}-graph" in names
    picked = select_rows("cuda", ["unet_fast*"], ["bf16"])
    assert [r.name for r in picked] == ["unet_fast-bf16", "unet_fast-bf16-graph"]
    kept = [r.name for r in select_rows("cuda", ["!compile*", "!*-graph"], ["bf16", "fp16"])]
    assert kept == ["eager-cl-bf16", "eager-cl-fp16", "unet_fast-bf16", "unet_fast-fp16"]
    with pytest.raises(ValueError, match="matches no cuda row"):
        select_rows("cuda", ["!nothing*"], ["bf16"])
    assert all(r.cuda_graph == r.name.endswith("graph") for r in cuda_rows())


def test_compare_flags_nonfinite_and_counts_labels():
    ref = torch.randn(2, 5, 7, dtype=torch.float64)
    assert compare(ref.float(), ref)["rel_l2_err"] < 1e-6
    flipped = compare(-ref, ref)
    assert flipped["rel_l2_err"] == pytest.approx(2.0)
    assert flipped["label_agreement"] < 0.05 or (ref[0] == ref[1]).any()
    bad = ref.clone()
    bad[0, 0, 0] = float("nan")
    res = compare(bad, ref)
    assert res["nonfinite_output"] and res["rel_l2_err"] is None


def test_mirror_extend_matches_numpy_reflect():
    cfg = UNetConfig(base_channels=4)
    n = 20  # pads (92) far exceed the image: numpy folds back and forth
    pass_size = sizes.input_size_for_output(n, cfg.depth)
    case = Case("x", "paper", cfg, "image", n, n, 1, "", pass_size=pass_size)
    img = torch.randn(1, n, n, dtype=torch.float64)
    ext = mirror_extend(img, case)
    m = sizes.margin(cfg.depth)
    want = np.pad(img.numpy(), ((0, 0), (m, pass_size - n - m), (m, pass_size - n - m)),
                  mode="reflect")
    assert ext.shape[-1] == pass_size and np.array_equal(ext.numpy(), want)
    assert torch.equal(ext[:, m:m + n, m:m + n], img)
