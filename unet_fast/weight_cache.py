"""Packed-weight caches that can never go stale.

A cache entry records, for every parameter and buffer of the module, its storage pointer and its
autograd version counter. An optimizer step, ``load_state_dict`` and in-place edits under
``torch.no_grad()`` bump the version; ``.to()``/``.half()`` swap the storage; either one makes the
entry stale and it is rebuilt on the next call. The one mutation PyTorch does not record is a write
through ``param.data``: after one, call :meth:`WeightCache.clear` (``model.clear_weight_cache()``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn


def weights_stamp(module: nn.Module) -> tuple[Any, ...]:
    """A cheap fingerprint that changes whenever a parameter or buffer of ``module`` changes."""
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
        for t in (*module.parameters(), *module.buffers())
    )


class WeightCache:
    """Maps a key (device, dtype, ...) to packed weights built from ``module``'s current weights.

    Entries are kept in least-recently-used order (see :meth:`trim`).
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Any, ...], Any]] = {}

    def get(self, module: nn.Module, key: Hashable, build: Callable[[], Any]) -> Any:
        """The entry for ``key``, rebuilt with ``build()`` if the weights changed since it was made.

        A rebuild first drops every entry made from other weights: each would be rebuilt on its
        next use anyway, and until then would hold memory (packed copies, CUDA graphs).
        """
        stamp = weights_stamp(module)
        entry = self._entries.pop(key, None)
        if entry is not None and entry[0] == stamp:
            self._entries[key] = entry  # most recently used last
            return entry[1]
        self._entries = {k: e for k, e in self._entries.items() if e[0] == stamp}
        with torch.no_grad():
            value = build()
        # The stamp is re-read: packing must not count as a change of the weights.
        self._entries[key] = (weights_stamp(module), value)
        return value

    def keys(self) -> list[Hashable]:
        """The keys, least recently used first."""
        return list(self._entries)

    def trim(self, belongs: Callable[[Hashable], bool], keep: int) -> None:
        """Drop the least recently used entries whose key ``belongs`` until ``keep`` are left."""
        members = [k for k in self._entries if belongs(k)]
        for k in members[:max(0, len(members) - keep)]:
            del self._entries[k]

    def clear(self) -> None:
        """Drop every entry (needed only after writes through ``param.data``)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
