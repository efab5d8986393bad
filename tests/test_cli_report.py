"""``unet-fast segment`` reports each file it wrote, one line per output on stdout."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import unet_fast

from .cli_helpers import run_cli


def test_segment_prints_one_line_per_written_output(tmp_path, capsys):
    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=2, base_channels=4, depth=2,
                           padding="same").eval()
    unet_fast.save(model, tmp_path / "model.pt")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (9, 12), dtype=np.uint8)).save(imgs / name)
    out = tmp_path / "masks"
    code, stdout, err = run_cli(capsys, "segment", imgs, "-c", tmp_path / "model.pt",
                                "-o", out, "--device", "cpu")
    assert code == 0, err
    written = sorted(p for p in out.iterdir())
    assert len(written) == 2
    assert stdout.splitlines() == [f"wrote {p}" for p in written]
