"""The CUDA backend's per-shape graph cache, with CUDA's graph and stream API replaced by fakes so
that its bookkeeping runs on the CPU (the kernels run under the interpreter; replay is a no-op,
so only the captured call's own output is ever returned). The real capture and replay are checked
by tests/test_triton_gpu.py on a GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from unet_fast.backends.cuda_triton import CudaTritonBackend

from .test_triton_model import make_models
from .triton_helpers import needs_triton, rel_l2

pytestmark = needs_triton


class FakeStream:
    def __init__(self, device=None):
        pass

    def wait_stream(self, other):
        pass


class FakeGraph:
    captures = 0

    def __init__(self):
        FakeGraph.captures += 1

    def replay(self):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeGraph.captures = 0
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    return FakeGraph


def graph_keys(model):
    return [k for k in model.weight_cache.keys() if k[1] == "graph"]


def test_graph_captured_in_inference_mode_replays_under_no_grad(fake_cuda):
    """segment() runs under inference_mode: a graph captured there must still take inputs from a
    later call under plain no_grad (its static input must not be an inference tensor)."""
    _, fast = make_models("same", None, "transpose")
    backend = CudaTritonBackend(cuda_graphs=True)
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        first = backend._replay(fast, x, torch.float32, False)
    with torch.no_grad():
        second = backend._replay(fast, x, torch.float32, False)
    assert fake_cuda.captures == 1
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_graph_cache_keeps_the_most_recent_shapes(fake_cuda):
    """Each graph holds its own activation memory: at most ``max_graphs`` shapes are kept, the
    least recently used one is dropped first."""
    _, fast = make_models("same", None, "transpose")
    backend = CudaTritonBackend(cuda_graphs=True, max_graphs=2)
    shapes = [(1, 3, 8, 8), (1, 3, 9, 8), (1, 3, 8, 9)]

    def call(shape):
        with torch.inference_mode():
            backend._replay(fast, torch.randn(shape), torch.float32, False)

    for shape in shapes:
        call(shape)
    assert fake_cuda.captures == 3
    assert [k[4] for k in graph_keys(fast)] == shapes[1:]
    call(shapes[1])  # a hit refreshes it ...
    call(shapes[0])  # ... so this re-capture drops shapes[2]
    assert fake_cuda.captures == 4
    assert [k[4] for k in graph_keys(fast)] == [shapes[1], shapes[0]]


def test_max_graphs_must_be_positive():
    with pytest.raises(ValueError, match="max_graphs must be >= 1"):
        CudaTritonBackend(cuda_graphs=True, max_graphs=0)


def test_graph_captured_across_a_weight_update_is_not_kept(fake_cuda, monkeypatch):
    """The graph entry's build gets the packed weights through a nested cache lookup. Another
    thread updating the weights right after they were packed (simulated inside pack) must leave
    neither the pack nor the graph captured from it in the cache."""
    from unet_fast.backends import cuda_triton

    from .test_triton_model import reference64

    ref, fast = make_models("same", "batch", "transpose")
    real_pack, packs = cuda_triton.pack, []

    def pack_then_update(*args, **kwargs):
        packed = real_pack(*args, **kwargs)
        packs.append(packed)
        if len(packs) == 1:
            with torch.no_grad():  # ref shares these tensors (from_reference)
                fast.decoder[0].conv1.weight.mul_(-1.0)
                fast.encoder[1].norm2.running_mean.add_(1.0)
        return packed

    monkeypatch.setattr(cuda_triton, "pack", pack_then_update)
    backend = CudaTritonBackend(cuda_graphs=True)
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        backend._replay(fast, x, torch.float32, False)
        out = backend._replay(fast, x, torch.float32, False)  # a hit: the fake replay is a no-op
    assert rel_l2(out, reference64(ref, x)) < 1e-5
    assert len(packs) == 2  # repacked after the update, once
