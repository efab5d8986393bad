"""The files ``unet-fast segment`` writes: temporary names a later run recognises when a killed
run left them, interrupted runs that remove only what they made and no other run uses, and a
full disk reported as such."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast import _atomic
from unet_fast.cli import main

from .cli_helpers import run_cli, segment_error


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clifiles")
    torch.manual_seed(0)
    unet_fast.save(unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=1,
                                  padding="same").eval(), d / "m.pt")
    Image.fromarray(np.arange(80, dtype=np.uint8).reshape(8, 10)).save(d / "a.png")
    return d


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temp_in(folder: Path, target: str, pid: int, suffix: str = ".png") -> Path:
    path = folder / _atomic.temp_name(target, suffix, pid=pid)
    path.write_bytes(b"half-written")
    return path


def test_stale_temp_files_of_dead_runs_removed(files, tmp_path, capsys):
    # regression: a SIGKILLed run's hidden temporary files stayed forever
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = _temp_in(out, "a_mask.png", _dead_pid())
        stale_marker = out / _atomic.temp_name("segment-run", "", pid=_dead_pid())
        stale_marker.write_bytes(b"")
        busy = _temp_in(out, "b_mask.png", live.pid)  # another run, still writing
        other_host = out / stale.name.replace(_atomic.host_tag(), "elsewhere")
        other_host.write_bytes(b"not ours to judge")
        mine = out / ".a_mask.png.keep"  # not named by unet-fast
        mine.write_bytes(b"user file")
        code, _, err = run_cli(capsys, "segment", files / "a.png", "-c", files / "m.pt",
                               "-o", out, "--device", "cpu")
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [busy.name, other_host.name, mine.name, "a_mask.png"])
    finally:
        live.kill()
        live.wait()


def test_temp_names_say_whose_they_are(tmp_path):
    seen = []

    def spy(obj, f):
        seen.append(Path(f).name)
        Path(f).write_bytes(b"x")

    with _atomic.atomic_path(tmp_path / "a.npy") as tmp:
        spy(None, tmp)
    name = seen[0]
    assert name.startswith(".a.npy.") and name.endswith(".npy")
    assert f".{_atomic.host_tag()}.{os.getpid()}." in name
    assert os.listdir(tmp_path) == ["a.npy"]
    # the permissions a plain open() would give
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == 0o666 & ~umask


def test_interrupt_keeps_a_folder_another_run_writes_into(files, tmp_path, monkeypatch):
    # regression: Ctrl-C in run A removed the new output folder run B was about to write into
    out = tmp_path / "new"
    real_segment = unet_fast.segment
    b_computing, a_done = threading.Event(), threading.Event()
    codes, threads = {}, {}

    def run_b():
        codes["b"] = main(["segment", str(files / "a.png"), "-c", str(files / "m.pt"), "-o",
                           str(out / "b.png"), "--device", "cpu", "--no-progress"])

    def segment(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():  # run A
            b = threading.Thread(target=run_b)
            b.start()
            assert b_computing.wait(60)
            threads["b"] = b
            raise KeyboardInterrupt
        b_computing.set()  # run B, computing while A is interrupted
        assert a_done.wait(60)
        return real_segment(*args, **kwargs)

    monkeypatch.setattr(unet_fast, "segment", segment)
    try:
        codes["a"] = main(["segment", str(files / "a.png"), "-c", str(files / "m.pt"), "-o",
                           str(out / "a.png"), "--device", "cpu", "--no-progress"])
    finally:
        a_done.set()
    threads["b"].join(60)
    assert codes == {"a": 130, "b": 0}
    assert sorted(os.listdir(out)) == ["b.png"]  # B's result; no marker or temp file left


def test_interrupt_removes_what_the_run_made(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x" / "y"

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a scheduler would
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(unet_fast, "segment", interrupted)
    code, _, err = run_cli(capsys, "segment", files / "a.png", "-c", files / "m.pt",
                           "-o", out, "--device", "cpu")
    assert code == 130 and "interrupted" in err
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back


def test_disk_full_says_so(files, tmp_path, monkeypatch, capsys):
    # regression: numpy reports a short write as "90000 requested and 57088 written"
    def short_write(f, a, *args, **kwargs):
        f.write(b"\x93NUMPY" + bytes(100))
        raise OSError("90000 requested and 57088 written")

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(np, "save", short_write)
    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    out = tmp_path / "out"
    line = segment_error(capsys, "segment", files / "a.png", "-c", files / "m.pt", "-o", out,
                         "--output", "probs", "--device", "cpu")
    assert line.endswith("a_probs.npy': No space left on device"), line
    assert os.listdir(tmp_path) == []  # no partial file, no folder left behind


def test_enospc_from_a_writer(files, tmp_path, monkeypatch, capsys):
    def full(self, fp, *a, **k):
        Path(fp).write_bytes(b"\x89PNG")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "m.png"
    line = segment_error(capsys, "segment", files / "a.png", "-c", files / "m.pt", "-o", out,
                         "--device", "cpu")
    assert line.endswith("m.png': No space left on device"), line
    assert os.listdir(tmp_path) == []
