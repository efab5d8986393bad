"""One pixel limit for every image format, checked from the file's header before decoding:
Pillow's own limit for PNG/JPEG/BMP, the same for TIFF and .npy (which had none), settable
from Python (image_io.MAX_PIXELS) and from the command line (--max-pixels)."""

from __future__ import annotations

import os
import time
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import unet_fast
from unet_fast import image_io
from unet_fast.image_io import ImageError, read_image

from .cli_helpers import run_cli, segment_error
from .helpers import error_reading_fifo


def _deflate_bomb(path, side=20000, rows=250):
    """A ~400 KB deflate TIFF declaring side x side 8-bit pixels (all strips one blob)."""
    blob = zlib.compress(bytes(rows * side), 9)
    tifffile.imwrite(path, (blob for _ in range(side // rows)), shape=(side, side),
                     dtype=np.uint8, compression="zlib", rowsperstrip=rows,
                     photometric="minisblack")
    return path


def _npy_header_only(path, shape, descr="<f4"):
    """A .npy file whose header declares ``shape`` and which holds no pixel data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


def _never_decode(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", refuse)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", refuse)
    monkeypatch.setattr(np.lib.format, "read_array", refuse)


def test_tiff_bomb_refused_from_its_header(tmp_path, monkeypatch):
    # regression: a 419 KB TIFF declaring 20000 x 20000 decoded for 116 s at 8.3 GiB peak
    bomb = _deflate_bomb(tmp_path / "bomb.tif")
    assert bomb.stat().st_size < 500_000
    _never_decode(monkeypatch)
    start = time.monotonic()
    with pytest.raises(ImageError) as e:
        read_image(bomb)
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert "\n" not in msg and "bomb.tif" in msg
    assert "400,000,000 pixels (20000 x 20000)" in msg and "178,956,970" in msg
    assert "unet_fast.image_io.MAX_PIXELS" in msg


def test_npy_declared_shape_refused_from_its_header(tmp_path, monkeypatch):
    big = _npy_header_only(tmp_path / "big.npy", (3, 20000, 20000))
    _never_decode(monkeypatch)
    with pytest.raises(ImageError, match=r"big.npy' has 400,000,000 pixels \(20000 x 20000\), "
                                         r"more than the limit of 178,956,970"):
        read_image(big)
    stack = _npy_header_only(tmp_path / "stack.npy", (1000, 500, 500))  # not colours: counted
    with pytest.raises(ImageError, match=r"250,000,000 pixels \(1000 x 500 x 500\)"):
        read_image(stack)


def test_npy_shorter_than_its_header_says(tmp_path):
    short = _npy_header_only(tmp_path / "short.npy", (100, 100))
    with pytest.raises(ImageError, match=r"short.npy' is truncated: its header declares 40000 "
                                         r"bytes of pixels, the file holds 0"):
        read_image(short)


def test_one_limit_for_every_format(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.save(tmp_path / "a.npy", a)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.save(tmp_path / "rgb.npy", rgb)
    names = ("a.png", "a.tif", "a.npy", "rgb.tif", "rgb.npy")
    monkeypatch.setattr(image_io, "MAX_PIXELS", 13 * 17)  # colour channels are not counted
    for name in names:
        assert read_image(tmp_path / name).shape[1:] == (13, 17)
    monkeypatch.setattr(image_io, "MAX_PIXELS", 13 * 17 - 1)
    for name in names:
        with pytest.raises(ImageError, match=r"has 221 pixels \(13 x 17\), more than the limit "
                                             r"of 220"):
            read_image(tmp_path / name)
    # the argument wins over the setting; None lifts the limit
    assert read_image(tmp_path / "a.tif", max_pixels=None).shape == (1, 13, 17)
    assert read_image(tmp_path / "a.tif", max_pixels=221).shape == (1, 13, 17)


def test_no_limit_lifts_pillows_own(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((13, 17), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow refuses above 100
    monkeypatch.setattr(image_io, "MAX_PIXELS", None)
    assert read_image(tmp_path / "a.png").shape == (1, 13, 17)
    assert Image.MAX_IMAGE_PIXELS == 50  # Pillow's setting is left as it was


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_image_refused(tmp_path):
    # regression: reading a named pipe waited for a writer forever
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = [error_reading_fifo(fifo, read_image, "reading")]
    assert isinstance(result[0], ImageError)
    assert "pipe.png' is a named pipe, not a regular file" in str(result[0])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    torch.manual_seed(0)
    unet_fast.save(unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=1,
                                  padding="same").eval(), d / "m.pt")
    return d / "m.pt"


def test_cli_flag(model_file, tmp_path, capsys, monkeypatch):
    bomb = _deflate_bomb(tmp_path / "bomb.tif")
    _never_decode(monkeypatch)
    start = time.monotonic()
    line = segment_error(capsys, "segment", bomb, "-c", model_file, "-o", tmp_path / "out")
    assert time.monotonic() - start < 10
    assert "400,000,000 pixels" in line and "limit of 178,956,970" in line
    assert "--max-pixels" in line and "MAX_PIXELS" not in line
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.zeros((10, 12), np.uint8))
    line = segment_error(capsys, "segment", img, "-c", model_file, "-o", tmp_path / "o.png",
                         "--max-pixels", "100")
    assert "120 pixels (10 x 12), more than the limit of 100" in line
    for limit in ("120", "0"):  # 0: no limit
        code, _, err = run_cli(capsys, "segment", img, "-c", model_file, "-o",
                               tmp_path / "o.png", "--max-pixels", limit, "--device", "cpu")
        assert code == 0, err
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "segment", img, "-c", model_file, "--max-pixels", "-1")
    assert e.value.code == 2
    assert "expected a non-negative integer" in capsys.readouterr().err
