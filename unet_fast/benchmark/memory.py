"""Peak memory of one row: on the GPU the CUDA caching allocator's high-water mark, or what stays
reserved after emptying the cache when that is more (a CUDA graph's private pool, see CUDA_NOTE);
on Linux CPUs the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

CPU_NOTE = ("peak resident-set growth of the process during one call over the RSS before the row "
            "built its model (includes the row's weights and caches); heap memory freed by earlier "
            "rows and reused is not counted, so it can read low")
CUDA_NOTE = ("the larger of (a) torch.cuda.max_memory_allocated during one call minus what was "
             "allocated before the row built its model (the shared inputs), and (b) "
             "torch.cuda.memory_reserved() after torch.cuda.empty_cache() at the end of the row "
             "minus the same at its start. empty_cache releases the L2-flush buffer and cached "
             "free blocks but not a live CUDA graph's private memory pool, so (b) counts the "
             "activations of rows that replay a graph (their replay allocates nothing, so (a) "
             "misses them); (a) counts the weights, caches, workspace and outputs of the others")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS so they do not hide the next row's growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """``start()`` before a row builds its model; ``arm()`` right before the measured call;
    ``peak_mb()`` after it (on CUDA, while the row's model, graph and output are still alive).
    Returns None where the platform cannot tell."""

    def __init__(self, device: str):
        self.device = device
        self.base = 0
        self.base_reserved = 0
        self.supported = True
        # the two CUDA measures behind peak_mb(), in MB (see CUDA_NOTE)
        self.parts: dict[str, float] | None = None

    @property
    def note(self) -> str:
        if self.device == "cuda":
            return CUDA_NOTE
        return CPU_NOTE if self.supported else "not measured: needs Linux /proc/self/clear_refs"

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated()
            self.base_reserved = torch.cuda.memory_reserved()
            return
        _trim_heap()
        rss = _status_kb("VmRSS")
        self.supported = rss is not None and _CLEAR_REFS.exists()
        self.base = rss or 0

    def arm(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        if self.supported:
            try:
                _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                self.supported = False

    def peak_mb(self) -> float | None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            allocated = (torch.cuda.max_memory_allocated() - self.base) / 2**20
            torch.cuda.empty_cache()
            reserved = (torch.cuda.memory_reserved() - self.base_reserved) / 2**20
            self.parts = {"allocated_peak_mb": allocated, "reserved_after_empty_cache_mb": reserved}
            return max(allocated, reserved)
        if not self.supported:
            return None
        hwm = _status_kb("VmHWM")
        return None if hwm is None else (hwm - self.base) / 1024
