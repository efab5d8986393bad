"""Peak memory of one row: the CUDA caching allocator's high-water mark on the GPU; on Linux CPUs
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)."""

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
CUDA_NOTE = ("torch.cuda.max_memory_allocated during one call minus what was allocated before the "
             "row built its model (the shared inputs): the row's weights, caches, workspace and "
             "outputs")


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
    ``peak_mb()`` after it. Returns None where the platform cannot tell."""

    def __init__(self, device: str):
        self.device = device
        self.base = 0
        self.supported = True

    @property
    def note(self) -> str:
        if self.device == "cuda":
            return CUDA_NOTE
        return CPU_NOTE if self.supported else "not measured: needs Linux /proc/self/clear_refs"

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
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
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        if not self.supported:
            return None
        hwm = _status_kb("VmHWM")
        return None if hwm is None else (hwm - self.base) / 1024
