"""The committed ahead-of-time archive (``benchmarks/aot/aot-cache.tar.gz``, which
scripts/gpu_session.sh installs by default) is complete for the GPU session's workloads and not
stale. Runs on the CPU with whatever Triton is installed; it needs neither a GPU nor the device's
Triton 3.6.

Why this design. Whether a lent GPU compiles anything depends on the cache keys of the kernels the
session launches, and those hash Triton 3.6's own build (``triton_key``): a machine without that
Triton cannot recompute them (``scripts/aot_cache.py check`` can, and the build ran it). What
decides *which* kernels are launched, though, does not depend on the Triton version, and the build
records it in the archive's manifest:

* ``kernel_sources``: sha256 of every module of ``unet_fast.triton_kernels`` (and the unet_fast
  modules they import). A kernel's key covers its source, its ``@triton.jit`` helpers and its first
  line number, so an edit to any of these files may change it: file granularity, conservative.
* ``launches``: one record per distinct compiled kernel, taken from the launch itself (kernel name,
  argument dtypes, constexpr values such as tiles, flags and precision, the divisibility
  specialisation of the other arguments, warps, stages): what the default tiles, layer plans and
  workload lists produce. Arguments are named and unspecialised ones dropped, so Triton 3.6 (at
  the build) and 3.9 give identical records for these workloads.

This test recomputes both here (the listing by a dry run of the same workloads through Triton's
own launch path, which compiles nothing) and requires equality. That is stronger than a source
fingerprint alone: a changed default tile, layer plan, workload or shape fails it even when no
kernel file changed. It cannot pass vacuously: the listing must be non-empty and match the
archive's compiled kernels one to one, and each of those must have its binary in the archive.

Not covered (the GPU session's log, which counts the kernels each phase compiled, is the proof):
that the device's Triton computes the keys the build computed (the install rekeys if not) and that
the device compiles nothing outside these workloads.

When it fails: rebuild the archive (``scripts/aot_cache.py``'s docstring, about 30 minutes) and
commit it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "benchmarks" / "aot" / "aot-cache.tar.gz"
REBUILD = ("the committed ahead-of-time archive is stale: rebuild it with Triton 3.6 "
           "(scripts/aot_cache.py build --out benchmarks/aot/aot-cache.tar.gz --target-python "
           "<python3.12 with triton 3.6.0>, then check) and commit it")


@pytest.fixture(scope="module")
def manifest() -> dict:
    from unet_fast import aot_cache

    assert ARCHIVE.is_file(), f"{ARCHIVE} is missing"
    return aot_cache.read_manifest(ARCHIVE)


def test_archive_holds_a_binary_for_every_listed_kernel(manifest):
    from unet_fast.aot_cache import MANIFEST, entry_dir

    assert ARCHIVE.stat().st_size <= 60 * 2**20  # carried and copied with the tree
    assert manifest["triton_version"] == "3.6.0"  # the device image's Triton
    entries, launches = manifest["entries"], manifest["launches"]
    assert len(launches) > 100  # the paper network alone launches more kernels than that
    # one launch record per compiled kernel: the listing is the archive's key set, renamed
    assert len(entries) == len(launches)
    assert sorted(p["name"] for p in entries.values()) == sorted(
        r["kernel"].rsplit(".", 1)[1] for r in launches)
    with tarfile.open(ARCHIVE) as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
    files: dict[str, set[str]] = {}
    for name in names - {MANIFEST}:
        folder, _, file = name.partition("/")
        files.setdefault(folder, set()).add(Path(file).suffix if not file.startswith("__grp__")
                                            else "__grp__")
    for h in entries:
        assert files.get(entry_dir(h)) == {".cubin", ".json", "__grp__"}, h
    # Triton 3.6's C launchers (one per kernel signature) and its driver utilities
    assert manifest["modules"] and all(".so" in files.get(m, set()) for m in manifest["modules"])


def test_kernel_sources_unchanged_since_the_build(manifest):
    from unet_fast.aot_cache import kernel_sources

    now = kernel_sources()
    assert len(now) >= 6 and "unet_fast.triton_kernels.conv3x3" in now
    changed = sorted(m for m in now.keys() | manifest["kernel_sources"].keys()
                     if now.get(m) != manifest["kernel_sources"].get(m))
    assert not changed, f"{REBUILD}; changed since the build: {changed}"


def test_launch_listing_matches_a_dry_run_of_the_workloads(manifest, tmp_path):
    out = tmp_path / "listing.json"
    # the kernels' launch path, not the interpreter's (which compiles nothing to list)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "aot_cache.py"), "listing",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    now = json.loads(out.read_text())
    assert now["launch_count"] > len(now["launches"]) > 100

    def key(record: dict) -> str:
        return json.dumps(record, sort_keys=True)

    archived = {key(r) for r in manifest["launches"]}
    current = {key(r) for r in now["launches"]}
    new = [json.loads(k) for k in sorted(current - archived)]
    gone = [json.loads(k) for k in sorted(archived - current)]
    import triton

    assert not new and not gone, (
        f"{REBUILD}; {len(new)} launches not in the archive, {len(gone)} archived ones no longer "
        f"made; first new: {[_short(r) for r in new[:3]]}; first gone: "
        f"{[_short(r) for r in gone[:3]]} (if neither the workloads nor the launchers changed, "
        f"Triton {triton.__version__} may describe launches differently from 3.6: compare "
        f"`scripts/aot_cache.py listing` under both)")


def _short(record: dict) -> str:
    tiles = {k: v for k, v in record["constexprs"].items() if k.isupper()}
    dtypes = sorted({t for t in record["signature"].values() if t.startswith("*")})
    return (f"{record['kernel'].rsplit('.', 1)[1]} {'/'.join(dtypes)} {tiles} "
            f"w{record['num_warps']} s{record['num_stages']}")
