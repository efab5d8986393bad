"""What runs inside a worker process: the model, loaded once per process and placed on the
worker's own GPU when there is one, and the chunk task (read region, segment, crop, write)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .plan import Chunk, mirror_indices, region_axis
from .source import Layout, TiffSource, ZarrSource, bbox, take_region
from .store import OutputSpec, write_chunk

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSpec:
    """Which model a task needs: ``key`` names the weights (a checkpoint's path, mtime and size,
    or a token of an in-memory model); ``source`` is a checkpoint path, a callable returning a
    model, or None when the model itself is passed to the task."""

    key: str
    source: str | Callable[[], torch.nn.Module] | None
    device: str = "auto"
    dtype: str = "float32"


@dataclass(frozen=True)
class RunSpec:
    """Everything a chunk task needs besides its chunk; the same for every task of a run."""

    model: ModelSpec
    layout: Layout
    source: ZarrSource | TiffSource | None
    depth: int
    padding: str
    mirror_mode: str
    normalize: bool
    kind: str
    threshold: float | None
    memory_budget: int | None
    out: OutputSpec


def load_checkpoint(path: str) -> torch.nn.Module:
    """A unet_fast or milesial/Pytorch-UNet checkpoint (detected from its content), in eval mode."""
    from ..checkpoint import from_checkpoint_dict, is_unet_fast_checkpoint, read
    from ..milesial import from_milesial, looks_like_milesial

    obj = read(path)
    if not is_unet_fast_checkpoint(obj) and looks_like_milesial(obj):
        return from_milesial(obj).eval()
    return from_checkpoint_dict(obj, path).eval()


def checkpoint_key(path: str) -> str:
    """Names a checkpoint file's current content (path, size, mtime), for the worker cache."""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def worker_device(preferred: str) -> torch.device:
    """``preferred``, or with ``auto`` this worker's own GPU: a worker named ``i`` (as
    LocalCluster names them) takes GPU ``i mod count``; the CPU without a GPU."""
    if preferred != "auto":
        return torch.device(preferred)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = 0
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else sum(map(ord, str(name)))
    except (ImportError, ValueError):
        pass  # not in a dask worker: the current device
    return torch.device("cuda", index % torch.cuda.device_count())


_MODELS: dict[tuple[str, str, str], torch.nn.Module] = {}
_THREADS_SET = False


def _set_threads() -> None:
    """Use as many torch threads as the dask worker has (once per process)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
    except (ImportError, ValueError, AttributeError):
        pass


def get_model(spec: ModelSpec, module: torch.nn.Module | None = None) -> torch.nn.Module:
    """The model of ``spec`` on this worker's device, loaded once per process."""
    device = worker_device(spec.device)
    key = (spec.key, str(device), spec.dtype)
    model = _MODELS.get(key)
    if model is None:
        _set_threads()
        if module is not None:
            model = module
        elif isinstance(spec.source, str):
            model = load_checkpoint(spec.source)
        elif spec.source is not None:
            model = spec.source()
        else:
            raise ValueError("the task got neither a model nor where to load one from")
        model = model.eval().to(device=device, dtype=DTYPES[spec.dtype])
        _MODELS.clear()  # one run at a time per worker: keep only the current model
        _MODELS[key] = model
    return model


def region_indices(run: RunSpec, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Row and column indices (into the image) of the region a chunk's task reads, and where
    the chunk starts inside that region."""
    h, w = run.layout.height, run.layout.width
    ry = region_axis(*chunk.ys, h, run.depth, run.padding)
    rx = region_axis(*chunk.xs, w, run.depth, run.padding)
    iy = mirror_indices(*ry, h, run.mirror_mode)
    ix = mirror_indices(*rx, w, run.mirror_mode)
    return iy, ix, chunk.ys[0] - ry[0], chunk.xs[0] - rx[0]


def block_index(run: RunSpec, chunk: Chunk) -> tuple[Any, ...]:
    """The index of the bounding box of a chunk's region in the input array."""
    iy, ix, _, _ = region_indices(run, chunk)
    return run.layout.index(bbox(iy), bbox(ix))


def _to_float(a: np.ndarray, normalize: bool) -> torch.Tensor:
    if normalize:
        from ..image_io import normalise

        a = normalise(a)
    elif a.dtype != np.float32:
        a = a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a))


def finish(logits: torch.Tensor, kind: str, threshold: float | None, dtype: str) -> np.ndarray:
    """``(K, h, w)`` float32 logits as the stored result: labels (argmax; for one class logit
    > 0, or with ``threshold`` the last class's probability > it), probabilities or logits."""
    k = logits.shape[0]
    if kind == "logits":
        out = logits
    elif kind == "probs" or threshold is not None:
        out = torch.sigmoid(logits) if k == 1 else torch.softmax(logits, dim=0)
        if kind == "labels":
            out = out[-1] > threshold
    else:
        out = logits[0] > 0 if k == 1 else logits.argmax(0)
    return out.cpu().numpy().astype(dtype, copy=False)


def run_chunk(run: RunSpec, chunk: Chunk, block: np.ndarray | None = None,
              module: torch.nn.Module | None = None) -> tuple[int, int]:
    """Segment one chunk and write it (then its done flag); returns the chunk's index.

    ``block`` is the bounding box of the region (read through the cluster for in-memory
    inputs); store-backed inputs are read here.
    """
    from ..tiling import segment

    iy, ix, oy, ox = region_indices(run, chunk)
    if block is None:
        assert run.source is not None
        block = run.source.open()[run.layout.index(bbox(iy), bbox(ix))]
    region = take_region(run.layout.to_chw(np.asarray(block)), iy, ix)
    model = get_model(run.model, module)
    param = next(model.parameters())
    x = _to_float(region, run.normalize).to(device=param.device, dtype=param.dtype)
    logits = segment(model, x, output="logits", mirror_mode=run.mirror_mode,
                     memory_budget=run.memory_budget)
    h, w = chunk.ys[1] - chunk.ys[0], chunk.xs[1] - chunk.xs[0]
    data = finish(logits[:, oy:oy + h, ox:ox + w], run.kind, run.threshold, run.out.dtype)
    write_chunk(run.out, chunk.index, chunk.ys, chunk.xs, data)
    return chunk.index


def blank_chunk(run: RunSpec, chunk: Chunk) -> tuple[int, int]:
    """Write zeros (background) for a chunk the foreground mask leaves out, then its flag."""
    h, w = chunk.ys[1] - chunk.ys[0], chunk.xs[1] - chunk.xs[0]
    shape = (h, w) if run.kind == "labels" else (run.out.shape[0], h, w)
    write_chunk(run.out, chunk.index, chunk.ys, chunk.xs, np.zeros(shape, dtype=run.out.dtype))
    return chunk.index
