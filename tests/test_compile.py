"""``torch.compile(fast, fullgraph=True)`` on every path the CPU reaches: inference in fp32 and
bf16 (model dtype and autocast), and the reference ops under autograd. Oracle: the float64
reference. Small nets; Dynamo-only/aot_eager backends except one Inductor run."""

from __future__ import annotations

import copy

import pytest
import torch

import unet_fast
from unet_fast.backends.cuda_triton import CudaTritonBackend

from .helpers import make_pair, rel_l2
from .triton_helpers import needs_triton


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _pair(**kw):
    ref, fast = make_pair(base_channels=4, depth=2, norm="batch", **kw)
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        expected = ref(x.double())
    return fast, x, expected


def _torch_bf16_error(fast, x, expected) -> float:
    """PyTorch's own bf16 error: the reference ops on a bf16 copy of the model."""
    m = copy.deepcopy(fast).bfloat16()
    with torch.no_grad():
        return rel_l2(m.reference_forward(x.bfloat16()), expected)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_inference_fp32(backend):
    fast, x, expected = _pair()
    compiled = torch.compile(fast, fullgraph=True, backend=backend)
    with torch.no_grad():
        y = compiled(x)
    assert rel_l2(y, expected) <= 1e-5


def test_compiled_inference_bf16_model_and_autocast():
    fast, x, expected = _pair()
    tol = 2 * _torch_bf16_error(fast, x, expected)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert rel_l2(compiled(x), expected) <= tol
    torch._dynamo.reset()
    fast_bf16 = fast.bfloat16()
    compiled = torch.compile(fast_bf16, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        y = compiled(x.bfloat16())
    assert y.dtype == torch.bfloat16 and rel_l2(y, expected) <= tol


def test_compiled_training_step_matches_reference_gradients():
    fast, x, _ = _pair()
    fast.train()
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    compiled(x).square().mean().backward()
    got = {n: p.grad.clone() for n, p in fast.named_parameters()}
    fast.zero_grad()
    fast.reference_forward(x).square().mean().backward()
    for n, p in fast.named_parameters():
        assert rel_l2(got[n], p.grad) <= 1e-5, n


def test_compiled_model_keeps_the_finite_check():
    fast, x, _ = _pair()
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    bad = x.clone()
    bad[0, 0, 1, 2] = float("nan")
    with torch.no_grad(), pytest.raises(RuntimeError, match="NaN or Inf"):
        compiled(bad)


def test_inductor_once():
    fast, x, expected = _pair()
    compiled = torch.compile(fast, fullgraph=True)
    with torch.no_grad():
        assert rel_l2(compiled(x), expected) <= 1e-5


@needs_triton
def test_triton_ops_trace_under_dynamo_and_export(monkeypatch):
    """The GPU backend's custom ops with their fake kernels, traced on the CPU through the
    interpreter: Dynamo's graph and an export inside kernels_in_export keep them."""
    from unet_fast import dispatch

    monkeypatch.setitem(dispatch._REGISTRY, "cpu", [CudaTritonBackend()])
    fast, x, expected = _pair()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    with torch.no_grad():
        y = torch.compile(fast, fullgraph=True, backend=capture)(x)
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert any("unet_fast.conv3x3_head" in t for t in targets), targets
    assert rel_l2(y, expected) <= 1e-5
    with unet_fast.tracing.kernels_in_export(), torch.no_grad():
        ep = torch.export.export(fast, (x,))
    assert any("unet_fast" in str(n.target) for n in ep.graph.nodes)
    # without it an export is the portable graph even where the kernels could run
    with torch.no_grad():
        ep = torch.export.export(fast, (x,))
    assert not any("unet_fast" in str(n.target) for n in ep.graph.nodes)


@pytest.mark.gpu
def test_inductor_and_aoti_with_the_triton_ops_on_cuda(tmp_path):
    """On a GPU: Inductor compiles the Triton ops into the graph, and an AOTInductor package
    exported inside kernels_in_export runs them; both match the float64 reference."""
    fast, x, expected = _pair()
    fast, x = fast.cuda(), x.cuda()
    with torch.no_grad():
        y = torch.compile(fast, fullgraph=True)(x)
    assert rel_l2(y.cpu(), expected) <= 1e-5
    with unet_fast.tracing.kernels_in_export(), torch.no_grad():
        ep = torch.export.export(fast, (x,))
    assert any("unet_fast" in str(n.target) for n in ep.graph.nodes)
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "k.pt2"))
    assert rel_l2(torch._inductor.aoti_load_package(path)(x).cpu(), expected) <= 1e-5
