"""unet_fast.save / unet_fast.load: round trip, safety and one-line errors naming the file."""

from __future__ import annotations

import os

import pytest
import torch

import unet_fast
from unet_fast import reference
from unet_fast.checkpoint import CheckpointError, read


def _model(**kw):
    cfg = dict(in_channels=2, num_classes=3, base_channels=4, depth=2, padding="same",
               norm="batch")
    cfg.update(kw)
    m = unet_fast.UNet(**cfg)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2)
    return m.eval()


def test_round_trip(tmp_path):
    m = _model()
    path = tmp_path / "m.pt"
    unet_fast.save(m, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left
    back = unet_fast.load(path)
    assert isinstance(back, unet_fast.UNet) and not back.training
    assert back.config == m.config
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(1, 2, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "unet_fast" and raw["version"] == 1
    assert raw["config"] == m.config.to_dict()


def test_reference_model_and_overwrite(tmp_path):
    path = tmp_path / "m.pt"
    unet_fast.save(_model(), path)
    ref = reference.UNet(in_channels=1, num_classes=2, base_channels=2, depth=1)
    unet_fast.save(ref, path)  # overwrites atomically
    assert unet_fast.load(path).config == ref.config


def test_save_rejects_other_modules(tmp_path):
    with pytest.raises(TypeError, match=r"expects a unet_fast.UNet"):
        unet_fast.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    unet_fast.save(_model(), path)
    before = path.read_bytes()

    def boom(obj, f):
        open(f, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match=r"disk full"):
        unet_fast.save(_model(num_classes=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*nope.pt' does not exist"):
        unet_fast.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=r"is a folder"):
        unet_fast.load(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad.pt' is corrupt") as e:
        unet_fast.load(bad)
    assert "\n" not in str(e.value)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(CheckpointError, match=r"image.png' is corrupt or not a PyTorch weights"):
        unet_fast.load(png)
    good = tmp_path / "good.pt"
    unet_fast.save(_model(), good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"trunc.pt' is corrupt"):
        unet_fast.load(trunc)
    # regression: cut in the middle, torch raises OSError(EINVAL), shown as "Invalid argument"
    data = good.read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half.pt' is corrupt or truncated"):
        unet_fast.load(half)


def test_never_unpickles_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "unet_fast", "obj": reference.UNet(depth=1, base_channels=2)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle unet_fast.reference.UNet "
                                              r"from checkpoint .*evil.pt'"):
        read(path)


class ShellPayload:
    """Unpickling this runs a shell command (a malicious checkpoint)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_plainly(tmp_path):
    # regression: torch 2.13 words it "unsupported GLOBAL posix.system whose module posix is
    # blocked", which was reported as "corrupt" with torch's advice to use weights_only=False
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": ShellPayload(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        unet_fast.load(path)
    msg = str(e.value)
    assert not marker.exists()
    assert msg.startswith(f"refusing to unpickle {os.system.__module__}.system from checkpoint")
    assert "not a unet_fast/PyTorch weights file" in msg
    assert "weights_only" not in msg and "corrupt" not in msg and "\n" not in msg


def test_foreign_files(tmp_path):
    cases = {
        "list.pt": ([1, 2], "holds a list"),
        "resnet.pt": ({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)},
                      "another architecture.*conv1.weight"),
        "bare.pt": (_model().state_dict(), "bare unet_fast state_dict"),
        "milesial.pt": ({"inc.double_conv.0.weight": torch.zeros(1)}, "from_milesial"),
        "future.pt": ({"format": "unet_fast", "version": 99}, "version 99"),
        "badcfg.pt": ({"format": "unet_fast", "version": 1, "config": {"depth": 0},
                       "state_dict": {}}, "invalid config: depth"),
    }
    for name, (obj, pattern) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=pattern):
            unet_fast.load(tmp_path / name)


def test_missing_unexpected_and_wrong_shapes(tmp_path):
    m = _model()
    raw = {"format": "unet_fast", "version": 1, "config": m.config.to_dict(),
           "state_dict": m.state_dict()}
    sd = dict(raw["state_dict"])
    del sd["head.weight"], sd["encoder.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(dict(raw, state_dict=sd), tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match=r"missing keys encoder.0.conv1.weight, head.weight; "
                                              r"unexpected keys extra.weight"):
        unet_fast.load(tmp_path / "k.pt")
    sd = dict(raw["state_dict"], **{"head.bias": torch.zeros(7)})
    torch.save(dict(raw, state_dict=sd), tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"'head.bias' has shape \(7,\)"):
        unet_fast.load(tmp_path / "s.pt")
