"""Packed-weight caches that can never go stale, even while other threads update the weights.

Every entry of a :class:`WeightCache` was built from one state of the module's weights, recorded
in a fingerprint taken *before* packing: for every parameter and buffer, the tensor object
(tracked by a weak reference, so a replaced tensor is never mistaken for a new one that happens to
reuse its address), its storage pointer and its autograd version counter. An optimizer step,
``load_state_dict`` and in-place edits under ``torch.no_grad()`` bump the version (PyTorch bumps
it after the write completes); ``load_state_dict(assign=True)`` and ``.to()``/``.half()`` swap the
tensor or its storage; any of these makes the entries stale and they are rebuilt on the next call.

A pack is kept only if the fingerprint still matches after packing: a pack that read weights
while another thread was changing them is used for that one call, never stored as current. A
lock serializes lookups and builds, so concurrent calls neither build twice nor interleave their
bookkeeping.

Inference tensors (made under ``torch.inference_mode()``) have no version counter; PyTorch lets
them change only in place under ``inference_mode``, so for them the fingerprint holds a bitwise
copy that each lookup compares against (one read of those weights per call, and one extra copy
of them in memory). Build models outside ``inference_mode`` to avoid that cost.

The mutations PyTorch does not record are writes through ``param.data`` or a NumPy view of a
parameter: after one, call :meth:`WeightCache.clear` (``model.clear_weight_cache()``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

_ATTEMPTS = 3  # builds tried while other threads keep changing the weights, before giving up
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``module`` and its submodules (a shared one may repeat).

    Walks ``_parameters``/``_buffers`` directly: ``parameters()``/``buffers()`` cost about three
    times as much (name prefixes, deduplication), and this runs on every forward.
    """
    out: list[torch.Tensor | None] = []
    stack: list[nn.Module | None] = [module]
    while stack:
        m = stack.pop()
        if m is not None:  # (None entries are legal in _modules, _parameters and _buffers)
            out += m._parameters.values()
            out += m._buffers.values()
            stack += m._modules.values()
    return [t for t in out if t is not None]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (NaN equals itself, -0.0 differs from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() and a.element_size() in _INT_OF_SIZE:
        as_int = _INT_OF_SIZE[a.element_size()]
        a, b = a.view(as_int), b.view(as_int)
    return torch.equal(a, b)


class _Fingerprint:
    """The state of a module's weights at one moment (see the module docstring)."""

    __slots__ = ("_died", "_ids", "_refs", "_snapshots")

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        died = [False]
        self._died = died

        def on_death(_ref: weakref.ref, died: list[bool] = died) -> None:
            died[0] = True  # a tensor this fingerprint names was freed: it was replaced

        self._refs = [weakref.ref(t, on_death) for t in tensors]
        self._snapshots: list[tuple[int, torch.Tensor]] | None = None
        try:
            self._ids = [(id(t), t.data_ptr(), t._version) for t in tensors]
        except RuntimeError:  # an inference tensor: no version counter, keep a copy instead
            self._ids = [(id(t), t.data_ptr(), None if t.is_inference() else t._version)
                         for t in tensors]
            self._snapshots = [(i, t.clone()) for i, t in enumerate(tensors) if t.is_inference()]

    def matches(self, tensors: list[torch.Tensor]) -> bool:
        """Whether ``tensors`` (the module's current ones) are the weights fingerprinted here."""
        if self._died[0]:
            return False
        if self._snapshots is None:
            try:
                return self._ids == [(id(t), t.data_ptr(), t._version) for t in tensors]
            except RuntimeError:  # a tensor was replaced by an inference tensor
                return False
        ids = [(id(t), t.data_ptr(), None if t.is_inference() else t._version) for t in tensors]
        return self._ids == ids and all(_same_bits(tensors[i], s) for i, s in self._snapshots)


class WeightCache:
    """Maps a key (device, dtype, ...) to values built from ``module``'s current weights.

    All entries belong to one state of the weights; entries are kept in least-recently-used
    order (see :meth:`trim`). Safe to use from several threads.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, Any] = {}
        self._fingerprint: _Fingerprint | None = None
        # Reentrant: a build may itself get another entry (a CUDA graph captures the packed weights)
        self._lock = threading.RLock()

    def get(self, module: nn.Module, key: Hashable, build: Callable[[], Any]) -> Any:
        """The entry for ``key``, rebuilt with ``build()`` if the weights changed since it was made.

        A change of the weights drops every entry: each would be rebuilt on its next use anyway,
        and until then would hold memory (packed copies, CUDA graphs). If the weights change while
        ``build()`` runs, it is run again (a few times at most); a value built while they kept
        changing is returned for this call but not kept.
        """
        with self._lock:
            tensors = module_tensors(module)
            if self._fingerprint is not None and self._fingerprint.matches(tensors):
                value = self._entries.pop(key, _MISSING)
                if value is not _MISSING:
                    self._entries[key] = value  # most recently used last
                    return value
            else:
                self._drop_all()
            for _ in range(_ATTEMPTS):
                if self._fingerprint is None:
                    # taken before packing: a pack is never labelled with weights it did not read
                    self._fingerprint = _Fingerprint(tensors)
                fingerprint = self._fingerprint
                with torch.no_grad():
                    value = build()
                tensors = module_tensors(module)
                if self._fingerprint is fingerprint and fingerprint.matches(tensors):
                    self._entries[key] = value
                    return value
                # A nested get() inside build() that saw the change already replaced the
                # fingerprint: its entries are current, keep them for the next attempt.
                if self._fingerprint is None or not self._fingerprint.matches(tensors):
                    self._drop_all()
            return value

    def _drop_all(self) -> None:
        self._entries.clear()
        self._fingerprint = None

    def keys(self) -> list[Hashable]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def trim(self, belongs: Callable[[Hashable], bool], keep: int) -> None:
        """Drop the least recently used entries whose key ``belongs`` until ``keep`` are left."""
        with self._lock:
            members = [k for k in self._entries if belongs(k)]
            for k in members[:max(0, len(members) - keep)]:
                del self._entries[k]

    def clear(self) -> None:
        """Drop every entry (needed only after writes through ``param.data``)."""
        with self._lock:
            self._drop_all()

    def __len__(self) -> int:
        return len(self._entries)

    # A copied or pickled model (copy.deepcopy, torch.save of the module) gets an empty cache:
    # the entries describe the original's tensors, and locks cannot be copied.
    def __getstate__(self) -> dict[str, Any]:
        return {"entries": "dropped"}  # not empty: pickle skips __setstate__ for a falsy state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


_MISSING = object()
