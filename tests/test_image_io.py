"""Image reading (formats, layouts, normalisation) and atomic writing of masks/probs/overlays."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_fast.image_io import (
    ImageError,
    apply_mask_values,
    match_channels,
    read_image,
    write_mask,
    write_overlay,
    write_probs,
)


def test_png_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = read_image(tmp_path / "rgb.png")
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    torch.testing.assert_close(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)

    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").shape == (1, 5, 7)

    rgba = np.concatenate([rgb, np.full((5, 7, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    x4 = read_image(tmp_path / "rgba.png")
    assert x4.shape == (4, 5, 7)
    torch.testing.assert_close(match_channels(x4, 3), x)  # alpha dropped

    g16 = np.array([[0, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    torch.testing.assert_close(read_image(tmp_path / "g16.png"),
                               torch.tensor([[[0.0, 1.0, 1000 / 65535]]]))

    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (3, 5, 7)


@pytest.mark.parametrize("shape", [(3, 50), (4, 4), (2, 2), (5, 3)])
def test_pillow_images_are_always_channels_last(tmp_path, shape):
    # regression: the .npy layout guess was applied to Pillow arrays, so a 3-row RGB PNG came out
    # 50 x 3 and a 4x4 / 2x2 RGB PNG as 4 / 2 channels
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    torch.testing.assert_close(read_image(tmp_path / "rgb.png"),
                               torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    la = np.random.default_rng(1).integers(0, 256, (*shape, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    torch.testing.assert_close(read_image(tmp_path / "la.png"),
                               torch.from_numpy(la).permute(2, 0, 1).float() / 255)


def _png16(path, a, colour_type):
    """A 16-bit PNG written by hand (Pillow cannot write colour ones)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w = a.shape[:2]
    rows = b"".join(b"\0" + a[i].astype(">u2").tobytes() for i in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_colour_png_is_refused_not_truncated(tmp_path):
    # regression: Pillow reads 16-bit colour PNGs at 8 bits; 1000/65535 silently became 3/255
    rgb = np.array([[[1000, 2000, 65535], [0, 5, 7]]], dtype=np.uint16)
    _png16(tmp_path / "rgb16.png", rgb, 2)
    with pytest.raises(ImageError, match=r"rgb16.png' is a 16-bit colour PNG.*16-bit TIFF"):
        read_image(tmp_path / "rgb16.png")
    _png16(tmp_path / "la16.png", rgb[..., :2], 4)
    with pytest.raises(ImageError, match=r"la16.png' is a 16-bit colour PNG"):
        read_image(tmp_path / "la16.png")
    _png16(tmp_path / "g16.png", rgb[..., 0], 0)  # 16-bit gray: read at full depth
    torch.testing.assert_close(read_image(tmp_path / "g16.png"),
                               torch.tensor([[[1000 / 65535, 0.0]]]))


def test_tiff_layout_comes_from_its_axes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")  # axes YXS: 3 rows
    torch.testing.assert_close(read_image(tmp_path / "rgb.tif"),
                               torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    torch.testing.assert_close(read_image(tmp_path / "planar.tif"),  # axes SYX: 3 channels
                               torch.from_numpy(rgb).float() / 255)
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 3, 4, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageError, match=r"4d.tif' has 4 axes \(QYXS"):
        read_image(tmp_path / "4d.tif")


def test_tiff_and_npy(tmp_path):
    a16 = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    tifffile.imwrite(tmp_path / "a.tif", a16)
    torch.testing.assert_close(read_image(tmp_path / "a.tif"),
                               torch.from_numpy(a16[None].astype(np.float32) / 65535))
    f = np.random.default_rng(0).normal(size=(6, 8, 3)).astype(np.float32) * 100
    tifffile.imwrite(tmp_path / "f.tiff", f, photometric="rgb")
    got = read_image(tmp_path / "f.tiff")  # channels-last, float kept as-is (no rescaling)
    torch.testing.assert_close(got, torch.from_numpy(f).permute(2, 0, 1))
    u8 = np.random.default_rng(1).integers(0, 256, (2, 9, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "u8.tif", u8, photometric="minisblack", planarconfig="separate")
    torch.testing.assert_close(read_image(tmp_path / "u8.tif"), torch.from_numpy(u8) / 255.0)
    chw = np.random.default_rng(2).random((2, 10, 11)).astype(np.float64)
    np.save(tmp_path / "x.npy", chw)
    got = read_image(tmp_path / "x.npy")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.from_numpy(chw).float())


def test_read_errors(tmp_path):
    with pytest.raises(ImageError, match=r"nope.png' does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match=r"unsupported extension"):
        read_image(tmp_path / "x.gif")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match=r"bad.png': corrupt or not a valid PNG") as e:
        read_image(tmp_path / "bad.png")
    assert "\n" not in str(e.value)
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(ImageError, match=r"bad.tif': corrupt"):
        read_image(tmp_path / "bad.tif")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match=r"cannot read"):
        read_image(tmp_path / "obj.npy")
    np.save(tmp_path / "i32.npy", np.zeros((4, 4), np.int32))
    with pytest.raises(ImageError, match=r"pixel type int32"):
        read_image(tmp_path / "i32.npy")
    np.save(tmp_path / "4d.npy", np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ImageError, match=r"expected 2-D"):
        read_image(tmp_path / "4d.npy")
    with pytest.raises(ImageError, match=r"has 3 channel.*expects 1"):
        match_channels(torch.zeros(3, 2, 2), 1)


