"""The benchmark (unet_fast.benchmark, benchmarks/run.py, `unet-fast bench`): a --quick run writes
a complete, sane results document, table and plot; failures are recorded, not hidden."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import sizes
from unet_fast.benchmark import environment as bench_env
from unet_fast.benchmark import main, memory, runner
from unet_fast.benchmark.cases import Case, compare, mirror_extend
from unet_fast.benchmark.report import format_table
from unet_fast.benchmark.rows import cpu_rows, cuda_rows, select_rows
from unet_fast.benchmark.timing import CompileTimeout, time_limit
from unet_fast.config import UNetConfig

ROOT = Path(__file__).resolve().parent.parent
CPU_ROWS = [r.name for r in cpu_rows()]
RUNTIMES = {"openvino", "onnxruntime"}


def _runtime_can_run(row: dict) -> bool:
    """Whether an OpenVINO / ONNX Runtime row should have run here: its library and the ONNX
    exporter are installed (the bench extra) and it is not ONNX Runtime's bf16."""
    if row["impl"] == "onnxruntime" and row["precision"] != "fp32":
        return False
    return all(importlib.util.find_spec(m) is not None for m in (row["impl"], "onnxscript"))


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
    # a smoke run never overwrites a full run's committed <slug>.json
    assert (out / f"{env['slug']}-quick.json").exists() and not (out / f"{env['slug']}.json").exists()
    # ceilings measured in this run: positive rates for both precisions and the copy
    assert doc["ceilings"]["matmul_fp32"]["tflops"] > 0
    assert doc["ceilings"]["matmul_bf16"]["tflops"] > 0
    assert doc["ceilings"]["copy"]["gbps"] > 0
    # measured before and after the rows; the better one is the peak
    fp32 = doc["ceilings"]["matmul_fp32"]
    assert len(fp32["measured"]) == 2 and fp32["tflops"] == max(fp32["measured"])
    # the 3x3-convolution ceilings, the CPU rows' % of peak reference, measured the same way
    for key in ("conv3x3_fp32", "conv3x3_bf16"):
        conv = doc["ceilings"][key]
        assert conv["tflops"] > 0 and len(conv["measured"]) == 2
        assert conv["tflops"] == max(conv["measured"])
    assert set(env["runtimes"]) == {"openvino", "onnxruntime", "onnx", "onnxscript"}
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
            if r["impl"] in RUNTIMES and not _runtime_can_run(r):
                assert r["status"] == "skipped" and r["error"], r
                continue
            assert r["status"] == "ok", r
            assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["repeats"] == 2 and len(r["times_ms"]) == 2
            assert r["interleaved"]["rounds"] == 2 and r["interleaved"]["rows"] >= 4
            assert r["peak_ref"] == f"conv3x3_{r['precision']}" and r["pct_of_matmul_peak"] > 0
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
    # a line when each row starts (a killed log shows which one hung) and one with its result
    assert proc.stderr.count("] paper-188 b=1 ") == 2 * len(CPU_ROWS)
    assert f"[1/{3 * len(CPU_ROWS)}] paper-188 b=1 eager-nchw-fp32: started" in proc.stderr
    pytest.importorskip("matplotlib")
    png = out / f"{doc['environment']['slug']}-quick.png"
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
        if r["impl"] in RUNTIMES:  # segment() needs a torch module
            assert r["status"] == "skipped" and "unet_fast.segment" in r["error"]
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
    assert [r["row"] for r in doc["rows"]] == ["unet_fast-fp32", "unet_fast-bf16",
                                             "unet_fast-bf16-winograd"]
    assert all(r["status"] == "ok" for r in doc["rows"])
    assert "unet_fast-bf16" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--rows", "nope*"], "matches no cpu row"),
    (["--dtypes", "fp64"], "unknown --dtypes"),
    (["--model", "paper", "--sizes", "500"], "nearest valid"),
    (["--model", "huge"], "unknown --model"),
    (["--deadline", "0"], "--deadline"),
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


# --- robustness on the device: failures, kills and deadlines never lose the results -----------

FAKE_CEILINGS = {"matmul_fp32": {"tflops": 1.0}, "matmul_tf32": {"tflops": 1.0},
                 "matmul_bf16": {"tflops": 2.0}, "matmul_fp16": {"tflops": 2.0},
                 "copy": {"gbps": 10.0}}
# a tiny network, one case, instant ceilings: what these tests check is the loop, not the numbers
TINY = ["--quick", "--model", "same", "--image-sizes", "none", "--threads", "1", "--no-plot"]
DEAD = "AcceleratorError: CUDA error: an illegal memory access was encountered"


