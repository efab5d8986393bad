"""The distributed engine (unet_fast.distributed): chunked == whole-image segment(), on a real
LocalCluster of 2 worker processes; a killed worker; a resumed run; the foreground mask; bad
inputs. Needs the optional extra ``unet_fast[distributed]`` (dask, distributed, zarr)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import unet_fast

from .distributed_helpers import failing_loader, killing_loader, rel_err, whole_pass

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

from unet_fast.distributed import InputError, segment_large  # noqa: E402
from unet_fast.distributed.plan import mirror_indices  # noqa: E402


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A tiny valid-padding U-Net (depth 2, 3 input channels, 3 classes), saved to a file."""
    torch.manual_seed(1)
    model = unet_fast.UNet(in_channels=3, num_classes=3, base_channels=3, depth=2).eval()
    path = tmp_path_factory.mktemp("net") / "model.pt"
    unet_fast.save(model, path)
    return model, str(path)


@pytest.fixture(scope="module")
def image():
    """An RGB uint8 image (H, W, C) of odd size, with its float (C, H, W) counterpart."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (233, 301, 3), dtype=np.uint8)
    return img, np.moveaxis(img, -1, 0).astype(np.float32) / 255


@pytest.fixture(scope="module")
def oracle(net, image):
    return whole_pass(net[0], image[1])


def _read(out, kind="logits"):
    return zarr.open_array(store=str(out), path=kind, mode="r")[...]


@pytest.mark.parametrize("n", [1, 2, 5, 17])
@pytest.mark.parametrize("mode", ["reflect", "symmetric"])
def test_mirror_indices_match_numpy_pad(n, mode):
    a = np.arange(n)
    for lo, hi in ((-40, n + 40), (-3, 2), (n - 2, n + 7)):
        padded = np.pad(a, (40, 60), mode=mode)
        assert np.array_equal(a[mirror_indices(lo, hi, n, mode)], padded[lo + 40:hi + 40])


@pytest.mark.parametrize("chunk", [57, (50, 333), 1000])
def test_chunked_equals_whole_pass_in_process(tmp_path, net, image, chunk):
    """Any chunk size (also off the pooling grid, and past the image) gives the whole-image
    result; workers=0 runs the same tasks without dask."""
    model, _ = net
    _, x = image
    oracle = whole_pass(model, x)
    out = tmp_path / "o.zarr"
    stats = segment_large(x, model, out, output="logits", chunk=chunk, workers=0)
    got = _read(out)
    assert got.dtype == np.float32 and got.shape == oracle.shape
    assert rel_err(got, oracle) < 1e-5
    whole = unet_fast.segment(model, torch.from_numpy(x), output="logits").numpy()
    assert np.abs(got - whole).max() <= 1e-5 * np.abs(whole).max()
    assert stats.segmented == stats.chunks and stats.already_done == 0


def test_symmetric_mirror_and_grey_zarr_input(tmp_path):
    torch.manual_seed(2)
    model = unet_fast.UNet(in_channels=1, num_classes=1, base_channels=2, depth=2).eval()
    x = np.random.default_rng(1).random((97, 141), dtype=np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=x, chunks=(40, 40))
    stats = segment_large(str(tmp_path / "in.zarr"), model, tmp_path / "o.zarr", output="logits",
                          chunk=30, workers=0, mirror_mode="symmetric")
    assert rel_err(_read(tmp_path / "o.zarr")[0], whole_pass(model, x[None], "symmetric")[0]) < 1e-5
    assert stats.chunks == 4 * 5


def test_same_padding_chunks_follow_segment(tmp_path):
    """Same padding: segment()'s own call when the chunk covers the image; smaller chunks run
    segment() on chunk + context clipped to the image, which agrees with segment() on the whole
    image while segment() runs each of them (and the whole image) as one window."""
    torch.manual_seed(3)
    model = unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=2,
                           padding="same").eval()
    x = np.random.default_rng(2).random((1, 90, 70), dtype=np.float32)
    segment_large(x, model, tmp_path / "o.zarr", output="logits", chunk=128, workers=0)
    whole = unet_fast.segment(model, torch.from_numpy(x), output="logits").numpy()
    assert np.array_equal(_read(tmp_path / "o.zarr"), whole)
    segment_large(x, model, tmp_path / "c.zarr", output="logits", chunk=32, workers=0)
    assert np.abs(_read(tmp_path / "c.zarr") - whole).max() <= 1e-5 * np.abs(whole).max()


def test_cluster_inputs_equal_whole_pass(tmp_path, client, net, image):
    """zarr, TIFF (tifffile's zarr view) and dask inputs on 2 worker processes, each chunk
    read by its own task; labels and float16 probabilities."""
    import dask.array as da

    model, ckpt = net
    img, x = image
    oracle = whole_pass(model, x)
    labels_ref = oracle.argmax(0)
    probs_ref = torch.softmax(torch.from_numpy(oracle), 0).numpy()
    tifffile.imwrite(tmp_path / "in.tif", img, tile=(64, 64), photometric="rgb")
    zarr.create_array(str(tmp_path / "in.zarr"), data=img, chunks=(50, 60, 3))
    inputs = {"tif": str(tmp_path / "in.tif"), "zarr": str(tmp_path / "in.zarr"),
              "dask": da.from_array(img, chunks=(100, 100, 3)), "numpy": img}
    for name, src in inputs.items():
        out = tmp_path / f"{name}.zarr"
        stats = segment_large(src, ckpt, out, output="logits", chunk=100, client=client)
        assert stats.segmented == 3 * 4
        assert rel_err(_read(out), oracle) < 1e-5, name
    segment_large(inputs["zarr"], ckpt, tmp_path / "labels.zarr", chunk=(70, 90), client=client)
    labels = _read(tmp_path / "labels.zarr", "labels")
    assert labels.dtype == np.uint8
    top2 = np.sort(oracle, 0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # not a near tie
    assert np.array_equal(labels[clear], labels_ref[clear]) and clear.mean() > 0.99
    segment_large(inputs["tif"], ckpt, tmp_path / "p.zarr", output="probs", out_dtype="float16",
                  chunk=100, client=client)
    probs = _read(tmp_path / "p.zarr", "probs")
    assert probs.dtype == np.float16
    assert np.abs(probs.astype(np.float32) - probs_ref).max() < 1e-3


def _clean_run(tmp_path, client, ckpt, x, chunk):
    out = tmp_path / "clean.zarr"
    segment_large(x, ckpt, out, output="logits", chunk=chunk, client=client)
    return _read(out)


def test_killed_worker_run_finishes_identical(tmp_path, client, net, image):
    """One worker process is SIGKILLed in the middle of its third chunk; dask runs the lost
    task again elsewhere and the result is bitwise the uninterrupted run's."""
    model, ckpt = net
    _, x = image
    pids = set(client.run(os.getpid).values())
    marker = tmp_path / "killed"
    out = tmp_path / "o.zarr"
    stats = segment_large(x, killing_loader(ckpt, str(marker), after=3), out, output="logits",
                          chunk=64, client=client)
    killed = int(marker.read_text())
    assert killed in pids  # a worker process of this cluster was killed ...
    client.wait_for_workers(2, timeout=60)
    assert killed not in set(client.run(os.getpid).values())  # ... and replaced by its nanny
    assert stats.segmented == stats.chunks == 4 * 5
    got = _read(out)
    assert np.array_equal(got, _clean_run(tmp_path, client, ckpt, x, 64))
    assert rel_err(got, whole_pass(model, x)) < 1e-5


def test_resumed_run_skips_written_chunks(tmp_path, client, net, image):
    """A run that fails part way leaves done flags; the rerun writes only the others. A chunk
    whose data was written but not its flag (a crash in between) is written again."""
    model, ckpt = net
    _, x = image
    out = tmp_path / "o.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        segment_large(x, failing_loader(ckpt, after=3), out, output="logits", chunk=64,
                      client=client)
    # cancelled tasks already running finish (and may write) first: wait until no task runs
    # and the flags have stood still for a second (a loaded machine can lag either signal)
    done = zarr.open_array(store=str(out), path="done", mode="r+")
    deadline, flags, still_since = time.monotonic() + 60, None, time.monotonic()
    while time.monotonic() < deadline:
        now = done[...] == 1
        if flags is None or not np.array_equal(now, flags) or any(client.processing().values()):
            flags, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 1.0:
            break
        time.sleep(0.05)
    assert 1 <= flags.sum() < flags.size
    result = zarr.open_array(store=str(out), path="logits", mode="r+")
    (iy, ix), (jy, jx) = np.argwhere(flags)[0], np.argwhere(~flags)[0]
    result[:, iy * 64:(iy + 1) * 64, ix * 64:(ix + 1) * 64] = 1e6  # written, flag lost
    done[iy, ix] = 0
    result[:, jy * 64:(jy + 1) * 64, jx * 64:(jx + 1) * 64] = -1e6  # half-written, no flag
    stats = segment_large(x, ckpt, out, output="logits", chunk=64, client=client)
    assert stats.already_done == flags.sum() - 1
    assert stats.segmented == stats.chunks - stats.already_done
    assert (zarr.open_array(store=str(out), path="done")[...] == 1).all()
    assert rel_err(_read(out), whole_pass(model, x)) < 1e-5
    again = segment_large(x, ckpt, out, output="logits", chunk=64, client=client)
    assert again.segmented == 0 and again.already_done == again.chunks


