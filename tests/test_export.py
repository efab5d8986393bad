"""Exporters on ``unet_fast.UNet`` with its defaults: torch.export, torch.onnx (dynamo, run by ONNX
Runtime), torch.jit.trace, AOTInductor on CPU. Oracle: the float64 reference network."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

import unet_fast

from .helpers import make_pair, rel_l2

# valid padding at depth 2 needs n = 4k, n >= 44 (output n - 40)
CONFIGS = [
    dict(base_channels=4, depth=2),
    dict(base_channels=4, depth=2, norm="batch", upsample="bilinear"),
    dict(base_channels=4, depth=2, padding="same", norm="batch", in_channels=3, num_classes=3),
]
SIZES = [(2, 1, 44, 48), (2, 1, 44, 48), (2, 3, 13, 10)]


def _case(i: int):
    ref, fast = make_pair(**CONFIGS[i])
    x = torch.randn(SIZES[i])
    with torch.no_grad():
        expected = ref(x.double())
    return fast, x, expected


def _aten_targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_torch_export_is_the_portable_graph_and_matches_the_reference(i):
    fast, x, expected = _case(i)
    ep = torch.export.export(fast, (x,))
    targets = _aten_targets(ep.graph_module)
    assert all(t.startswith("aten.") for t in targets), targets
    # eval-mode BatchNorm is folded into the convolutions
    assert not any("batch_norm" in t for t in targets), targets
    y = ep.module()(x)
    assert rel_l2(y, expected) <= 1e-5
    assert torch.equal(ep.module()(x), y)  # the exported program re-run


def test_exported_program_keeps_the_finite_check():
    fast, x, _ = _case(0)
    ep = torch.export.export(fast, (x,))
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        ep.module()(bad)
    with torch.no_grad(), pytest.raises(ValueError, match="NaN or Inf"):
        fast(bad)  # eager keeps its ValueError


def test_export_of_train_mode_batchnorm_keeps_batch_statistics():
    fast, x, _ = _case(1)
    fast.train()
    ep = torch.export.export(fast, (x,))
    assert any("batch_norm" in t for t in _aten_targets(ep.graph_module))


def _dynamic_shapes() -> dict:
    """Any batch and any valid size: at depth 2 a valid-padding input is 4k pixels (k >= 11)."""
    Dim = torch.export.Dim
    kh, kw = Dim("kh", min=11, max=1024), Dim("kw", min=11, max=1024)
    return {"x": {0: Dim("batch", min=1, max=64), 2: 4 * kh, 3: 4 * kw}}


def test_export_and_onnx_with_dynamic_batch_and_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fast, x, _ = _case(0)
    ref, _ = make_pair(**CONFIGS[0])
    ref.load_state_dict(fast.state_dict())
    other = torch.randn(3, 1, 60, 52)
    with torch.no_grad():
        expected = ref(other.double())
    ep = torch.export.export(fast, (x,), dynamic_shapes=_dynamic_shapes())
    assert rel_l2(ep.module()(other), expected) <= 1e-5
    path = tmp_path / "dynamic.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fast, (x,), str(path), dynamic_shapes=_dynamic_shapes())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    assert rel_l2(torch.from_numpy(y), expected) <= 1e-5


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_onnx_default_exporter_runs_in_onnx_runtime(tmp_path, i):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fast, x, expected = _case(i)
    path = tmp_path / "unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fast, (x,), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_l2(torch.from_numpy(y), expected) <= 1e-5


def test_legacy_onnx_exporter_still_works(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    fast, x, expected = _case(1)
    path = tmp_path / "legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fast, (x,), str(path), dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_l2(torch.from_numpy(y), expected) <= 1e-5


def test_jit_trace_matches_the_reference():
    fast, x, expected = _case(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on shape checks; jit.trace's deprecation
        traced = torch.jit.trace(fast, x)
    assert rel_l2(traced(x), expected) <= 1e-5
    assert not any("mkldnn" in str(n) for n in traced.inlined_graph.nodes())


def test_aoti_package_on_cpu_loads_and_runs(tmp_path):
    fast, x, expected = _case(0)
    start = time.perf_counter()
    ep = torch.export.export(fast, (x,))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "unet.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    print(f"AOTI export + compile + load: {time.perf_counter() - start:.1f} s")
    assert rel_l2(loaded(x), expected) <= 1e-5


def test_portable_backend_eager_matches_the_reference():
    from unet_fast.backends.portable import PORTABLE

    for i in range(len(CONFIGS)):
        fast, x, expected = _case(i)
        with torch.no_grad():
            assert rel_l2(PORTABLE.forward(fast, x), expected) <= 1e-5


def test_import_does_not_load_exporters():
    import subprocess
    import sys

    code = ("import sys, unet_fast; bad = [m for m in ('onnx', 'onnxruntime', 'monai') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kernels_in_export_is_scoped():
    from unet_fast import tracing

    assert not tracing.kernels_wanted()
    with tracing.kernels_in_export():
        assert tracing.kernels_wanted()
    assert not tracing.kernels_wanted()
    assert unet_fast.UNet(base_channels=4, depth=2).check_finite
