"""CUDA-graph replay of a whole forward, one graph per input shape, shared by the CUDA backends.

A replay is one launch instead of one per kernel: at batch 1 the per-kernel launches cost more
host time than the GPU spends (benchmarks/NOTES.md, "Host cost of a forward"). Graphs are on by
default up to :data:`AUTO_MAX_BATCH` (:func:`wanted`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import torch

from .._device import device_guard

if TYPE_CHECKING:
    from ..model import UNet

# ``cuda_graphs=None`` (the backends' default) replays graphs for batches up to this size: there
# the launches' host time exceeds the GPU time; above it the GPU hides them, and a graph would
# only add its own activation memory per shape.
AUTO_MAX_BATCH = 4


def wanted(setting: bool | None, x: torch.Tensor) -> bool:
    """Whether a forward of ``x`` goes through a graph: ``setting`` True/False, or None (auto)
    for batches of at most :data:`AUTO_MAX_BATCH`; never off CUDA, nor while the caller is
    capturing a graph of its own (the forward is then recorded into that one)."""
    if setting is False or not x.is_cuda:
        return False
    if setting is None and x.shape[0] > AUTO_MAX_BATCH:
        return False
    with device_guard(x.device):
        return not torch.cuda.is_current_stream_capturing()


class _Captured:
    """A captured forward: its graph, static input and output, and what orders its replays."""

    __slots__ = ("graph", "lock", "static_x", "static_y", "stream")

    def __init__(self, graph, static_x: torch.Tensor, static_y: torch.Tensor, stream) -> None:
        self.graph, self.static_x, self.static_y = graph, static_x, static_y
        self.stream = stream  # where the last replay (and its output's clone) was queued
        self.lock = threading.Lock()


def replay(model: UNet, key: tuple[Hashable, ...], x: torch.Tensor,
           run: Callable[[torch.Tensor], torch.Tensor], max_graphs: int) -> torch.Tensor:
    """``run(x)`` through a CUDA graph captured once per ``key`` and kept in ``model.weight_cache``
    (so a weight change re-captures it).

    ``key[:2]`` names the family (backend name, ``"graph"``): at most ``max_graphs`` keys of the
    family are kept, the least recently used dropped first (each graph holds its own activations).
    Replays of one graph from several threads or streams are serialised: each fills the one
    static input and reads the one static output.
    """
    def build() -> _Captured:
        # room for the new graph, made before it allocates; a hit refreshes its key's rank
        model.weight_cache.trim(lambda k: k[:2] == key[:2], max_graphs - 1)
        return _capture(x, run)

    entry = model.weight_cache.get(model, key, build)
    with entry.lock:
        stream = torch.cuda.current_stream(x.device)
        if stream != entry.stream:
            # the previous replay, queued on another stream, must be done with the static
            # tensors before this one overwrites them
            stream.wait_stream(entry.stream)
            entry.stream = stream
        entry.static_x.copy_(x)
        entry.graph.replay()
        return entry.static_y.clone()


def _capture(x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> _Captured:
    # The static tensors outlive this call, which may run under inference_mode (segment() does):
    # made as normal tensors, later calls under plain no_grad can still copy into them. The graph
    # is captured on the current device, hence the guard.
    with device_guard(x.device), torch.inference_mode(False), torch.no_grad():
        static_x = x.clone()
        # Warm up on a side stream first: compilation, tuning and cuDNN's algorithm search must
        # not be captured.
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            run(static_x)
        current = torch.cuda.current_stream(x.device)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = run(static_x)
    return _Captured(graph, static_x, static_y, current)
