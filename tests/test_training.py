"""Loss, crops, metrics, synthetic data and a tiny end-to-end training (API, resume, CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unet_fast
from unet_fast import reference
from unet_fast.cli import main as cli_main
from unet_fast.training import Trainer, TrainSettings, train
from unet_fast.training.checkpoint import load_model, read_checkpoint
from unet_fast.training.data import IGNORE, TileSampler, load_folder, make_sample, read_array
from unet_fast.training.loss import center_crop, weighted_cross_entropy
from unet_fast.training.metrics import iou, separated_fraction, touching_pairs
from unet_fast.training.synthetic import touching_cells, write_dataset
from unet_fast.training.trainer import predict_mask

TINY = dict(base_channels=2, depth=2, dropout=0.0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cells"), 3, 48, seed=0, n_cells=6,
                         radius=(4.0, 7.0))


# ---- loss -------------------------------------------------------------------------------------

def test_center_crop():
    x = torch.arange(7 * 8).view(7, 8)
    assert torch.equal(center_crop(x, 3, 4), x[2:5, 2:6])
    with pytest.raises(ValueError, match="larger"):
        center_crop(x, 9, 4)


def test_weighted_cross_entropy_definition():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 8, 9))
    weight = torch.rand(2, 8, 9, dtype=torch.float64)
    t, w = target[:, 2:6, 2:7], weight[:, 2:6, 2:7]
    logp = torch.log_softmax(logits, 1).gather(1, t[:, None])[:, 0]
    expect = (-(w * logp)).mean()
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weight).double(), expect)
    torch.testing.assert_close(weighted_cross_entropy(logits, target).double(),
                               F.cross_entropy(logits, t))
    ignored = target.clone()
    ignored[:, 2:4] = IGNORE
    keep = ignored[:, 2:6, 2:7] != IGNORE
    expect = (-(w * logp))[keep].sum() / keep.sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, ignored, weight).double(), expect)


# ---- data, crops, metrics ----------------------------------------------------------------------

def test_synthetic_cells_touch_and_are_reproducible():
    img, lab = touching_cells(64, n_cells=10, seed=3)
    img2, lab2 = touching_cells(64, n_cells=10, seed=3)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    assert img.dtype == np.float32 and lab.dtype == np.int32
    ids = np.unique(lab)
    assert np.array_equal(ids, np.arange(len(ids)))  # consecutive
    assert len(touching_pairs(lab)) >= 1
    assert separated_fraction(lab > 0, lab)[0] == 1.0  # the labels' own gaps separate them
    merged = lab > 0
    merged[:, :] = merged | (np.roll(lab, 1, 0) > 0) | (np.roll(lab, 1, 1) > 0)
    assert separated_fraction(merged, lab)[0] < 1.0


def test_iou():
    a = np.array([[1, 1, 0, 0]])
    b = np.array([[1, 0, 1, 0]])
    assert iou(a, b) == pytest.approx(1 / 3) and iou(a * 0, b * 0) == 1.0


def test_tile_sampler_windows():
    img, lab = touching_cells(40, n_cells=5, seed=1)
    s = make_sample("a", img, lab)
    ts = TileSampler([s], 68, depth=2, padding="valid")  # margin 20, output 28
    g = torch.Generator().manual_seed(0)
    x, t, w = ts.sample(3, g)
    assert x.shape == (3, 1, 68, 68) and t.shape == w.shape == (3, 68, 68)
    # the output window is a crop of the real image's labels
    found = [any(torch.equal(center_crop(t[i], 28, 28), s.target[y : y + 28, x0 : x0 + 28])
                 for y in range(13) for x0 in range(13)) for i in range(3)]
    assert all(found)
    # an image smaller than the output window: the missing labels are ignored
    small = make_sample("b", img[:20, :25], lab[:20, :25])
    _, t, _ = TileSampler([small], 68, 2, "valid").sample(1, g)
    out = center_crop(t[0], 28, 28)
    assert (out[20:] == IGNORE).all() and (out[:, 25:] == IGNORE).all()
    assert (out[:20, :25] >= 0).all()


def test_folder_reading_and_errors(folder, tmp_path):
    samples = load_folder(folder)
    assert [s.name for s in samples] == ["000", "001", "002"]
    s = samples[0]
    assert s.image.shape == (1, 48, 48) and s.target.max() == 1 and s.weights.max() > 1
    with pytest.raises(ValueError, match="images/ and masks/"):
        load_folder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "images" / "x.npy", np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"no mask for image x\.npy"):
        load_folder(tmp_path)
    np.save(tmp_path / "masks" / "x_mask.npy", np.full((8, 8), 3))
    with pytest.raises(ValueError, match="num_classes is 2"):
        load_folder(tmp_path, mask_type="class")


def test_png_and_tiff(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    tifffile = pytest.importorskip("tifffile")
    img = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    Image.fromarray(img).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", img.astype(np.uint16))
    assert np.array_equal(read_array(tmp_path / "a.png"), img)
    assert np.array_equal(read_array(tmp_path / "a.tif"), img)
    with pytest.raises(ValueError, match="unsupported file type"):
        read_array(tmp_path / "a.gif")


def test_folder_rgb_png_with_few_rows(tmp_path):
    # regression: the .npy channel guess took a 4 x 6 RGB PNG for 4 channels of 6 x 3
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    np.save(tmp_path / "masks" / "a.npy", np.ones((4, 6), np.int64))
    (s,) = load_folder(tmp_path)
    assert torch.equal(s.image, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_training_sees_images_as_the_cli_does(tmp_path, dtype, scale):
    """Regression: training once z-scored each image while `unet-fast segment` divides by the
    integer range, so a trained checkpoint saw other input scales at inference."""
    from PIL import Image

    from unet_fast.image_io import read_image

    rgb = (np.random.default_rng(0).random((9, 7, 3)) * scale).astype(dtype)
    path = tmp_path / "img.npy"
    np.save(path, rgb)
    mask = np.zeros((9, 7), dtype=np.int64)
    sample = make_sample("img", read_array(path), mask)
    assert torch.equal(sample.image, read_image(path))
    assert torch.allclose(sample.image, torch.from_numpy(rgb.astype(np.float32) / scale).permute(2, 0, 1))
    if dtype == np.uint8:
        Image.fromarray(rgb).save(tmp_path / "img.png")
        assert torch.equal(make_sample("img", read_array(tmp_path / "img.png"), mask).image,
                           read_image(tmp_path / "img.png"))


# ---- end to end ---------------------------------------------------------------------------------

def test_train_resume_equals_straight_run(folder, tmp_path):
    kw = dict(TINY, steps_per_epoch=1, optimizer="sgd", lr=0.01, dropout=0.5)
    torch.manual_seed(1)  # dropout's draws must continue across the resume too
    straight = train(folder, tmp_path / "a", epochs=2, **kw)
    torch.manual_seed(1)
    first = train(folder, tmp_path / "b", epochs=1, **kw)
    torch.manual_seed(2)
    assert len(first.history) == 1
    resumed = train(folder, tmp_path / "c", resume=tmp_path / "b" / "last.pt", epochs=2,
                    progress=False, device="cpu")
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert straight.history == resumed.history
    assert all(0.0 <= h["val_iou"] <= 1.0 for h in straight.history)
    ckpt = read_checkpoint(tmp_path / "a" / "last.pt")  # weights_only=True load
    assert ckpt["config"] == straight.model.config.to_dict()
    assert (tmp_path / "a" / "best.pt").is_file()
    loaded = unet_fast.load(tmp_path / "a" / "last.pt")  # the project's loader reads it too
    assert all(torch.equal(v, loaded.state_dict()[k])
               for k, v in straight.model.state_dict().items())


def test_training_reduces_loss_and_fast_model_agrees(folder):
    samples = load_folder(folder)
    torch.manual_seed(0)
    model = reference.UNet(base_channels=4, depth=2)
    st = TrainSettings(epochs=1, steps_per_epoch=12, optimizer="adam", lr=3e-3, flips=False,
                       elastic_sigma=0.0, tile=68)
    tr = Trainer(model, samples, None, st, progress=False, device="cpu")
    before = [tr.step() for _ in range(2)]
    tr.fit(1)
    after = [tr.step() for _ in range(4)]
    assert np.mean(after) < np.mean(before)
    fast = unet_fast.UNet.from_reference(model).eval()
    for s in samples:
        a = predict_mask(model.eval(), s.image)
        b = predict_mask(fast, s.image)
        assert a.shape == (48, 48) and (a == b).mean() >= 0.999


def test_cli_train(folder, tmp_path, capsys):
    out = tmp_path / "ck"
    rc = cli_main(["train", str(folder), "-o", str(out), "--base-channels", "2", "--depth", "2",
                   "--epochs", "1", "--steps-per-epoch", "2", "--optimizer", "adam", "-q",
                   "--device", "cpu", "--class-weights", "1,2"])
    assert rc == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    model = load_model(out / "last.pt", unet_fast.UNet)
    assert model.config.base_channels == 2 and model.config.depth == 2
    rc = cli_main(["train", str(folder), "-o", str(out), "--resume", str(out / "last.pt"),
                   "--epochs", "2", "-q", "--device", "cpu"])
    assert rc == 0 and len(read_checkpoint(out / "last.pt")["trainer"]["history"]) == 2


@pytest.mark.parametrize("extra, msg", [
    (["--tile", "50"], "tile 50 is invalid"),
    (["--device", "nonsense"], "unknown --device"),
    (["--mask-type", "class", "--num-classes", "1"], "num_classes is 1"),
])
def test_cli_train_errors(folder, tmp_path, capsys, extra, msg):
    rc = cli_main(["train", str(folder), "-o", str(tmp_path), "--depth", "2",
                   "--base-channels", "2", "-q", *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_class_masks_and_same_padding(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        mask = np.zeros((30, 37), np.uint8)
        mask[5:15, 5:15], mask[18:26, 20:33] = 1, 2
        np.save(tmp_path / "images" / f"{i}.npy", mask + 0.3 * rng.standard_normal(mask.shape))
        np.save(tmp_path / "masks" / f"{i}.npy", mask)
    tr = train(tmp_path, tmp_path / "ck", mask_type="class", num_classes=3, padding="same",
               base_channels=2, depth=2, dropout=0.0, epochs=1, steps_per_epoch=2,
               progress=False, device="cpu")
    assert tr.tile == 30  # same padding: the whole smallest side
    assert 0.0 <= tr.history[-1]["val_iou"] <= 1.0
    pred = predict_mask(tr.model.eval(), load_folder(tmp_path, mask_type="class",
                                                     num_classes=3)[0].image)
    assert pred.shape == (30, 37) and set(np.unique(pred)) <= {0, 1, 2}
