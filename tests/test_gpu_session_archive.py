"""Which ahead-of-time archive scripts/gpu_session.sh installs: the committed one by default, a
carried ``.cache/aot-cache.tar.gz`` before it, ``AOT_ARCHIVE`` before both (``none``: none).

The script runs for real in a scratch copy of the tree layout, with ``python3`` and ``nvidia-smi``
replaced by stubs that log their arguments (no GPU, pip or pytest run), so the test reads which
archive the install step was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = "benchmarks/aot/aot-cache.tar.gz"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _session(tmp_path: Path, carried: bool, **env: str) -> list[str]:
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_session.sh", tree / "scripts")
    (tree / "benchmarks" / "aot").mkdir(parents=True)
    (tree / COMMITTED).write_bytes(b"committed")
    if carried:
        (tree / ".cache").mkdir()
        (tree / ".cache" / "aot-cache.tar.gz").write_bytes(b"carried")
    (tree / "other.tar.gz").write_bytes(b"other")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    for name in ("python3", "nvidia-smi"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (stubs / name).chmod(0o755)
    run_env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}",
               "OUT": str(tmp_path / "out"), **env}
    proc = subprocess.run(["bash", "scripts/gpu_session.sh", "tests"], cwd=tree, env=run_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line.split(" install ", 1)[1].split()[0] for line in log.read_text().splitlines()
            if line.startswith("python3 scripts/aot_cache.py install ")]


def test_committed_archive_by_default(tmp_path):
    assert _session(tmp_path, carried=False) == [COMMITTED]


def test_carried_archive_before_the_committed_one(tmp_path):
    assert _session(tmp_path, carried=True) == [".cache/aot-cache.tar.gz"]


def test_aot_archive_overrides_both(tmp_path):
    assert _session(tmp_path, carried=True, AOT_ARCHIVE="other.tar.gz") == ["other.tar.gz"]


def test_aot_archive_none_installs_nothing(tmp_path):
    assert _session(tmp_path, carried=True, AOT_ARCHIVE="none") == []
    assert "ahead-of-time archive: none" in (tmp_path / "out" / "session.log").read_text()