def test_foreground_mask_skips_empty_chunks(tmp_path, client, net, image):
    model, ckpt = net
    _, x = image
    h, w = x.shape[1:]
    mask = np.zeros((12, 15), dtype=np.uint8)
    mask[3:6, 4:8] = 255
    stats = segment_large(x, ckpt, tmp_path / "o.zarr", output="logits", chunk=41,
                          client=client, foreground=mask)
    got = _read(tmp_path / "o.zarr")
    oracle = whole_pass(model, x)
    # the mask at full resolution (nearest): every pixel under it was segmented
    under = mask[np.arange(h) * 12 // h][:, np.arange(w) * 15 // w] > 0
    assert rel_err(got[:, under], oracle[:, under]) < 1e-5
    blocks = [got[:, y:y + 41, xx:xx + 41] for y in range(0, h, 41) for xx in range(0, w, 41)]
    zero = sum(not b.any() for b in blocks)
    assert stats.background == zero and 0 < zero < len(blocks) - 4
    assert stats.segmented == len(blocks) - zero
    for b, o in zip(blocks, [oracle[:, y:y + 41, xx:xx + 41] for y in range(0, h, 41)
                             for xx in range(0, w, 41)], strict=True):
        assert not b.any() or rel_err(b, o) < 1e-5


def test_bad_inputs_write_nothing(tmp_path, net, image):
    _, ckpt = net
    img, x = image
    out = tmp_path / "o.zarr"
    with pytest.raises(InputError, match="does not exist"):
        segment_large(str(tmp_path / "missing.zarr"), ckpt, out, workers=0)
    with pytest.raises(InputError, match=r"has 1 channel\(s\).*expects 3"):
        segment_large(x[:1], ckpt, out, workers=0)
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", data=img)
    group.create_array("b", data=img)
    with pytest.raises(InputError, match=r"2 arrays .*name one"):
        segment_large(str(tmp_path / "two.zarr"), ckpt, out, workers=0)
    assert not out.exists()
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already holds something else"):
        segment_large(x, ckpt, other, workers=0)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    segment_large(x, ckpt, out, chunk=200, workers=0)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(InputError, match=r"different run \(differs in: chunk\)"):
        segment_large(x, ckpt, out, chunk=100, workers=0)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_import_unet_fast_does_not_import_dask():
    code = ("import sys, unet_fast, unet_fast.cli.segment, unet_fast.distributed; "
            "bad = [m for m in ('dask', 'distributed', 'zarr', 'tifffile') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_zarr_on_a_scheduler(tmp_path, capsys, client, net, image):
    """``unet-fast segment big.zarr -c model.pt -o out.zarr --scheduler ADDRESS``: uint8 input
    scaled by 1/255 as the CLI does for files; labels, then float16 probabilities."""
    from .cli_helpers import run_cli

    model, ckpt = net
    img, x = image
    zarr.create_array(str(tmp_path / "big.zarr"), data=img, chunks=(64, 64, 3))
    oracle = whole_pass(model, x)
    address = client.scheduler.address
    code, _, err = run_cli(capsys, "segment", tmp_path / "big.zarr", "-c", ckpt,
                           "-o", tmp_path / "out.zarr", "--scheduler", address, "--chunk", "100")
    assert code == 0, err
    labels = _read(tmp_path / "out.zarr", "labels")
    top2 = np.sort(oracle, 0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    assert np.array_equal(labels[clear], oracle.argmax(0)[clear]) and clear.mean() > 0.99
    code, _, err = run_cli(capsys, "segment", tmp_path / "big.zarr", "-c", ckpt, "--output",
                           "probs", "-o", tmp_path / "p.zarr", "--scheduler", address,
                           "--zarr-dtype", "float16", "--chunk", "128")
    assert code == 0, err
    probs = _read(tmp_path / "p.zarr", "probs").astype(np.float32)
    assert np.abs(probs - torch.softmax(torch.from_numpy(oracle), 0).numpy()).max() < 1e-3


def test_cli_many_images_on_workers_as_plain_cli(tmp_path, capsys, net, monkeypatch):
    """A folder on a LocalCluster (--workers 1) gives byte-identical files to the plain CLI."""
    from PIL import Image

    from unet_fast.distributed import cluster

    from .cli_helpers import run_cli

    _, ckpt = net
    started = []
    real = cluster.client_for
    monkeypatch.setattr("unet_fast.distributed.many.client_for",
                        lambda *a: started.append(a) or real(*a))
    rng = np.random.default_rng(5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (h, w) in enumerate([(40, 57), (63, 33), (50, 50)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    for out, extra in (("plain", []), ("dask", ["--workers", "1"])):
        code, _, err = run_cli(capsys, "segment", folder, "-c", ckpt, "-o", tmp_path / out, *extra)
        assert code == 0, err
    assert started == [(None, None, 1)]  # only the second run, on a LocalCluster of 1 worker
    names = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert names == ["0_mask.png", "1_mask.png", "2_mask.png"]
    assert names == sorted(p.name for p in (tmp_path / "dask").iterdir())
    for n in names:
        assert (tmp_path / "plain" / n).read_bytes() == (tmp_path / "dask" / n).read_bytes()


def test_cli_bad_inputs_one_line_nothing_written(tmp_path, capsys, net, image):
    from .cli_helpers import segment_error

    _, ckpt = net
    img, _ = image
    zarr.create_array(str(tmp_path / "big.zarr"), data=img, chunks=(64, 64, 3))
    zarr.create_array(str(tmp_path / "grey.zarr"), data=img[..., 0], chunks=(64, 64))
    out = tmp_path / "out.zarr"
    line = segment_error(capsys, "segment", tmp_path / "big.zarr" / "nope", "-c", ckpt, "-o", out)
    assert "no zarr array or group" in line
    line = segment_error(capsys, "segment", tmp_path / "grey.zarr", "-c", ckpt, "-o", out)
    assert "has 1 channel(s)" in line and "expects 3" in line
    assert not out.exists()
    (tmp_path / "taken.zarr").mkdir()
    (tmp_path / "taken.zarr" / "data.bin").write_bytes(b"x")
    line = segment_error(capsys, "segment", tmp_path / "big.zarr", "-c", ckpt,
                         "-o", tmp_path / "taken.zarr")
    assert "already holds something else" in line
    assert [p.name for p in (tmp_path / "taken.zarr").iterdir()] == ["data.bin"]
    line = segment_error(capsys, "segment", tmp_path / "big.zarr", "-c", ckpt, "-o", out,
                         "--output", "overlay")
    assert "overlay" in line
    png = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(img[:40, :40]).save(png)
    line = segment_error(capsys, "segment", png, "-c", ckpt, "-o", tmp_path / "m",
                         "--chunk", "64")
    assert "--chunk is for one large image" in line
    assert not out.exists() and not (tmp_path / "m").exists()


def test_ome_zarr_group_level0_with_tczyx_axes(tmp_path, net, image):
    """An OME-Zarr 0.5 image group: level 0 of its multiscales, axes from its metadata (here
    t, c, z, y, x with t = z = 1)."""
    model, ckpt = net
    img, x = image
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "z", "type": "space"}, {"name": "y", "type": "space"},
            {"name": "x", "type": "space"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [
        {"axes": axes, "datasets": [{"path": "s0"}, {"path": "s1"}]}]}
    group.create_array("s0", data=np.moveaxis(img, -1, 0)[None, :, None], chunks=(1, 3, 1, 64, 64))
    group.create_array("s1", data=np.moveaxis(img[::2, ::2], -1, 0)[None, :, None])
    segment_large(str(tmp_path / "ome.zarr"), ckpt, tmp_path / "o.zarr", output="logits",
                  chunk=100, workers=0)
    assert rel_err(_read(tmp_path / "o.zarr"), whole_pass(model, x)) < 1e-5


def test_segment_images_api_on_client(tmp_path, client, net):
    from PIL import Image

    from unet_fast.distributed import segment_images

    _, ckpt = net
    rng = np.random.default_rng(6)
    files = []
    for i in range(3):
        files.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (30 + i, 41, 3), dtype=np.uint8)).save(files[-1])
    written = segment_images(files, ckpt, tmp_path / "out", output="probs", client=client)
    assert [p.name for p in written] == ["im0_probs.npy", "im1_probs.npy", "im2_probs.npy"]
    model = unet_fast.load(ckpt)
    for f, w in zip(files, written, strict=True):
        x = np.moveaxis(np.asarray(Image.open(f)), -1, 0).astype(np.float32) / 255
        probs = torch.softmax(torch.from_numpy(whole_pass(model, x)), 0).numpy()
        assert np.abs(np.load(w) - probs).max() < 1e-5
    with pytest.raises(InputError, match="does not exist"):
        segment_images([tmp_path / "nope.png"], ckpt, tmp_path / "out2", client=client)
    assert not (tmp_path / "out2").exists()
