"""Checkpoint files are verified before torch reads them: byte flips, compressed entries
(zip bombs) and files that are not regular files are refused with one line."""

from __future__ import annotations

import os
import random
import time
import zipfile

import pytest
import torch

import unet_fast
from unet_fast.checkpoint import CheckpointError

from .helpers import error_reading_fifo


def _tiny():
    torch.manual_seed(0)
    return unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=1).eval()


def _raw_payload(model):
    return {"format": "unet_fast", "version": 1, "config": model.config.to_dict(),
            "state_dict": model.state_dict()}


def _one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        unet_fast.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_every_byte_flip_is_refused(tmp_path):
    # regression: 91 of 100 flipped files loaded silently with changed weights (torch's zip
    # reader checks no CRC); a file unet_fast.save wrote carries a digest over all its bytes
    good = tmp_path / "good.pt"
    unet_fast.save(_tiny(), good)
    data = good.read_bytes()
    rng = random.Random(1234)
    positions = [*sorted(rng.sample(range(len(data)), 60)), 0, len(data) - 1, len(data) - 90]
    bad = tmp_path / "bad.pt"
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        msg = _one_line_error(bad)
        assert "corrupt" in msg or "truncated" in msg or "compressed" in msg, (pos, msg)


def test_digest_is_a_zip_comment_torch_reads_past(tmp_path):
    model = _tiny()
    path = tmp_path / "m.pt"
    unet_fast.save(model, path)
    with zipfile.ZipFile(path) as z:
        assert z.comment.startswith(b"unet_fast-sha256:") and len(z.comment) == 17 + 64
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw["state_dict"]["head.weight"], model.state_dict()["head.weight"])


def test_old_files_without_digest_load_and_are_crc_checked(tmp_path):
    # files written by earlier unet_fast versions (a plain torch.save) still load...
    model = _tiny()
    old = tmp_path / "old.pt"
    torch.save(_raw_payload(model), old)
    back = unet_fast.load(old)
    assert torch.equal(back.state_dict()["head.weight"], model.state_dict()["head.weight"])
    # ...but a flipped bit in a weight is caught by the entry's CRC-32 (regression: loaded)
    data = bytearray(old.read_bytes())
    with zipfile.ZipFile(old) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    # the entry's data follows its local header (30 bytes + name + extra field)
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 1] ^= 0x10
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    msg = _one_line_error(bad)
    assert "corrupt" in msg and "CRC" in msg and "data/0" in msg


def _recompress(src, dst, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            body = z.read(info)
            out.writestr(info.filename, body,
                         compress_type=method if "/data/" in info.filename else zipfile.ZIP_STORED)


def test_compressed_entries_refused_before_torch_reads(tmp_path, monkeypatch):
    # regression: a 1.5 MB file whose deflated entry unpacks to 1 GiB made load allocate 1 GiB;
    # torch.save never compresses, so a compressed entry is refused before torch.load runs
    model = unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=1)
    payload = _raw_payload(model)
    payload["state_dict"] = dict(payload["state_dict"], bomb=torch.zeros(16 * 2**20 // 4))
    plain = tmp_path / "plain.pt"
    torch.save(payload, plain)
    bomb = tmp_path / "bomb.pt"
    _recompress(plain, bomb)
    assert bomb.stat().st_size < 200_000 < plain.stat().st_size

    def no_load(*a, **k):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", no_load)
    msg = _one_line_error(bomb)
    assert "compressed" in msg and "torch.save never" in msg


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_refused_without_blocking(tmp_path):
    # regression: opening a named pipe waits for a writer forever
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    result = [error_reading_fifo(fifo, unet_fast.load, "loading")]
    assert isinstance(result[0], CheckpointError)
    assert "named pipe" in str(result[0]) and "not a regular file" in str(result[0])


def test_device_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"'/dev/zero' is a character device, not a "
                                              r"regular file"):
        unet_fast.load("/dev/zero")
    assert time.monotonic() - start < 5


def test_trailing_bytes_and_empty_files(tmp_path):
    good = tmp_path / "good.pt"
    unet_fast.save(_tiny(), good)
    extended = tmp_path / "extended.pt"
    extended.write_bytes(good.read_bytes() + b"\0" * 10)
    assert "corrupt" in _one_line_error(extended)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "is empty" in _one_line_error(empty)
