"""Checkpoint errors are whole sentences: torch's long multi-sentence messages are shortened to
their first sentence, never cut mid-word."""

from __future__ import annotations

import re

import pytest

import unet_fast
from unet_fast import CheckpointError, reference
from unet_fast.checkpoint import _first_line


def test_truncated_checkpoint_message_is_complete(tmp_path):
    good = tmp_path / "good.pt"
    unet_fast.save(reference.UNet(base_channels=4, depth=2), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 10])
    with pytest.raises(CheckpointError) as info:
        unet_fast.load(cut)
    message = str(info.value)
    assert "truncated" in message, message
    detail = re.search(r"\((.*)\)$", message)
    assert detail is not None, message
    assert "checkpoint file is" not in message


def test_torch_messages_keep_their_whole_first_sentence():
    # torch's reader error for a file cut short (what the file checks now catch first)
    torch_text = ("PytorchStreamReader failed reading zip archive: failed finding central directory. "
                  "This may be because your checkpoint file is corrupted or truncated (e.g. 1.2 of "
                  "its bytes).")
    assert _first_line(RuntimeError(torch_text)) == (
        "PytorchStreamReader failed reading zip archive: failed finding central directory")
    long = "word " * 80
    short = _first_line(RuntimeError(long))
    assert short.endswith(" ...") and len(short) <= 204 and "wor ..." not in short
