"""Masks a person can look at (issue 13): binary 0/255, multi-class palette PNGs that keep the
class indices, raw indices in TIFF/.npy, and milesial's mask_values as its predict.py writes
them (values that no mask file can hold refused)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_fast.image_io import apply_mask_values, write_mask


def _labels(k: int, h: int = 6, w: int = 7) -> torch.Tensor:
    return torch.arange(h * w).reshape(h, w) % k


def test_binary_mask_is_black_and_white(tmp_path):
    lab = _labels(2)
    write_mask(tmp_path / "m.png", lab, 2)
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "L"
    np.testing.assert_array_equal(np.asarray(im), lab.numpy().astype(np.uint8) * 255)
    write_mask(tmp_path / "m.tif", lab, 2)
    write_mask(tmp_path / "m.npy", lab, 2)
    for raw in (tifffile.imread(tmp_path / "m.tif"), np.load(tmp_path / "m.npy")):
        assert raw.dtype == np.uint8
        np.testing.assert_array_equal(raw, lab.numpy())


def test_multiclass_png_is_a_palette_of_the_indices(tmp_path):
    lab = _labels(5)
    write_mask(tmp_path / "m.png", lab, 5)
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), lab.numpy())  # indices kept
    rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {c: tuple(rgb[lab.flatten().numpy() == c][0]) for c in range(5)}
    assert len(set(colours.values())) == 5 and colours[0] == (0, 0, 0)
    assert all(max(colours[c]) >= 100 for c in range(1, 5))  # visible on black
    big = _labels(300, 20, 20)
    write_mask(tmp_path / "b.png", big, 300)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), big.numpy())
    write_mask(tmp_path / "m.tif", lab, 5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif"), lab.numpy())
    many = _labels(256)  # the largest palette: 256 distinct colours
    write_mask(tmp_path / "p.png", many[:16], 256)
    pal = np.asarray(Image.open(tmp_path / "p.png").getpalette()).reshape(-1, 3)
    assert len({tuple(c) for c in pal[:256]}) == 256


def test_mask_values_as_predict_py_writes_them(tmp_path):
    lab = _labels(3)
    write_mask(tmp_path / "g.png", lab, 3, [0, 127, 255])
    g = Image.open(tmp_path / "g.png")
    assert g.mode == "L"
    np.testing.assert_array_equal(np.asarray(g), np.array([0, 127, 255])[lab.numpy()])
    two = _labels(2)
    write_mask(tmp_path / "b.png", two, 2, [0, 1])  # predict.py: a bool image, 1-bit PNG
    b = Image.open(tmp_path / "b.png")
    assert b.mode == "1"
    np.testing.assert_array_equal(np.asarray(b), two.numpy().astype(bool))
    colours = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    write_mask(tmp_path / "c.png", lab, 3, colours)
    c = np.asarray(Image.open(tmp_path / "c.png"))
    np.testing.assert_array_equal(c, np.array(colours, dtype=np.uint8)[lab.numpy()])
    write_mask(tmp_path / "w.png", two, 2, [0, 1000])  # beyond uint8: 16-bit gray
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w.png")),
                                  np.array([0, 1000])[two.numpy()])


@pytest.mark.parametrize("values,msg", [
    ([0, 10**9], r"mask value 1000000000 \(class 1\) is not an integer in 0\.\.65535"),
    ([0.4, 1.6], r"mask value 0\.4 \(class 0\) is not an integer"),
    ([-1, 0], r"mask value -1 \(class 0\)"),
    (["a", "b"], r"mask value 'a' \(class 0\)"),
    ([[0, 0, 0], 5], r"must all be ints or all colours"),
    ([[0, 0, 300], [1, 1, 1]], r"not an integer in 0\.\.255, which a mask colour must be"),
    ([[0, 0], [1, 1]], r"colours of 3 or 4 ints"),
    ("01", r"non-empty list"),
    ([], r"non-empty list"),
])
def test_mask_values_that_no_file_can_hold_are_refused(tmp_path, values, msg):
    with pytest.raises(ValueError, match=msg):
        write_mask(tmp_path / "m.png", _labels(2), 2, values)
    assert list(tmp_path.iterdir()) == []


def test_labels_outside_the_table_or_negative(tmp_path):
    with pytest.raises(ValueError, match=r"label 2 has no entry in the 2 mask values"):
        apply_mask_values(_labels(3), [0, 255])
    with pytest.raises(ValueError, match=r"labels must be >= 0"):
        write_mask(tmp_path / "m.png", -_labels(3), 3)
    assert list(tmp_path.iterdir()) == []
