"""Checkpoint errors are whole sentences: torch's long multi-sentence messages are shortened to
their first sentence, never cut mid-word."""

from __future__ import annotations

import re

import pytest

import unet_fast
from unet_fast import CheckpointError, reference


def test_truncated_checkpoint_message_is_complete(tmp_path):
    good = tmp_path / "good.pt"
    unet_fast.save(reference.UNet(base_channels=4, depth=2), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 10])  # torch: "... failed finding central directory. ..."
    with pytest.raises(CheckpointError) as info:
        unet_fast.load(cut)
    message = str(info.value)
    detail = re.search(r"\((.*)\)$", message)
    assert detail is not None, message
    # the detail is torch's first sentence, in full
    assert detail.group(1).endswith("failed finding central directory"), message
    assert "checkpoint file is" not in message
