"""CUDA-graph replay of a whole forward, one graph per input shape, shared by the CUDA backends."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import torch

from .._device import device_guard

if TYPE_CHECKING:
    from ..model import UNet


def replay(model: UNet, key: tuple[Hashable, ...], x: torch.Tensor,
           run: Callable[[torch.Tensor], torch.Tensor], max_graphs: int) -> torch.Tensor:
    """``run(x)`` through a CUDA graph captured once per ``key`` and kept in ``model.weight_cache``
    (so a weight change re-captures it).

    ``key[:2]`` names the family (backend name, ``"graph"``): at most ``max_graphs`` keys of the
    family are kept, the least recently used dropped first (each graph holds its own activations).
    """
    graph, static_x, static_y = model.weight_cache.get(model, key, lambda: _capture(x, run))
    model.weight_cache.trim(lambda k: k[:2] == key[:2], max_graphs)
    static_x.copy_(x)
    graph.replay()
    return static_y.clone()


def _capture(x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]):
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
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = run(static_x)
    return graph, static_x, static_y
