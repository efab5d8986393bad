"""unet_fast asks torch's CPU allocator for transparent huge pages when it is imported before
torch (unet_fast/_huge_pages.py), leaves a user's own setting alone, and the pages it gets are
huge (checked in /proc where the kernel offers them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = "THP_MEM_ALLOC_ENABLE"
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# a 64 MiB tensor, written, and the AnonHugePages of the mapping that holds it
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
        elif inside and head == "AnonHugePages:":
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


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file() or not _THP.is_file()
                    or "[never]" in _THP.read_text(), reason="no transparent huge pages here")
def test_large_buffers_get_huge_pages():
    huge = _probe("unet_fast")[2]
    assert huge is not None and huge >= 2048, huge  # at least one 2 MiB page (kB)
    if "[madvise]" in _THP.read_text():  # only advised regions get them: the setting did it
        off = _probe("unet_fast", "0")[2]
        assert off == 0, off
