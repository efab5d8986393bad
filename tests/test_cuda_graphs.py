"""The CUDA backend's per-shape graph cache, with CUDA's graph and stream API replaced by fakes so
that its bookkeeping runs on the CPU (the kernels run under the interpreter; replay is a no-op,
so only the captured call's own output is ever returned). The real capture and replay are checked
by tests/test_triton_gpu.py on a GPU."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from unet_fast.backends import _graphs
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


def _input(batch: int, cuda: bool = True):
    """What :func:`_graphs.wanted` reads of an input (a CPU device: no CUDA device guard)."""
    return SimpleNamespace(is_cuda=cuda, shape=(batch, 3, 8, 8), device=torch.device("cpu"))


def test_graphs_on_by_default_for_small_batches_only(monkeypatch):
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    limit = _graphs.AUTO_MAX_BATCH
    assert CudaTritonBackend().cuda_graphs is None
    assert CudaTritonBackend().fallback.cuda_graphs is None  # the stock fallback follows it
    assert [_graphs.wanted(None, _input(b)) for b in (1, limit, limit + 1, 16)] == [
        True, True, False, False]
    assert _graphs.wanted(True, _input(16)) and not _graphs.wanted(False, _input(1))
    assert not any(_graphs.wanted(s, _input(1, cuda=False)) for s in (None, True))
    # a caller capturing the forward into its own graph gets the kernels recorded there
    capturing[0] = True
    assert not any(_graphs.wanted(s, _input(1)) for s in (None, True))


class NamedStream:
    def __init__(self, name):
        self.name, self.waited = name, []

    def __eq__(self, other):
        return isinstance(other, NamedStream) and other.name == self.name

    __hash__ = object.__hash__

    def wait_stream(self, other):
        self.waited.append(getattr(other, "name", "capture's side stream"))


def test_replays_on_another_stream_wait_for_the_previous_one(fake_cuda, monkeypatch):
    """One graph has one static input and output: a replay queued on another stream than the
    previous one first waits for it (on the same stream, queue order already serialises them)."""
    _, fast = make_models("same", None, "transpose")
    backend = CudaTritonBackend(cuda_graphs=True)
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    streams = {"current": NamedStream("a")}
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams["current"])
    with torch.inference_mode():
        backend._replay(fast, x, torch.float32, False)  # captured from stream a
        streams["current"] = NamedStream("a")
        backend._replay(fast, x, torch.float32, False)
        assert streams["current"].waited == []
        streams["current"] = NamedStream("b")
        backend._replay(fast, x, torch.float32, False)
        assert streams["current"].waited == ["a"]
    assert fake_cuda.captures == 1
