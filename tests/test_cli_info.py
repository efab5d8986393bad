"""``unet-fast info`` reports versions and active backends."""

from __future__ import annotations

import subprocess
import sys

from unet_fast.cli import main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "native extension (unet_fast._C)  loaded" in out
    assert "cpu-onednn" in out


def test_help_and_unknown_command():
    res = subprocess.run([sys.executable, "-m", "unet_fast.cli", "--help"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0 and "info" in res.stdout
    res = subprocess.run([sys.executable, "-m", "unet_fast.cli", "frobnicate"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_cuda_backends_marked_inactive_without_a_gpu(capsys, monkeypatch):
    # regression: "cuda backends  cuda-triton" read as active on a machine without a GPU
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cuda backends"))
    assert line.endswith("(inactive: no CUDA device)"), line