@pytest.fixture
def fake_ceilings(monkeypatch):
    """Instant ceilings; the list records every measurement (the run's start and end)."""
    calls: list[str] = []

    def measure(device, quick=False):
        calls.append(device)
        return json.loads(json.dumps(FAKE_CEILINGS))

    monkeypatch.setattr(runner, "measure_ceilings", measure)
    return calls


def _states(doc: dict) -> list[tuple]:
    return [(r["batch"], r["row"], r["status"]) for r in doc["rows"]]


def test_row_start_failure_on_a_dead_context_skips_the_rest(tmp_path, monkeypatch, fake_ceilings,
                                                            capsys):
    real_start = memory.MemoryProbe.start
    starts = []

    def start(self):
        starts.append(1)
        if len(starts) == 2:  # the synchronize in start() meets an earlier sticky CUDA error
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        real_start(self)

    monkeypatch.setattr(memory.MemoryProbe, "start", start)
    monkeypatch.setattr(runner, "device_error", lambda device: DEAD)
    assert main([*TINY, "--rows", "eager-nchw-fp32,eager-cl-fp32", "--batches", "1,2",
                 "--out-dir", str(tmp_path)]) == 0
    doc = _load(tmp_path)
    assert _states(doc) == [(1, "eager-nchw-fp32", "ok"), (1, "eager-cl-fp32", "error"),
                            (2, "eager-nchw-fp32", "skipped"), (2, "eager-cl-fp32", "skipped")]
    assert "illegal memory access" in doc["rows"][1]["error"]
    for r in doc["rows"][2:]:
        assert r["error"] == f"CUDA context unusable after same-64 b=1 eager-cl-fp32: {DEAD}"
    assert fake_ceilings == ["cpu"]  # no re-measurement on a dead context
    assert doc["complete"] is True and doc["ceilings"]["copy"]["gbps"] == 10.0
    assert any("context unusable" in n for n in doc["notes"])
    assert "SKIPPED: CUDA context unusable" in capsys.readouterr().err


def test_inputs_that_cannot_move_fail_their_batch_only(tmp_path, monkeypatch, fake_ceilings):
    real = runner.inputs_on_device
    calls = []

    def to_device(inputs, device):
        calls.append(inputs[0].shape[0])
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(inputs, device)

    monkeypatch.setattr(runner, "inputs_on_device", to_device)
    assert main([*TINY, "--rows", "eager-nchw-fp32", "--batches", "1,2",
                 "--out-dir", str(tmp_path)]) == 0
    doc = _load(tmp_path)
    assert calls == [1, 2]
    assert _states(doc) == [(1, "eager-nchw-fp32", "error"), (2, "eager-nchw-fp32", "ok")]
    assert doc["rows"][0]["error"] == ("moving the inputs to cpu failed: RuntimeError: CUDA "
                                       "error: out of memory")
    assert fake_ceilings == ["cpu", "cpu"]


def test_device_error_probes_the_cuda_context(monkeypatch):
    assert runner.device_error("cpu") is None

    def sticky():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", sticky)
    assert runner.device_error("cuda") == ("RuntimeError: CUDA error: an illegal memory access "
                                           "was encountered")


@pytest.mark.gpu
def test_device_error_is_none_on_a_working_gpu():
    assert runner.device_error("cuda") is None


def _timeout_in_inner_exception():
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        raise CompileTimeout("took longer than 2 s")
    except CompileTimeout as e:
        raise BackendCompilerFailed(lambda: None, e, None) from None  # hides cause and context


def _timeout_as_cause():
    try:
        _timeout_in_inner_exception()
    except Exception as e:
        raise RuntimeError("InductorError: wrapped again") from e


def _timeout_as_context():
    try:
        raise CompileTimeout("took longer than 2 s")
    except CompileTimeout:
        raise ValueError("raised while handling it")  # noqa: B904


@pytest.mark.parametrize("raiser", [_timeout_in_inner_exception, _timeout_as_cause,
                                    _timeout_as_context])
def test_compile_timeout_is_found_through_wrappers(raiser):
    with pytest.raises(Exception) as info:
        raiser()
    found = runner.find_compile_timeout(info.value)
    assert isinstance(found, CompileTimeout) and "2 s" in str(found)
    assert runner.find_compile_timeout(RuntimeError("CUDA error")) is None


