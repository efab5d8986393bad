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
from unet_fast.cli import build_parser, main

from .cli_helpers import run_cli as _run
from .cli_helpers import segment_error as _error
from .test_checkpoint import ShellPayload

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    unet_fast.save(unet_fast.UNet(in_channels=3, num_classes=3, base_channels=4, depth=2,
                                  padding="same", norm="batch").eval(), d / "rgb.pt")
    unet_fast.save(unet_fast.UNet(in_channels=1, num_classes=2, base_channels=4, depth=2,
                                  padding="same").eval(), d / "gray.pt")
    return d


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


def test_folder_rerun_skips_earlier_outputs(models, tmp_path, capsys):
    # regression: a second run segmented the first run's a_mask.png into a_mask_mask.png
    _rgb(tmp_path / "a.png", 8, 9)
    for _ in range(2):
        code, _, err = _run(capsys, "segment", tmp_path, "-c", models / "rgb.pt")
        assert code == 0, err
    code, _, err = _run(capsys, "segment", tmp_path, "-c", models / "rgb.pt", "--output", "probs")
    assert code == 0, err
    code, _, err = _run(capsys, "segment", tmp_path, "-c", models / "rgb.pt", "--output", "overlay")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_mask.png", "a_overlay.png", "a_probs.npy"]
    only_outputs = tmp_path / "outs"
    only_outputs.mkdir()
    (tmp_path / "a_mask.png").rename(only_outputs / "a_mask.png")
    assert "skipped 1 output of unet-fast" in _error(capsys, "segment", only_outputs, "-c",
                                                     models / "rgb.pt")
    # named explicitly, such a file is still an input (a 3-class mask is a palette PNG: RGB)
    code, _, err = _run(capsys, "segment", only_outputs / "a_mask.png", "-c", models / "rgb.pt")
    assert code == 0, err


def test_every_input_is_checked_before_any_output(models, tmp_path, capsys):
    # regression: a.png was segmented and written, then the run stopped at the bad image
    good = _rgb(tmp_path / "a.png", 8, 8)
    truncated = tmp_path / "b.png"
    truncated.write_bytes(_rgb(tmp_path / "full.png", 40, 40).read_bytes()[:300])
    gray = tmp_path / "c.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gray)
    out = tmp_path / "out"
    line = _error(capsys, "segment", good, truncated, "-c", models / "rgb.pt", "-o", out)
    assert "b.png': corrupt or not a valid PNG" in line
    line = _error(capsys, "segment", good, gray, "-c", models / "rgb.pt", "-o", out)
    assert "c.png' has 1 channel(s) but the model expects 3; convert it to RGB" in line
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "c.png", "full.png"]


def test_failed_run_creates_no_output_folder(models, tmp_path, capsys):
    # regression: the output folder was created before the checkpoint was even read
    img = _rgb(tmp_path / "a.png", 8, 8)
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert "is corrupt" in _error(capsys, "segment", img, "-c", corrupt, "-o", tmp_path / "x" / "y")
    assert "CUDA" in _error(capsys, "segment", img, "-c", models / "rgb.pt", "-o",
                            tmp_path / "x" / "y", "--device", "cuda:7")
    assert sorted(os.listdir(tmp_path)) == ["a.png", "bad.pt"]


def test_write_failure_removes_the_folder_it_created(models, tmp_path, capsys, monkeypatch):
    def deny(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", deny)
    img = _rgb(tmp_path / "a.png", 8, 8)
    assert "cannot write" in _error(capsys, "segment", img, "-c", models / "rgb.pt", "-o",
                                    tmp_path / "x" / "y")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_unreadable_input(models, tmp_path, capsys, monkeypatch):
    # root ignores permission bits: make Pillow's open fail the way it would
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    img = _rgb(tmp_path / "a.png", 8, 8)
    monkeypatch.setattr(Image, "open", deny)
    line = _error(capsys, "segment", img, "-c", models / "rgb.pt", "-o", tmp_path / "out")
    assert line.endswith("cannot read image '" + str(img) + "': permission denied")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_command_line_hints(models, tmp_path, capsys):
    img = _rgb(tmp_path / "a.png", 8, 8)
    valid = tmp_path / "valid.pt"
    unet_fast.save(unet_fast.UNet(in_channels=3, num_classes=2, base_channels=2, depth=2,
                                  padding="valid").eval(), valid)
    line = _error(capsys, "segment", img, "-c", valid, "-o", tmp_path / "m.png", "--tile-size", "30")
    assert "--tile-size 30 is not an input window" in line and "nearest: 44" in line
    assert "segment()" not in line
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((3, 8, 8), np.nan, np.float32))
    line = _error(capsys, "segment", nan, "-c", models / "rgb.pt", "-o", tmp_path / "m.png")
    assert "contains NaN or Inf pixels" in line and "check_finite" not in line
    huge = tmp_path / "huge.npy"
    np.save(huge, np.full((3, 8, 8), 1e6, np.float32))
    line = _error(capsys, "segment", huge, "-c", models / "rgb.pt", "-o", tmp_path / "m.png",
                  "--dtype", "float16")
    assert "beyond the range of --dtype float16; use --dtype float32" in line
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array at all")
    line = _error(capsys, "segment", garbage, "-c", models / "rgb.pt", "-o", tmp_path / "m.png")
    assert line.endswith("garbage.npy': corrupt or not a numeric .npy array")
    line = _error(capsys, "segment", img, "-c", models / "rgb.pt", "-o", tmp_path / "m.png",
                  "--format", "tif")
    assert "--out" in line and "--format tif disagree" in line
    assert sorted(os.listdir(tmp_path)) == ["a.png", "garbage.npy", "huge.npy", "nan.npy",
                                            "valid.pt"]


def test_help_explains_inputs(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "network's input window" in text and "*_mask.*, *_probs.*, *_overlay.*" in text
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        assert action.help, action.dest
    text = " ".join(train.format_help().split())
    for shown in ("--val-fraction F fraction of the images held out", "(default: 0.2)",
                  "(default: 0.99)", "(default: sgd)", "(default: 10)", "(default: balanced)"):
        assert shown in text, shown
