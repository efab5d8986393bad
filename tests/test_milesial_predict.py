"""``unet-fast segment`` on a milesial/Pytorch-UNet checkpoint writes the mask its predict.py
writes at scale 1 (issue 13: it used to differ near the borders of images whose sides are not
multiples of 16)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unet_fast.reference import he_init_

from .cli_helpers import run_cli, segment_error
from .milesial_arch import MilesialUNet, randomise_


def predict_py(net: torch.nn.Module, path, mask_values) -> Image.Image:
    """What milesial's predict.py does at ``--scale 1``, from its documented behaviour: the image
    as CHW floats (divided by 255 when any value exceeds 1), one pass of the network, argmax over
    the classes (sigmoid > 0.5 for one class), then each class ``i`` painted as
    ``mask_values[i]`` in a uint8 image (a bool one when mask_values is [0, 1], RGB for
    colours)."""
    pil = Image.open(path)
    w, h = pil.size
    img = np.asarray(pil.resize((w, h), resample=Image.BICUBIC))
    img = img[np.newaxis] if img.ndim == 2 else img.transpose(2, 0, 1)
    if (img > 1).any():
        img = img / 255.0
    x = torch.from_numpy(img)[None].to(torch.float32)
    with torch.no_grad():
        out = F.interpolate(net(x), (h, w), mode="bilinear")
        mask = out.argmax(1) if out.shape[1] > 1 else torch.sigmoid(out) > 0.5
    mask = mask[0].long().squeeze().numpy()
    if isinstance(mask_values[0], list):
        pixels = np.zeros((h, w, len(mask_values[0])), dtype=np.uint8)
    elif mask_values == [0, 1]:
        pixels = np.zeros((h, w), dtype=bool)
    else:
        pixels = np.zeros((h, w), dtype=np.uint8)
    for i, v in enumerate(mask_values):
        pixels[mask == i] = v
    return Image.fromarray(pixels)


def _net(classes: int, bilinear: bool, seed: int, image: np.ndarray) -> MilesialUNet:
    """A random milesial net with He-normal convs (so logits are not all near 0) and head
    biases shifted so every class wins on a fair share of ``image``."""
    torch.manual_seed(seed)
    net = MilesialUNet(3, classes, bilinear, width=4)
    he_init_(net)
    net = randomise_(net, seed=seed)
    x = torch.from_numpy(image.transpose(2, 0, 1) / 255.0)[None].float()
    with torch.no_grad():
        y = net(x)[0] - net.outc.conv.bias[:, None, None]
        if classes == 1:
            net.outc.conv.bias.copy_(-y.flatten().median())
            return net
        bias = torch.zeros(classes)
        for _ in range(60):  # nudge each class towards a 1/K share
            share = torch.bincount((y + bias[:, None, None]).argmax(0).flatten(),
                                   minlength=classes) / y[0].numel()
            bias -= 0.5 * y.std() * (share - 1 / classes)
        net.outc.conv.bias.copy_(bias)
    return net


def _near_ties(net: MilesialUNet, path) -> np.ndarray:
    """Pixels whose decision (top-two logit gap, or logit vs 0) is within 1e-5 of the largest
    logit, in float64."""
    x = torch.from_numpy(np.asarray(Image.open(path)).transpose(2, 0, 1) / 255.0)[None]
    with torch.no_grad():
        y = torch.nn.Module.double(net)(x)[0]
    torch.nn.Module.float(net)
    top = y.topk(2, 0).values if y.shape[0] > 1 else torch.stack([y[0], torch.zeros_like(y[0])])
    return ((top[0] - top[1]).abs() < 1e-5 * y.abs().max()).numpy()


CASES = [
    # (H, W, bilinear, classes, mask_values)
    (300, 451, False, 2, [0, 255]),
    (300, 451, True, 1, [0, 1]),
    (400, 600, False, 1, [0, 255]),
    (300, 451, True, 3, [[0, 0, 0], [255, 0, 0], [0, 0, 255]]),
    (157, 203, False, 3, [0, 100, 200]),
]


@pytest.mark.parametrize("h,w,bilinear,classes,mask_values", CASES)
def test_cli_writes_predict_py_mask(tmp_path, capsys, h, w, bilinear, classes, mask_values):
    rng = np.random.default_rng(h + w + classes)
    coarse = rng.random((h // 20 + 2, w // 20 + 2, 3))
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (w, h), Image.BICUBIC))
    image = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    src = tmp_path / "img.png"
    Image.fromarray(image).save(src)
    net = _net(classes, bilinear, h + w, image)
    state = net.state_dict()
    state["mask_values"] = mask_values  # as its train.py saves it
    torch.save(state, tmp_path / "checkpoint_epoch1.pth")

    out = tmp_path / "mask.png"
    code, _, err = run_cli(capsys, "segment", src, "-c", tmp_path / "checkpoint_epoch1.pth",
                           "-o", out)
    assert code == 0, err
    predict_py(net, src, mask_values).save(tmp_path / "want.png")
    got, want = Image.open(out), Image.open(tmp_path / "want.png")
    assert got.mode == want.mode
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    # two fp32 implementations (milesial's layers, unet_fast's folded BatchNorm) differ by ~1e-6,
    # so a pixel whose top two logits are closer than that may go either way: only those are
    # excused, and they must be rare
    tie = _near_ties(net, src)
    wrong = (got != want).reshape(h, w, -1).any(-1)
    assert not (wrong & ~tie).any(), f"{(wrong & ~tie).mean():.3%} of the pixels differ"
    assert tie.mean() < 1e-3, f"{tie.mean():.3%} near-ties"
    assert len(np.unique(want.reshape(-1, *want.shape[2:]), axis=0)) == max(classes, 2)


@pytest.mark.parametrize("values,msg", [
    # refused when the checkpoint is read (unet_fast.checkpoint), before any image is run
    ([0, 10**9], r"invalid mask_values \(1000000000 is outside 0\.\.65535\)"),
    ([0.4, 1.6], r"invalid mask_values \(0\.4 is not an integer\)"),
    ([255], r"invalid mask_values \(1 value\(s\) for 2 classes\)"),
])
def test_cli_refuses_mask_values_before_running(tmp_path, capsys, values, msg):
    net = MilesialUNet(3, 1, True, width=4)
    state = net.state_dict()
    state["mask_values"] = values
    torch.save(state, tmp_path / "m.pth")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    line = segment_error(capsys, "segment", tmp_path / "a.png", "-c", tmp_path / "m.pth",
                         "-o", tmp_path / "out" / "m.png")
    assert re.search(rf"checkpoint '.*m\.pth' has {msg}", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.pth"]
