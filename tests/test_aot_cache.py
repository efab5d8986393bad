"""The ahead-of-time Triton cache (scripts/aot_cache.py, unet_fast/aot_cache.py) on the CPU.

A tiny network's kernels are compiled for sm_90 into an archive keyed for *another* Triton build
(a made-up ``triton_key``, as the device's cp312 wheel differs from this one), installed at
another path (Triton's group files hold absolute paths), and then launched again in a fresh
process with code generation made to fail: every launch must be served from the installed cache.
That is the GPU run's situation, minus the GPU. The dry listing (``check``) must name exactly the
kernels a build compiles, which is what makes ``check`` on the full archive a completeness proof.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "aot_cache.py"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, **extra}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=_env(**env), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


# launches the tiny workload with code generation forbidden: only cache hits can succeed
_RELAUNCH = """
import sys
sys.path.insert(0, {scripts!r})
import triton.compiler.compiler as cc
def refuse(*a, **k):
    raise SystemExit("compiled a kernel: cache miss")
cc.ASTSource.make_ir = refuse
import aot_cache
print("launches", aot_cache.launch_all(["tiny"]))
"""


def test_archive_keyed_for_another_triton_is_found_after_install(tmp_path):
    key_file = tmp_path / "device-key.txt"
    key_file.write_text("3.6.0-made-up-key-of-the-device-wheel")
    archive = tmp_path / "aot.tar.gz"
    # this interpreter stands in for the device's (it builds the launcher stubs)
    built = _run("build", "--out", str(archive), "--workloads", "tiny",
                 "--target-key-file", str(key_file), "--target-python", sys.executable,
                 TRITON_CACHE_DIR=str(tmp_path / "scratch"))
    # Triton 3.6 (the device's) builds a C launcher per kernel signature; later ones do not
    from triton.backends.nvidia import driver

    n_modules = 5 if hasattr(driver, "make_launcher") else 0
    assert (f"aot cache build: 14 launches, 9 kernels and {n_modules} launcher/driver modules"
            in built.stdout)
    # the dry listing names exactly what the build compiled
    checked = _run("check", str(archive), "--workloads", "tiny")
    assert "14 launches, 9 distinct kernels, 0 missing" in checked.stdout

    from unet_fast import aot_cache

    cache = tmp_path / "elsewhere" / "triton"
    counts = aot_cache.install(archive, cache, log=lambda _: None)
    assert counts == {"entries": 9, "same_key": 0, "rekeyed": 9, "modules": n_modules}
    # launcher stubs and driver utilities are keyed by their C source: copied as built
    modules = list(cache.glob("*/*.so"))
    assert len(modules) == n_modules and {m.name.split(".")[0] for m in modules} <= {
        "__triton_launcher", "cuda_utils"}
    # only metadata and binaries travel, and the group files point at the installed copies
    for grp in cache.glob("*/__grp__*.json"):
        paths = json.loads(grp.read_text())["child_paths"]
        assert {Path(p).suffix for p in paths.values()} == {".json", ".cubin"}
        assert all(Path(p).parent == grp.parent and Path(p).exists() for p in paths.values())

    proc = subprocess.run([sys.executable, "-c", _RELAUNCH.format(scripts=str(SCRIPT.parent))],
                          capture_output=True, text=True, timeout=600,
                          env=_env(TRITON_CACHE_DIR=str(cache)), cwd=ROOT)
    assert proc.returncode == 0 and "launches 14" in proc.stdout, proc.stderr[-3000:]


def test_install_refuses_another_triton_version(tmp_path):
    import tarfile

    from unet_fast import aot_cache

    manifest = tmp_path / aot_cache.MANIFEST
    manifest.write_text(json.dumps({"triton_version": "0.0.1", "triton_key": "k", "entries": {}}))
    archive = tmp_path / "old.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(manifest, arcname=aot_cache.MANIFEST)
    with pytest.raises(ValueError, match=r"Triton 0\.0\.1 kernels"):
        aot_cache.install(archive, tmp_path / "cache", log=lambda _: None)


def test_entry_dir_is_tritons_base32_name():
    from triton.runtime.cache import _base32

    from unet_fast.aot_cache import entry_dir

    h = "ab" * 32
    assert entry_dir(h) == _base32(h)
