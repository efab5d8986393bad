"""``unet-fast segment`` on awkward inputs: image layouts, folders holding earlier outputs,
validation of every input before anything is written, and exactly one stderr line per failure
(warnings and third-party log lines included, so some cases run the CLI in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast.cli import main

from .test_checkpoint import ShellPayload

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    unet_fast.save(unet_fast.UNet(in_channels=3, num_classes=3, base_channels=4, depth=2,
                                  padding="same", norm="batch").eval(), d / "rgb.pt")
    return d


def _run(capsys, *argv):
    code = main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unet-fast segment: error: "), err
    return lines[0]


def _subprocess(*argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "unet_fast.cli", *map(str, argv)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def _rgb(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("h,w", [(3, 40), (4, 4), (2, 2)])
def test_rgb_png_of_any_shape(models, tmp_path, capsys, h, w):
    # regression: a 3-row RGB PNG gave a 40 x 3 mask; 4x4 / 2x2 ones were read as 4 / 2 channels
    src = _rgb(tmp_path / "a.png", h, w)
    code, _, err = _run(capsys, "segment", src, "-c", models / "rgb.pt", "-o", tmp_path / "m.png")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "m.png")).shape == (h, w)


def test_malicious_checkpoint_never_runs(models, tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"inc.double_conv.0.weight": ShellPayload(marker)}, evil)
    line = _error(capsys, "segment", _rgb(tmp_path / "a.png", 8, 8), "-c", evil,
                  "-o", tmp_path / "m.png")
    assert "refusing to unpickle" in line and "weights_only" not in line
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == ["a.png", "evil.pt"]


def test_one_stderr_line_despite_warnings_and_logging(models, tmp_path):
    # regression: torch warns (2 lines) about a raw pickle, tifffile logs a line for garbage;
    # capsys sees neither, so this runs the real command in a subprocess
    import pickle

    img = _rgb(tmp_path / "a.png", 8, 8)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"inc.double_conv.0.weight": [1.0]}, protocol=4))
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\0garbage")
    for argv, expected in (([img, "-c", raw], "raw.pth' is corrupt"),
                           ([bad_tif, "-c", models / "rgb.pt"], "bad.tif': corrupt")):
        res = _subprocess("segment", *argv, "-o", tmp_path / "m.png", "--device", "cpu")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("unet-fast segment: error: "), res.stderr
        assert expected in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "bad.tif", "raw.pth"]