def test_time_limit_fires_again_when_the_first_timeout_is_swallowed():
    t0 = time.perf_counter()
    with pytest.raises(CompileTimeout), time_limit(0.05, repeat=0.05) as limit:
        try:
            time.sleep(5)
        except CompileTimeout:
            pass  # as a library's broad except would
        time.sleep(5)
    assert limit.fired and time.perf_counter() - t0 < 2
    with time_limit(5) as limit:
        pass
    assert not limit.fired


def test_compile_row_past_its_timeout_is_skipped_not_error(tmp_path, monkeypatch, fake_ceilings):
    def fake_compile(module, mode=None):
        def compiled(x):
            _timeout_as_cause()  # what dynamo makes of the alarm's exception

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert main(["--model", "same", "--sizes", "64", "--base-channels", "4", "--image-sizes",
                 "none", "--repeats", "1", "--threads", "1", "--no-plot", "--rows",
                 "compile-fp32", "--compile-timeout", "2", "--out-dir", str(tmp_path)]) == 0
    (row,) = _load(tmp_path)["rows"]
    assert row["status"] == "skipped", row
    assert row["error"] == ("torch.compile took longer than 2 s; raise --compile-timeout to "
                            "run it")


class _FakeCudaMemory:
    """torch.cuda's allocator counters, driven by the test (bytes)."""

    def __init__(self, monkeypatch):
        self.allocated = self.reserved = self.peak = self.cached_free = 0
        self.emptied = 0
        for name in ("synchronize", "memory_allocated", "memory_reserved", "max_memory_allocated",
                     "reset_peak_memory_stats", "empty_cache"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def synchronize(self):
        pass

    def memory_allocated(self):
        return self.allocated

    def memory_reserved(self):
        return self.reserved + self.cached_free

    def max_memory_allocated(self):
        return self.peak

    def reset_peak_memory_stats(self):
        self.peak = self.allocated

    def empty_cache(self):
        self.emptied += 1
        self.cached_free = 0

    def alloc(self, n):
        self.allocated += n
        self.reserved += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n, to_cache=True):
        self.allocated -= n
        if to_cache:  # a freed block stays reserved until empty_cache
            self.reserved -= n
            self.cached_free += n


MB = 2**20


def test_cuda_peak_memory_counts_a_graphs_private_pool(monkeypatch):
    mem = _FakeCudaMemory(monkeypatch)
    mem.alloc(100 * MB)  # the shared inputs
    probe = memory.MemoryProbe("cuda")
    probe.start()
    mem.alloc(50 * MB)  # weights
    mem.alloc(400 * MB)  # activations, captured into the graph's private pool ...
    mem.allocated -= 400 * MB  # ... freed into that pool: still reserved, no longer allocated
    mem.alloc(256 * MB)
    mem.free(256 * MB)  # the L2 flush buffer: a cached free block until empty_cache
    probe.arm()
    mem.alloc(2 * MB)  # the replay writes into the static output; nothing else is allocated
    assert probe.peak_mb() == pytest.approx(452)  # weights + private pool + output
    assert mem.emptied >= 1 and "private" in probe.note


def test_cuda_peak_memory_of_an_eager_row_is_its_allocation_peak(monkeypatch):
    mem = _FakeCudaMemory(monkeypatch)
    mem.alloc(100 * MB)
    probe = memory.MemoryProbe("cuda")
    probe.start()
    mem.alloc(50 * MB)
    probe.arm()
    mem.alloc(300 * MB)  # activations during the call
    mem.free(298 * MB)
    assert probe.peak_mb() == pytest.approx(350)


def test_results_are_on_disk_after_every_case_when_the_run_is_killed(tmp_path, monkeypatch,
                                                                      fake_ceilings):
    # the CPU times a (case, batch)'s rows together, so its rows are written together
    real = runner.prepare_row
    done = []

    def prepare_row(*args, **kwargs):
        if len(done) == 3:
            raise KeyboardInterrupt  # stands for the device call's kill
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "prepare_row", prepare_row)
    with pytest.raises(KeyboardInterrupt):
        main([*TINY, "--rows", "eager-nchw-fp32,eager-cl-fp32", "--batches", "1,2",
              "--out-dir", str(tmp_path)])
    doc = _load(tmp_path)  # the only file: no temporary left behind
    assert doc["complete"] is False
    assert _states(doc) == [(1, "eager-nchw-fp32", "ok"), (1, "eager-cl-fp32", "ok")]
    assert doc["rows"][1]["speedup_vs_eager"] > 0 and doc["summary"]