def test_write_mask_dtypes(tmp_path):
    lab = torch.tensor([[0, 1], [2, 1]])
    write_mask(tmp_path / "m.png", lab, num_classes=3)
    a = np.asarray(Image.open(tmp_path / "m.png"))
    assert a.dtype == np.uint8 and a.tolist() == [[0, 1], [2, 1]]
    big = torch.tensor([[0, 300]])
    write_mask(tmp_path / "b.png", big, num_classes=301)
    back = np.asarray(Image.open(tmp_path / "b.png"))
    assert back.tolist() == [[0, 300]]
    write_mask(tmp_path / "b.tif", big, num_classes=301)
    assert tifffile.imread(tmp_path / "b.tif").dtype == np.uint16
    write_mask(tmp_path / "m.npy", lab, num_classes=3)
    assert np.load(tmp_path / "m.npy").tolist() == [[0, 1], [2, 1]]
    colours = apply_mask_values(lab, [[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    write_mask(tmp_path / "c.png", colours, num_classes=3)
    assert np.asarray(Image.open(tmp_path / "c.png"))[1, 0].tolist() == [0, 0, 255]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "b.png", "b.tif", "c.png", "m.npy", "m.png"]


def test_write_probs_and_overlay(tmp_path):
    p = torch.rand(3, 4, 5)
    write_probs(tmp_path / "p.npy", p)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), p.numpy())
    write_probs(tmp_path / "p.tif", p)
    t = tifffile.imread(tmp_path / "p.tif")
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t, p.numpy())
    with pytest.raises(ImageError, match=r"use .npy or .tif"):
        write_probs(tmp_path / "p.png", p)
    img = torch.zeros(1, 4, 5)
    lab = torch.zeros(4, 5, dtype=torch.long)
    lab[0, 0] = 1
    write_overlay(tmp_path / "o.png", img, lab)
    o = np.asarray(Image.open(tmp_path / "o.png"))
    assert o.shape == (4, 5, 3) and o.dtype == np.uint8
    assert o[0, 0].tolist() != [0, 0, 0] and o[1, 1].tolist() == [0, 0, 0]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(self, fp, *a, **k):
        open(fp, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match=r"disk full"):
        write_mask(tmp_path / "m.png", torch.zeros(2, 2, dtype=torch.long), 2)
    assert list(tmp_path.iterdir()) == []
