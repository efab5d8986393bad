"""``segment_large``: one large image segmented chunk by chunk on a dask cluster into a zarr
store, exact for valid-padding networks, resumable, surviving lost workers."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cluster import client_for, progress_bar, run_windowed
from .foreground import chunk_foreground, load_mask
from .plan import MIRROR_MODES, ChunkGrid
from .source import Input, InputError, open_input
from .store import KINDS, OutputSpec, check_output, create_output, label_dtype, read_done
from .worker import (
    DTYPES,
    ModelSpec,
    RunSpec,
    blank_chunk,
    block_index,
    checkpoint_key,
    load_checkpoint,
    run_chunk,
)

OUT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class RunStats:
    """What a run did: chunks in all, already written by an earlier run, written as background
    (outside the foreground mask), and segmented now; wall-clock seconds."""

    chunks: int
    already_done: int
    background: int
    segmented: int
    seconds: float


def _weights_digest(model: torch.nn.Module) -> str:
    """Names the weights (and architecture), whatever file or function they came from: a run
    resumes only with the same numbers."""
    h = hashlib.sha256(repr(getattr(model, "config", None)).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _resolve_model(model: Any, device: str, precision: str
                   ) -> tuple[ModelSpec, torch.nn.Module, torch.nn.Module | None, str]:
    """(spec for the workers, a driver-side copy for the config, the module to ship if the
    caller gave one, the weights' digest)."""
    from ..checkpoint import CheckpointError

    if precision not in DTYPES:
        raise InputError(f"precision must be one of {tuple(DTYPES)}, got {precision!r}")
    if device != "auto":
        try:
            if torch.device(device).type not in ("cpu", "cuda"):
                raise ValueError
        except (RuntimeError, ValueError):
            raise InputError(f"device {device!r} is not a device; use auto, cpu, cuda or "
                             "cuda:N") from None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as e:
            raise InputError(str(e)) from None
        return (ModelSpec(checkpoint_key(path), os.path.abspath(path), device, precision),
                loaded, None, _weights_digest(loaded))
    if isinstance(model, torch.nn.Module):
        digest = _weights_digest(model)
        return ModelSpec(f"module:{digest}", None, device, precision), model, model, digest
    if callable(model):
        import cloudpickle

        loaded = model()
        digest = _weights_digest(loaded)
        # two loaders of the same weights may still build different models (hooks, wrappers)
        fn = hashlib.sha256(cloudpickle.dumps(model)).hexdigest()
        return ModelSpec(f"loader:{digest}:{fn}", model, device, precision), loaded, None, digest
    raise InputError(f"model must be a checkpoint path, a U-Net module or a function returning "
                     f"one, got {type(model).__name__}")


def _chunk_pair(chunk: Any) -> tuple[int, int]:
    pair = (chunk, chunk) if isinstance(chunk, int) else tuple(chunk)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise InputError(f"chunk must be a positive number of pixels (or a pair), got {chunk!r}")
    return pair  # type: ignore[return-value]


def _check_dtype(inp: Input, normalize: bool) -> None:
    ok = (inp.dtype in (np.uint8, np.uint16, np.bool_) or np.issubdtype(inp.dtype, np.floating)
          if normalize else np.issubdtype(inp.dtype, np.number) or inp.dtype == np.bool_)
    if not ok:
        raise InputError(f"{inp.name} has pixel type {inp.dtype}; supported: uint8, uint16, bool, "
                         "float16/32/64" + ("" if normalize else ", or any real number type"))


def segment_large(image: Any, model: Any, out: str | os.PathLike[str], *,
                  output: str = "labels", chunk: int | tuple[int, int] = 1024,
                  out_dtype: str | None = None, foreground: Any = None,
                  client: Any = None, scheduler: str | None = None, workers: int | None = None,
                  device: str = "auto", precision: str = "float32",
                  mirror_mode: str = "reflect", threshold: float | None = None,
                  memory_budget: int | None = None, channel_axis: int | None = None,
                  normalize: bool = True, progress: bool = False) -> RunStats:
    """Segment one large image chunk by chunk across a dask cluster, into a zarr store.

    Each task reads its output chunk plus the network's context (mirror-extended at the
    image's border, as :func:`unet_fast.segment` does), runs :func:`unet_fast.segment` on it and
    writes the chunk, then its done flag, into ``out`` (see :mod:`.store`). For a valid-padding
    network the result equals ``segment()`` on the whole image up to float32 round-off, whatever
    ``chunk``. For a same-padding network each chunk's region (the same context, clipped to the
    image) gets ``segment()``; one pass over that region gives the chunk exactly what one pass
    over the whole image gives, so the result is ``segment()``'s where ``segment()`` runs single
    windows (always when one chunk covers the image), else approximate near chunk borders.

    Args:
        image: a path to a zarr store (``big.zarr``; an OME-Zarr group's level 0, or the group's
            only array) or array in it (``big.zarr/0``), or to a TIFF/BigTIFF (read lazily
            through tifffile's zarr view); or a zarr, numpy or dask array, or a torch tensor.
            ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` (see :func:`.source.infer_layout`).
        model: a checkpoint file (``unet_fast.save`` or milesial/Pytorch-UNet), a U-Net module,
            or a function returning one. Each worker process loads it once.
        out: the output zarr store (a path or URL); created, or resumed if it holds an
            unfinished run of the same input, model and options; anything else is refused.
        output: ``"labels"`` (uint8, or uint16 beyond 256 classes), ``"probs"`` or
            ``"logits"`` (``(K, H, W)``, ``out_dtype`` float32 or float16).
        chunk: output chunk size in pixels (int or ``(h, w)``), also the zarr chunk.
        foreground: optional low-resolution mask (array or image/zarr path) covering the image;
            chunks under which it is all zero are written as zeros without running the model.
        client, scheduler, workers: a ``distributed.Client`` to use; else the address of a
            running scheduler; else a LocalCluster of ``workers`` processes (default one per GPU,
            or per CPU core). ``workers=0`` runs every task in this process, without dask.
        device: ``"auto"`` (each worker's own GPU if it has one, else the CPU), ``"cpu"``, ...
        precision: compute dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        mirror_mode: ``"reflect"`` or ``"symmetric"``, as :func:`unet_fast.segment`.
        threshold: binary models: label 1 where the last class's probability exceeds it.
        memory_budget: per task, passed to :func:`unet_fast.segment`.
        channel_axis: where the channels are, overriding the layout guess.
        normalize: scale uint8 by 1/255 and uint16 by 1/65535 (as ``unet-fast segment``);
            floats are used as they are either way.
        progress: show a progress bar over chunks.

    Raises:
        InputError: (a ValueError) bad input, model, option or output, with one line, before
            anything is written.
    """
    started = time.perf_counter()
    if output not in KINDS:
        raise InputError(f"output must be one of {KINDS}, got {output!r}")
    if mirror_mode not in MIRROR_MODES:
        raise InputError(f"mirror_mode must be one of {MIRROR_MODES}, got {mirror_mode!r}")
    spec_model, driver_model, module, digest = _resolve_model(model, device, precision)
    cfg = driver_model.config
    k = cfg.num_classes
    if threshold is not None and not (k <= 2 and 0.0 < threshold < 1.0):
        raise InputError(f"threshold is a probability in (0, 1) for binary models (1 or 2 "
                         f"classes); got {threshold!r} for a model of {k} classes")
    inp = open_input(image, cfg.in_channels, channel_axis)
    _check_dtype(inp, normalize)
    h, w = inp.layout.height, inp.layout.width
    ch, cw = _chunk_pair(chunk)
    grid = ChunkGrid(h, w, (ch, cw))
    if output == "labels":
        if out_dtype not in (None, label_dtype(k)):
            raise InputError(f"labels are written as {label_dtype(k)}; drop out_dtype")
        dtype, shape, chunks = label_dtype(k), (h, w), (ch, cw)
    else:
        dtype = out_dtype or "float32"
        if dtype not in OUT_DTYPES:
            raise InputError(f"out_dtype must be one of {OUT_DTYPES} for {output}, got {dtype!r}")
        shape, chunks = (k, h, w), (k, ch, cw)
    fg_flags = None
    fg_identity = None
    if foreground is not None:
        mask, fg_identity = load_mask(foreground)
        fg_flags = chunk_foreground(mask, grid)
    store = os.fspath(out)
    spec = OutputSpec(store, output, shape, chunks, dtype, grid.shape)
    identity = {"version": 1, "input": inp.identity, "model": digest, "output": output,
                "dtype": dtype, "chunk": [ch, cw], "mirror_mode": mirror_mode,
                "threshold": threshold, "normalize": normalize, "precision": precision,
                "channels": inp.layout.channels, "foreground": fg_identity}
    resume = check_output(store, identity)
    run = RunSpec(spec_model, inp.layout, inp.source, cfg.depth, cfg.padding, mirror_mode,
                  normalize, output, threshold, memory_budget, spec)
    attrs = {"classes": k, "padding": cfg.padding, "depth": cfg.depth}

    if workers == 0 and client is None and scheduler is None:
        return _run_here(run, grid, fg_flags, inp, module, identity, attrs, resume, progress,
                         started)
    with client_for(client, scheduler, workers) as c:
        create_output(spec, identity, attrs)
        todo, blank, done = _split(grid, read_done(spec) if resume else None, fg_flags)
        _run_dask(c, run, todo, blank, inp, module, progress)
    return RunStats(len(grid.chunks()), done, len(blank), len(todo),
                    time.perf_counter() - started)


def _split(grid: ChunkGrid, done: np.ndarray | None, fg: np.ndarray | None
           ) -> tuple[list, list, int]:
    todo, blank, skipped = [], [], 0
    for c in grid.chunks():
        if done is not None and done[c.index]:
            skipped += 1
        elif fg is not None and not fg[c.index]:
            blank.append(c)
        else:
            todo.append(c)
    return todo, blank, skipped


def _run_here(run: RunSpec, grid: ChunkGrid, fg: np.ndarray | None, inp: Input,
              module: torch.nn.Module | None, identity: dict, attrs: dict, resume: bool,
              progress: bool, started: float) -> RunStats:
    create_output(run.out, identity, attrs)
    todo, blank, done = _split(grid, read_done(run.out) if resume else None, fg)
    with progress_bar(len(todo) + len(blank), progress, "chunks") as bar:
        for c in blank:
            blank_chunk(run, c)
            bar.update()
        for c in todo:
            block = None
            if inp.array is not None:
                block = np.asarray(inp.array[block_index(run, c)])
            run_chunk(run, c, block, module)
            bar.update()
    return RunStats(len(grid.chunks()), done, len(blank), len(todo),
                    time.perf_counter() - started)


def _run_dask(client: Any, run: RunSpec, todo: list, blank: list, inp: Input,
              module: torch.nn.Module | None, progress: bool) -> None:
    """Submit the chunk tasks, a bounded number at a time (so neither the scheduler nor the
    workers hold more than a few regions), and wait for all of them."""
    # every worker gets the model: a copy on one worker alone would be lost with it
    module_f = client.scatter(module, broadcast=True) if module is not None else None
    window = max(4, 2 * sum(client.nthreads().values()))

    def submissions() -> Iterator[Callable[[], Any]]:
        for c in blank:
            yield lambda c=c: client.submit(blank_chunk, run, c, pure=False)
        for c in todo:
            yield lambda c=c: _submit_chunk(client, run, c, inp, module_f)

    run_windowed(client, submissions(), len(todo) + len(blank), window, progress, "chunks")


def _submit_chunk(client: Any, run: RunSpec, c: Any, inp: Input, module_f: Any) -> Any:
    """Submit one chunk's task. A store-backed input is read by the task itself; a dask array's
    region is computed on the cluster (recomputed from its graph if its worker is lost); a numpy
    array's region travels with the task (scattered data would be lost with its worker)."""
    block = None
    if inp.array is not None:
        block = inp.array[block_index(run, c)]
        block = client.compute(block) if hasattr(block, "dask") else np.ascontiguousarray(block)
    return client.submit(run_chunk, run, c, block, module_f, pure=False)
