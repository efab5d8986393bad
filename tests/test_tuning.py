"""Tile choice without silent tuning (issue 15): the shape-aware default, the order pinned >
recorded > tuned (only when asked, within a time budget) > default, the on-disk record, the one
log line, and the batch bucket that segment() keeps for its smaller last batch."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("triton")

from unet_fast.triton_kernels import conv3x3 as kconv
from unet_fast.triton_kernels import tuning

from unet_fast import launch_hints, segment

BF16, F32 = torch.bfloat16, torch.float32
CPU = torch.device("cpu")


def tile(c):
    return (c.kwargs["BLOCK_H"], c.kwargs["BLOCK_W"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"],
            c.num_warps, c.num_stages)


def test_default_is_always_one_of_the_candidates():
    keys = set()
    for dtype, tf32 in ((BF16, False), (torch.float16, False), (F32, True), (F32, False)):
        for c_in in (1, 3, 16, 64, 512):
            for c_out in (2, 64, 128, 256, 1024):
                for head in (False, True):
                    for pixels in (16, 900, 3136, 40_000, 5_000_000):
                        c = tuning.default_config(dtype, tf32, c_in, c_out, head, pixels)
                        allowed = {kconv._key(g) for g in kconv.gpu_configs(dtype, tf32, c_out,
                                                                             head)}
                        assert kconv._key(c) in allowed, (dtype, tf32, c_in, c_out, head, pixels)
                        keys.add(kconv._key(c))
    assert len(keys) >= 5  # the rule does pick different tiles


def test_default_follows_the_shape():
    # the paper network's big first layers: the 8x16x32, 128-wide default (enough CTAs)
    assert tile(tuning.default_config(BF16, False, 64, 64, False, 568 * 568)) == (
        8, 16, 32, 64, 4, 3)
    # its bottleneck at batch 1 (30x30 output, 1024 channels): 64 CTAs with the default would
    # leave half the SMs idle: narrower N and M tiles instead (240 CTAs)
    assert tile(tuning.default_config(BF16, False, 512, 1024, False, 30 * 30)) == (
        8, 8, 32, 64, 4, 4)
    # a throughput batch on a >= 256-channel layer: the 256-wide tile; TF32 gets the one whose
    # pipeline fits shared memory
    assert tile(tuning.default_config(BF16, False, 512, 512, False, 16 * 66 * 66)) == (
        8, 16, 64, 256, 8, 3)
    assert tile(tuning.default_config(F32, True, 512, 512, False, 16 * 66 * 66)) == (
        8, 16, 32, 256, 8, 4)
    # few input channels per K source: a 16-deep K step
    assert tile(tuning.default_config(BF16, False, 16, 64, False, 1_000_000))[2] == 16
    # the fused head and IEEE fp32 keep their first candidate
    for dtype, tf32, head in ((BF16, False, True), (F32, False, False)):
        first = kconv.gpu_configs(dtype, tf32, 64, head)[0]
        assert tile(tuning.default_config(dtype, tf32, 64, 64, head, 900)) == tile(first)


KEY = tuning.ConvKey(64, 0, 128, 30, 30, 1, 0, False, False, "ieee", "bfloat16")


@pytest.fixture
def record(tmp_path, monkeypatch):
    rec = tuning.TuningRecord(tmp_path / "tuning.json")
    monkeypatch.setattr(tuning, "RECORD", rec)
    monkeypatch.setattr(tuning, "_spent", 0.0)
    monkeypatch.delenv(tuning.ENV_AUTOTUNE, raising=False)
    monkeypatch.delenv(tuning.ENV_BUDGET, raising=False)
    return rec


def test_no_tuning_unless_asked(record, monkeypatch):
    assert tuning.choose(KEY, BF16, False, CPU).source == "default"
    monkeypatch.setenv(tuning.ENV_AUTOTUNE, "1")
    assert tuning.choose(KEY, BF16, False, CPU) == tuning.Choice(None, "tune")
    with launch_hints.autotune(False):
        assert tuning.choose(KEY, BF16, False, CPU).source == "default"
    monkeypatch.setenv(tuning.ENV_AUTOTUNE, "0")
    with launch_hints.autotune(True):
        assert tuning.choose(KEY, BF16, False, CPU).source == "tune"


def test_spent_budget_stops_tuning(record, monkeypatch):
    monkeypatch.setenv(tuning.ENV_AUTOTUNE, "1")
    monkeypatch.setenv(tuning.ENV_BUDGET, "30")
    monkeypatch.setattr(tuning, "_spent", 29.0)
    assert tuning.choose(KEY, BF16, False, CPU).source == "tune"
    monkeypatch.setattr(tuning, "_spent", 30.5)
    assert tuning.choose(KEY, BF16, False, CPU).source == "default"


def test_recorded_and_pinned_tiles_win(record, monkeypatch):
    monkeypatch.setenv(tuning.ENV_AUTOTUNE, "1")
    narrow = kconv.gpu_configs(BF16, False, 128, False)[-1]
    record.put("cpu", KEY, narrow)
    chosen = tuning.choose(KEY, BF16, False, CPU)
    assert chosen.source == "recorded" and tile(chosen.config) == tile(narrow)
    # another process (a fresh record on the same file) sees it; other devices do not
    fresh = tuning.TuningRecord(record.path)
    assert tile(fresh.get("cpu", KEY)) == tile(narrow) and fresh.get("NVIDIA H200", KEY) is None
    pin = kconv.gpu_configs(BF16, False, 128, False)[1]
    with tuning.pinned(pin):
        assert tuning.choose(KEY, BF16, False, CPU) == tuning.Choice(pin, "pinned")


def test_choice_is_looked_up_once_per_launch_key(record, monkeypatch):
    """A launch's recorded or default tile is worked out once (the record's key text and the
    rule are not free at ~20 launches per forward); a newly recorded tile, or tuning asked for,
    is still seen on the next launch."""
    reads = []
    real_get = record.get
    monkeypatch.setattr(record, "get", lambda *a: reads.append(a) or real_get(*a))
    first = tuning.choose(KEY, BF16, False, CPU)
    assert first.source == "default" and tuning.choose(KEY, BF16, False, CPU) == first
    assert len(reads) == 1
    with launch_hints.autotune(True):
        assert tuning.choose(KEY, BF16, False, CPU).source == "tune"
    narrow = kconv.gpu_configs(BF16, False, 128, False)[-1]
    record.put("cpu", KEY, narrow)
    for _ in range(2):
        chosen = tuning.choose(KEY, BF16, False, CPU)
        assert chosen.source == "recorded" and tile(chosen.config) == tile(narrow)
    assert len(reads) == 2


def test_unreadable_record_is_empty(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("{not json")
    assert tuning.TuningRecord(path).get("cpu", KEY) is None


class FakeAutotuner:
    best_config = None


def test_tuning_records_charges_and_logs_one_line(record, caplog):
    tuner = FakeAutotuner()
    best = kconv.gpu_configs(BF16, False, 128, False)[2]
    with caplog.at_level(logging.INFO, logger="unet_fast.tuning"):
        with tuning.tuning(KEY, CPU, tuner):
            tuner.best_config = best  # what Autotuner.run leaves behind
    assert tile(record.get("cpu", KEY)) == tile(best)
    assert tuning._spent > 0
    lines = [r.getMessage() for r in caplog.records if r.name == "unet_fast.tuning"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "conv3x3 64->128 ch, 30x30, batch<=1, bfloat16" in lines[0] and "16x16x32" in lines[0]


def test_launch_that_ran_nothing_records_nothing(record):
    tuner = FakeAutotuner()
    tuner.best_config = kconv.gpu_configs(BF16, False, 128, False)[0]  # stale, from another key
    with tuning.tuning(KEY, CPU, tuner):
        pass  # a compile-only stand-in or a tracer launched nothing
    assert record.get("cpu", KEY) is None and tuning._spent == 0


def test_batch_bucket_follows_the_full_batch():
    assert [launch_hints.batch_bucket(n) for n in (1, 2, 3, 16, 17, 1000)] == [1, 2, 4, 16, 32, 32]
    with launch_hints.full_batch(12):
        assert [kconv.batch_bucket(n) for n in (1, 5, 12, 40)] == [16, 16, 16, 32]
    assert kconv.batch_bucket(1) == 1


def test_segment_last_smaller_batch_keeps_the_bucket(monkeypatch):
    import unet_fast

    fast = unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=2,
                          padding="same").eval()
    seen = []

    def forward(x):
        seen.append((x.shape[0], launch_hints.batch_bucket(x.shape[0])))
        return fast.reference_forward(x)

    monkeypatch.setattr(fast, "forward", forward)
    # a 2x2 grid of tiles in batches of 3: a batch of 3, then one of 1
    segment(fast, torch.randn(1, 1, 24, 24), tile_size=16, batch_size=3, progress=False)
    assert [n for n, _ in seen] == [3, 1]
    assert {b for _, b in seen} == {4}
