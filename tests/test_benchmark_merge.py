"""benchmarks/merge.py: runs of one device split over several device calls become one document
with every row, the best ceilings, and speedups over the eager row of each row's own run."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from unet_fast.benchmark import main as bench_main
from unet_fast.benchmark import runner
from unet_fast.benchmark.merge import main, merge_documents
from unet_fast.benchmark.report import format_table

ROOT = Path(__file__).resolve().parent.parent
CASE = {"key": "paper-572", "model": "paper", "config": {"base_channels": 64}, "kind": "tile",
        "size": 572, "out_size": 388, "flops_per_image": 3 * 10**11, "flops_note": "",
        "reference_seconds": 1.0, "notes": []}


def _row(name: str, impl: str, ms: float | None, batch: int = 1, precision: str = "bf16") -> dict:
    row = {"case": "paper-572", "model": "paper", "kind": "tile", "size": 572, "batch": batch,
           "row": name, "impl": impl, "precision": precision, "description": name,
           "status": "ok" if ms else "error", "error": None if ms else "boom", "notes": []}
    if ms:
        row.update(median_ms=ms, p20_ms=ms, p80_ms=ms, images_per_s=batch * 1e3 / ms,
                   tflops=3e11 * batch / (ms * 1e-3) / 1e12, flops=3 * 10**11 * batch,
                   speedup_vs_eager=123.0, pct_of_peak=99.0)
    return row


def _doc(rows: list[dict], date: str, tag: str, bf16: float = 700.0, git: str = "aaa",
         device_name: str = "NVIDIA H100 80GB HBM3", schema: int = 1) -> dict:
    return {
        "schema_version": schema, "complete": True,
        "environment": {"device": "cuda", "device_name": device_name, "slug": "nvidia-h100",
                        "date": date, "torch": "2.11", "triton": "3.6", "cuda": "12.8",
                        "git": {"revision": git, "dirty": False}},
        "options": {"tag": tag, "models": ["paper"]},
        "ceilings": {"matmul_bf16": {"tflops": bf16, "measured": [bf16 - 5, bf16]},
                     "copy": {"gbps": 3000.0, "measured": [2900.0, 3000.0]}},
        "cases": [CASE], "rows": rows, "summary": [], "notes": [f"note of {tag}"],
        "wall_seconds": 500.0, "method": {"timing": "CUDA events"},
    }


def _by(doc: dict) -> dict:
    return {(r["batch"], r["row"]): r for r in doc["rows"]}


def test_merge_keeps_ok_then_later_rows_and_says_so():
    a = _doc([_row("eager-nchw-tf32", "eager", 10.0), _row("unet_fast-bf16", "unet_fast", 2.0),
              _row("compile-bf16", "compile", 4.0)], "2025-01-01T10:00:00", "a", git="aaa")
    b = _doc([_row("eager-nchw-tf32", "eager", 11.0), _row("unet_fast-bf16", "unet_fast", None),
              _row("compile-bf16", "compile", 5.0)], "2025-01-01T11:00:00", "b", git="bbb")
    doc = merge_documents([b, a], ["b.json", "a.json"])  # given out of date order
    assert [s["file"] for s in doc["sources"]] == ["a.json", "b.json"]
    assert [s["git"]["revision"] for s in doc["sources"]] == ["aaa", "bbb"]
    assert [s["tag"] for s in doc["sources"]] == ["a", "b"]
    assert doc["sources"][0]["options"] == {"tag": "a", "models": ["paper"]}
    by = _by(doc)
    assert len(doc["rows"]) == 3
    assert by[(1, "unet_fast-bf16")]["median_ms"] == 2.0  # the ok one, though older
    assert by[(1, "unet_fast-bf16")]["source"] == 0
    assert by[(1, "eager-nchw-tf32")]["median_ms"] == 11.0  # both ok: the later
    assert by[(1, "compile-bf16")]["median_ms"] == 5.0
    notes = " | ".join(doc["notes"])
    assert "paper-572/b1/unet_fast-bf16: measured in b.json and a.json; kept a.json (status ok)" \
        in notes
    assert "kept b.json (later run)" in notes and "paper-572/b1/compile-bf16" in notes
    assert doc["merged"] and doc["complete"] and doc["options"] is None
    assert [r["row"] for r in doc["rows"]] == ["eager-nchw-tf32", "compile-bf16",
                                               "unet_fast-bf16"]  # the device's row order


def test_speedups_are_over_the_eager_row_of_the_same_run():
    a = _doc([_row("eager-nchw-tf32", "eager", 10.0), _row("unet_fast-bf16", "unet_fast", 2.0)],
             "2025-01-01T10:00:00", "a")
    b = _doc([_row("eager-nchw-tf32", "eager", 12.0), _row("compile-bf16", "compile", 4.0)],
             "2025-01-01T11:00:00", "b")
    c = _doc([_row("eager-cl-bf16", "eager-cl", 6.0)], "2025-01-01T12:00:00", "c")
    doc = merge_documents([a, b, c], ["a.json", "b.json", "c.json"])
    by = _by(doc)
    # a's eager row was dropped as the older duplicate, but it is still a's baseline
    assert by[(1, "unet_fast-bf16")]["speedup_vs_eager"] == pytest.approx(5.0)
    assert "speedup_baseline_source" not in by[(1, "unet_fast-bf16")]
    assert by[(1, "compile-bf16")]["speedup_vs_eager"] == pytest.approx(3.0)
    # c has no eager row: its baseline is b's, and both the row and the document say so
    cl = by[(1, "eager-cl-bf16")]
    assert cl["speedup_vs_eager"] == pytest.approx(2.0) and cl["speedup_baseline_source"] == 1
    assert any("another device call" in n for n in cl["notes"])
    assert any("1 row(s) have their x eager baseline from another device call" in n
               and "eager-cl-bf16" in n for n in doc["notes"])
    (s,) = doc["summary"]
    assert s["best_unet_fast_row"] == "unet_fast-bf16" and s["best_stock_row"] == "compile-bf16"
    assert (s["best_unet_fast_source"], s["best_stock_source"]) == (0, 1)


def test_ceilings_are_the_best_over_all_runs_and_peaks_recomputed():
    a = _doc([_row("unet_fast-bf16", "unet_fast", 1.0)], "2025-01-01T10:00:00", "a", bf16=700.0)
    b = _doc([_row("eager-nchw-tf32", "eager", 10.0)], "2025-01-01T11:00:00", "b", bf16=750.0)
    doc = merge_documents([a, b], ["a.json", "b.json"])
    bf16 = doc["ceilings"]["matmul_bf16"]
    assert bf16["tflops"] == 750.0 and bf16["source"] == 1
    assert bf16["measured"] == [695.0, 700.0, 745.0, 750.0]
    fast = _by(doc)[(1, "unet_fast-bf16")]
    assert fast["pct_of_peak"] == pytest.approx(100 * 300 / 750)  # not the stale 99.0
    assert fast["speedup_vs_eager"] == pytest.approx(10.0)  # not the stale 123.0
    again = merge_documents([doc, _doc([_row("compile-bf16", "compile", 3.0)],
                                       "2025-01-02T10:00:00", "c")],
                            ["merged.json", "c.json"])
    assert [s["file"] for s in again["sources"]] == ["a.json", "b.json", "c.json"]
    assert [s.get("via") for s in again["sources"]] == ["merged.json", "merged.json", None]
    assert {r["row"]: r["source"] for r in again["rows"]} == {
        "eager-nchw-tf32": 1, "compile-bf16": 2, "unet_fast-bf16": 0}
    assert again["ceilings"]["matmul_bf16"]["tflops"] == 750.0


@pytest.mark.parametrize("change, message", [
    ({"device_name": "NVIDIA H200"}, "device names differ"),
    ({"schema": 2}, "schema versions differ"),
])
def test_merge_refuses_other_devices_and_schemas(tmp_path, capsys, change, message):
    a = _doc([_row("eager-nchw-tf32", "eager", 10.0)], "2025-01-01T10:00:00", "a")
    b = _doc([_row("compile-bf16", "compile", 4.0)], "2025-01-01T11:00:00", "b", **change)
    for name, doc in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "a.json" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main([str(tmp_path / "missing.json"), "--out-dir", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_merges_real_cpu_runs_into_one_file_with_a_plot(tmp_path, monkeypatch):
    fake = {"matmul_fp32": {"tflops": 1.0}, "matmul_tf32": {"tflops": 1.0},
            "matmul_bf16": {"tflops": 2.0}, "copy": {"gbps": 10.0}}
    monkeypatch.setattr(runner, "measure_ceilings", lambda device, quick=False: dict(fake))
    parts = tmp_path / "parts"
    common = ["--quick", "--model", "same", "--image-sizes", "none", "--threads", "1",
              "--no-plot", "--out-dir", str(parts)]
    assert bench_main([*common, "--rows", "eager-nchw-fp32,unet_fast-fp32", "--tag", "a"]) == 0
    assert bench_main([*common, "--rows", "eager-nchw-fp32,eager-cl-fp32", "--tag", "b"]) == 0
    files = sorted(str(p) for p in parts.glob("*.json"))
    out = tmp_path / "merged"
    monkeypatch.setattr(sys, "argv", ["merge.py", *files, "--out-dir", str(out)])
    with pytest.raises(SystemExit) as done:  # the script itself, in this process
        runpy.run_path(str(ROOT / "benchmarks" / "merge.py"), run_name="__main__")
    assert done.value.code == 0
    (path,) = out.glob("*.json")
    doc = json.loads(path.read_text())
    assert path.stem == doc["environment"]["slug"]
    assert [(r["row"], r["source"]) for r in doc["rows"]] == [
        ("eager-nchw-fp32", 1), ("eager-cl-fp32", 1), ("unet_fast-fp32", 0)]
    assert [s["tag"] for s in doc["sources"]] == ["a", "b"]
    assert all(r["speedup_vs_eager"] > 0 and "speedup_baseline_source" not in r
               for r in doc["rows"])
    assert "== same-64  batch 1" in format_table(doc)
    pytest.importorskip("matplotlib")
    assert doc["plot"] and Path(doc["plot"]).read_bytes()[:4] == b"\x89PNG"
