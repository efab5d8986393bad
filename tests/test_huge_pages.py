"""unet_fast asks torch's CPU allocator for transparent huge pages when it is imported before
torch (unet_fast/_huge_pages.py), leaves a user's own setting alone, and torch then advises huge
pages for a large buffer (checked in /proc where the kernel says so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = "THP_MEM_ALLOC_ENABLE"
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# a 64 MiB tensor, written, and whether the mapping that holds it may take huge pages (the
# kernel's THPeligible: set by torch's madvise, whether or not huge pages were free just then)
_PROBE = """
import os, sys
first = sys.argv[1]
if first == "unet_fast":
    import unet_fast
import torch
if first == "torch":
    import unet_fast
t = torch.ones(64 << 20, dtype=torch.uint8)
ptr, huge = t.data_ptr(), None
with open("/proc/self/smaps") as f:
    inside = False
    for line in f:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and head == "THPeligible:":
            huge = int(line.split()[1])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), unet_fast._huge_pages.IN_EFFECT, huge)
"""


def _probe(first: str, value: str | None = None) -> tuple[str, str, int | None]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if value is not None:
        env[ENV] = value
    out = subprocess.run([sys.executable, "-c", _PROBE, first], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0], out[1], None if out[2] == "None" else int(out[2])


def test_imported_before_torch_it_asks_for_huge_pages():
    value, in_effect, _ = _probe("unet_fast")
    assert (value, in_effect) == ("1", "True")


def test_a_users_setting_is_kept_and_torch_first_changes_nothing():
    assert _probe("unet_fast", "0")[:2] == ("0", "False")
    assert _probe("torch")[:2] == ("None", "False")


def _smaps_says_eligibility() -> bool:
    smaps = Path("/proc/self/smaps")
    return smaps.is_file() and "THPeligible:" in smaps.read_text()


@pytest.mark.skipif(not _THP.is_file() or "[madvise]" not in _THP.read_text()
                    or not _smaps_says_eligibility(),
                    reason="needs transparent huge pages in madvise mode and THPeligible in smaps")
def test_large_buffers_are_advised_huge_pages():
    """In madvise mode only advised regions may take huge pages: the setting is what does it."""
    assert _probe("unet_fast")[2] == 1
    assert _probe("unet_fast", "0")[2] == 0
