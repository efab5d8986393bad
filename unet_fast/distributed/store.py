"""The output zarr store: one group holding the result array and a per-chunk ``done`` flag.

Layout of ``out.zarr`` (zarr format 3)::

    out.zarr/            group; attrs["unet_fast"] = the run's identity (input, checkpoint,
                         output kind, chunk size, ...), so a rerun resumes only the same run
    out.zarr/labels      (H, W) uint8/uint16 class labels, or
    out.zarr/probs       (K, H, W) float16/float32 probabilities, or
    out.zarr/logits      (K, H, W) float16/float32 logits; chunked exactly like the tasks
    out.zarr/done        (rows, cols) uint8, one zarr chunk per flag: 1 once a chunk is written

A task writes its chunk and only then its flag, so a chunk counts only once it is completely
written: a process killed in between leaves the flag at 0 and a rerun writes the chunk again.
Each task owns whole zarr chunks, so concurrent tasks never write the same object.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .source import InputError

KINDS = ("labels", "probs", "logits")
ATTR = "unet_fast"


@dataclass(frozen=True)
class OutputSpec:
    """Where and what a run writes; picklable, opened by each worker."""

    store: str
    kind: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    grid: tuple[int, int]


def label_dtype(num_classes: int) -> str:
    """uint8 up to 256 classes, else uint16 (as ``unet-fast segment`` writes masks)."""
    return "uint8" if max(num_classes, 2) <= 256 else "uint16"


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def _normalise(identity: dict[str, Any]) -> Any:
    # attrs round-trip through JSON: compare like with like
    return json.loads(json.dumps(identity))


def check_output(path: str, identity: dict[str, Any]) -> bool:
    """Whether ``path`` already holds this run (True: resume) or nothing (False: create).

    Raises :class:`InputError` if it holds anything else, or cannot be created."""
    if "://" in path:
        return _existing_run(path, identity)
    if not os.path.lexists(path) or _is_empty_dir(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise InputError(f"output {path!r}: folder {parent!r} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"output {path!r}: folder {parent!r} is not writable")
        return False
    if not os.path.isdir(path):
        raise InputError(f"output {path!r} exists and is not a zarr store; choose another path "
                         "or remove it")
    return _existing_run(path, identity)


def _existing_run(path: str, identity: dict[str, Any]) -> bool:
    import zarr

    try:
        group = zarr.open_group(store=path, mode="r")
        stored = dict(group.attrs).get(ATTR)
    except Exception:
        stored = None
        if "://" in path:
            return False
    if stored is None:
        raise InputError(f"output {path!r} already holds something else (not a unet-fast "
                         "result); choose another path or remove it")
    if stored != _normalise(identity):
        differ = sorted(k for k in set(stored) | set(identity)
                        if stored.get(k) != _normalise(identity).get(k))
        raise InputError(f"output {path!r} holds the result of a different run (differs in: "
                         f"{', '.join(differ)}); choose another path or remove it to start over")
    return True


def create_output(spec: OutputSpec, identity: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Make the group, its result array and the done flags (arrays already there are kept)."""
    import zarr

    group = zarr.open_group(store=spec.store, mode="a")
    # the identity first: a rerun after a crash right here finds its own run and completes it
    group.attrs[ATTR] = _normalise(identity)
    names = set(group.array_keys())
    if spec.kind not in names:
        arr = group.create_array(spec.kind, shape=spec.shape, chunks=spec.chunks,
                                 dtype=spec.dtype, fill_value=0,
                                 dimension_names=("y", "x") if len(spec.shape) == 2
                                 else ("c", "y", "x"))
        arr.attrs.update(attrs)
    if "done" not in names:
        group.create_array("done", shape=spec.grid, chunks=(1, 1), dtype="uint8", fill_value=0)


def read_done(spec: OutputSpec) -> np.ndarray:
    """The done flags as a ``(rows, cols)`` bool array."""
    import zarr

    done = zarr.open_array(store=spec.store, path="done", mode="r")
    return np.asarray(done[...]) == 1


_OPEN: dict[Any, Any] = {}


def _arrays(spec: OutputSpec) -> tuple[Any, Any]:
    key = spec  # the whole spec: a store recreated with other chunks is another array
    if key not in _OPEN:
        import zarr

        _OPEN[key] = (zarr.open_array(store=spec.store, path=spec.kind, mode="r+"),
                      zarr.open_array(store=spec.store, path="done", mode="r+"))
    return _OPEN[key]


def write_chunk(spec: OutputSpec, index: tuple[int, int], ys: tuple[int, int],
                xs: tuple[int, int], data: np.ndarray) -> None:
    """Write one chunk's result, then its done flag."""
    result, done = _arrays(spec)
    result[..., ys[0]:ys[1], xs[0]:xs[1]] = data
    done[index] = 1
