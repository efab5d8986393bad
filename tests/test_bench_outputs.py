"""Where the benchmark writes: never over the committed reference result unless asked
(--publish or an explicit --out-dir), never into the current directory by default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import unet_fast
from unet_fast.benchmark import add_arguments, resolve_options
from unet_fast.cli.bench import default_results_dir

ROOT = Path(__file__).resolve().parent.parent


def _opts(*argv: str):
    p = argparse.ArgumentParser()
    add_arguments(p, "/default/results")
    return resolve_options(p.parse_args(["--device", "cpu", *argv]))


@pytest.mark.parametrize("argv,out_dir,tag", [
    ((), "/default/results", "local"),
    (("--quick",), "/default/results", "quick"),
    (("--publish",), "/default/results", None),
    (("--out-dir", "/elsewhere"), "/elsewhere", None),
    (("--quick", "--out-dir", "/elsewhere"), "/elsewhere", "quick"),
    (("--tag", "mine"), "/default/results", "mine"),
])
def test_result_file_names(argv, out_dir, tag):
    opts = _opts(*argv)
    assert (opts.out_dir, opts.tag) == (out_dir, tag)


def test_publish_needs_a_full_run():
    with pytest.raises(ValueError, match=r"--publish .* drop --quick"):
        _opts("--publish", "--quick")


def test_cli_bench_writes_to_the_checkout_or_a_cache_folder(tmp_path, monkeypatch):
    assert default_results_dir() == ROOT / "benchmarks" / "results"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_results_dir(tmp_path / "site-packages") == tmp_path / "cache" / "unet_fast" / "bench"


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "unet_fast.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().startswith(f"unet-fast {unet_fast.__version__} (torch ")