def test_deadline_stops_starting_rows_and_writes_the_document(tmp_path, monkeypatch,
                                                              fake_ceilings, capsys):
    real = runner.prepare_row
    # The runner's clock (its only use is the deadline) is faked: start-up takes no time and the
    # first row 0.6 s, whatever this machine's speed (a real sleep failed on a slow CI machine,
    # whose start-up alone took more than 0.5 s).
    clock = [0.0]
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def slow_row(*args, **kwargs):
        live = real(*args, **kwargs)
        clock[0] += 0.6
        return live

    monkeypatch.setattr(runner, "prepare_row", slow_row)
    assert main([*TINY, "--rows", "eager-nchw-fp32,eager-cl-fp32,unet_fast-fp32",
                 "--deadline", "0.5", "--out-dir", str(tmp_path)]) == 0
    doc = _load(tmp_path)
    assert _states(doc) == [(1, "eager-nchw-fp32", "ok"), (1, "eager-cl-fp32", "skipped"),
                            (1, "unet_fast-fp32", "skipped")]
    assert {r["error"] for r in doc["rows"][1:]} == {"not started: --deadline 0.5 s reached"}
    assert fake_ceilings == ["cpu"] and doc["complete"] is True
    err = capsys.readouterr().err
    assert "[1/3] same-64 b=1 eager-nchw-fp32: started" in err
    assert "eager-cl-fp32: started" not in err


def test_a_failing_plot_costs_the_plot_only(tmp_path, monkeypatch, fake_ceilings, capsys):
    from unet_fast.benchmark import plot

    def broken_plot(result, path):
        # the final document is on disk before the plot is attempted
        assert _load(tmp_path)["complete"] is True
        raise RuntimeError("Agg backend exploded")

    monkeypatch.setattr(plot, "write_plot", broken_plot)
    argv = [a for a in TINY if a != "--no-plot"]
    assert main([*argv, "--rows", "eager-nchw-fp32", "--out-dir", str(tmp_path)]) == 0
    doc = _load(tmp_path)
    assert doc["plot"] is None and doc["complete"] is True
    assert "no plot: RuntimeError: Agg backend exploded" in doc["notes"]
    err = capsys.readouterr().err
    assert err.count("Agg backend exploded") == 1


def test_git_revision_from_the_environment_without_a_checkout(monkeypatch):
    monkeypatch.setattr(bench_env, "_run", lambda cmd, cwd=None: None)
    monkeypatch.delenv("UNET_FAST_GIT_REVISION", raising=False)
    monkeypatch.delenv("UNET_FAST_GIT_DIRTY", raising=False)
    assert bench_env.git_revision()["revision"] is None
    monkeypatch.setenv("UNET_FAST_GIT_REVISION", "0123abcd")
    assert bench_env.git_revision() == {"revision": "0123abcd", "dirty": None,
                                        "note": "from UNET_FAST_GIT_REVISION"}
    monkeypatch.setenv("UNET_FAST_GIT_DIRTY", "1")
    assert bench_env.git_revision()["dirty"] is True
    monkeypatch.setenv("UNET_FAST_GIT_DIRTY", "0")
    assert bench_env.git_revision()["dirty"] is False


def test_cleanup_resets_dynamo_before_collecting(monkeypatch):
    order = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: order.append("reset"))
    monkeypatch.setattr(runner.gc, "collect", lambda *a: order.append("collect"))
    runner._cleanup("cpu", compiled=True)
    assert order == ["reset", "collect"]


def test_one_row_alone_the_gpu_way(tmp_path):
    """run_row (the GPU's one-row-after-another path) on the CPU: prepared, timed alone,
    measured against the float64 reference, released."""
    from unet_fast.benchmark import resolve_options
    from unet_fast.benchmark.cases import build_cases, float64_reference, make_inputs, reference_model
    from unet_fast.benchmark.options import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = resolve_options(parser.parse_args([*TINY, "--device", "cpu"]))
    (case,) = build_cases(opts)
    model = reference_model(case.config, opts.seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inputs = make_inputs(case, 1, 2, opts.seed)
    ref = float64_reference(model, case, inputs[0][0])
    names = ["eager-cl-fp32", "unet_fast-fp32"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        names.append("onnxruntime-fp32")
    for spec in select_rows("cpu", names, ["fp32"]):
        row = runner.run_row(spec, case, 1, inputs, ref, state, opts)
        assert row["status"] == "ok", row
        assert row["repeats"] == 2 and "interleaved" not in row
        assert row["rel_l2_err"] < 1e-4 and row["tflops"] > 0
