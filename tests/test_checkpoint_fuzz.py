"""Fuzzed checkpoints: every damaged, odd or hostile file gets one error line (a
CheckpointError from the API, exit status 2 from ``unet-fast segment``), never a traceback and
never a model that silently differs from the one saved.

Cases are made from a tiny model (base_channels 2) with a fixed seed: byte flips, truncations,
config extremes, wrong dtypes and layouts, odd mask_values, and milesial state dicts with the
oddities seen in the wild."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast.checkpoint import CheckpointError
from unet_fast.milesial import from_milesial

from .cli_helpers import run_cli
from .milesial_arch import MilesialUNet, randomise_

SEED = 20261202


def _model():
    torch.manual_seed(0)
    return unet_fast.UNet(in_channels=1, num_classes=2, base_channels=2, depth=1,
                          padding="same", norm="batch").eval()


def _payload(model=None):
    model = model or _model()
    return {"format": "unet_fast", "version": 1, "config": model.config.to_dict(),
            "state_dict": dict(model.state_dict())}


def _milesial_sd(bilinear=False):
    return dict(randomise_(MilesialUNet(1, 2, bilinear, width=2)).state_dict())


def _with(d, **changes):
    out = dict(d)
    out.update(changes)
    return out


def _config_cases():
    base = _payload()
    cases = {}
    for field in ("in_channels", "num_classes", "base_channels", "depth"):
        for value in (0, -1, True, "4", 4.5, None, [2], 10**9):
            cases[f"config-{field}-{value!r}"] = _with(base, config=_with(base["config"],
                                                                         **{field: value}))
    for field, value in (("depth", 50), ("depth", 10**9), ("padding", "x"), ("padding", 3),
                         ("norm", "layer"), ("upsample", 1), ("dropout", float("nan")),
                         ("dropout", 2.0), ("dropout", "0"), ("unknown", 1)):
        cases[f"config-{field}-{value!r}"] = _with(base, config=_with(base["config"],
                                                                     **{field: value}))
    cases["config-list"] = _with(base, config=[1, 2])
    cases["config-missing"] = {k: v for k, v in base.items() if k != "config"}
    cases["state-missing"] = {k: v for k, v in base.items() if k != "state_dict"}
    cases["version-str"] = _with(base, version="1")
    cases["version-huge"] = _with(base, version=10**30)
    return cases


def _tensor_cases():
    base = _payload()
    sd = base["state_dict"]
    w = "encoder.0.conv1.weight"
    cases = {}
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64):
        cases[f"dtype-{dtype}"] = _with(base, state_dict=_with(sd, **{w: sd[w].to(dtype)}))
    if hasattr(torch, "float8_e4m3fn"):
        cases["dtype-float8"] = _with(base, state_dict=_with(
            sd, **{w: sd[w].to(torch.float8_e4m3fn)}))
    cases["counter-float"] = _with(base, state_dict=_with(
        sd, **{"encoder.0.norm1.num_batches_tracked": torch.tensor(1.5)}))
    cases["counter-bool"] = _with(base, state_dict=_with(
        sd, **{"encoder.0.norm1.num_batches_tracked": torch.tensor(True)}))
    cases["sparse"] = _with(base, state_dict=_with(sd, **{w: sd[w].to_sparse()}))
    nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    cases["nested-tensor"] = _with(base, state_dict=_with(sd, **{w: nested}))
    cases["nested-dict"] = _with(base, state_dict=_with(sd, **{w: {"w": sd[w]}}))
    cases["list-weight"] = _with(base, state_dict=_with(sd, **{w: sd[w].tolist()}))
    cases["float-weight"] = _with(base, state_dict=_with(sd, **{"head.bias": 0.5}))
    cases["zero-dim-huge"] = _with(base, config=_with(base["config"], base_channels=10**6),
                                   state_dict=_with(sd, **{w: torch.zeros(10**6, 0, 3, 3)}))
    cases["wrong-shape"] = _with(base, state_dict=_with(sd, **{w: sd[w].reshape(-1)}))
    cases["state-list"] = _with(base, state_dict=list(sd.values()))
    return cases


def _mask_value_cases():
    base = _payload()
    bad = {"huge": [0, 10**9], "fractions": [0.4, 1.6], "negative": [-1, 1],
           "strings": ["a", "b"], "string": "01", "too-few": [0], "nested": [[[0]], [[1]]],
           "colour-range": [[0, 0, 0], [255, 0, 300]], "colour-lengths": [[0, 0, 0], [1, 2]],
           "mixed": [0, [1, 2, 3]], "dict": {"a": 1}, "nan": [0, float("nan")],
           "inf": [0, float("inf")]}
    return {f"mask_values-{k}": _with(base, mask_values=v) for k, v in bad.items()}


def _milesial_cases():
    sd = _milesial_sd()
    first, head = "inc.double_conv.0.weight", "outc.conv.weight"
    cases = {
        "milesial-1d-first": _with(sd, **{first: torch.zeros(5)}),
        "milesial-1d-head": _with(sd, **{head: torch.zeros(2)}),
        "milesial-0d-first": _with(sd, **{first: torch.tensor(1.0)}),
        "milesial-str-mask-values": _with(sd, mask_values="0,255"),
        "milesial-mask-values-strings": _with(sd, mask_values=["0", "255"]),
        "milesial-mask-values-huge": _with(sd, mask_values=[0, 10**9]),
        "milesial-mask-values-fractions": _with(sd, mask_values=[0.4, 1.6]),
        "milesial-mask-values-negative": _with(sd, mask_values=[-255, 0]),
        "milesial-no-head": {k: v for k, v in sd.items() if k != head},
        "milesial-no-down2": {k: v for k, v in sd.items() if not k.startswith("down2.")},
        "milesial-int-weights": _with(sd, **{first: sd[first].long()}),
        "milesial-bool-weights": _with(sd, **{head: sd[head].bool()}),
        "milesial-zero-width": _with(sd, **{first: torch.zeros(0, 1, 3, 3)}),
        "milesial-huge-zero-size": _with(sd, **{first: torch.zeros(10**9, 0, 3, 3)}),
        "milesial-nested-tensor": _with(sd, **{head: torch.nested.nested_tensor(
            [torch.zeros(2), torch.zeros(3)])}),
        "milesial-non-tensor": _with(sd, **{head: [1.0, 2.0]}),
        "milesial-wrapped-bad": {"state_dict": _with(sd, **{first: torch.zeros(5)})},
    }
    for i in range(5, 51, 15):  # down blocks beyond the others: depth from the key names
        cases[f"milesial-depth-{i}"] = _with(sd, **{f"down{j}.maxpool_conv.1.double_conv.0."
                                                    "weight": torch.zeros(1)
                                                    for j in range(5, i + 1)})
    return cases


def _content_cases():
    return {**_config_cases(), **_tensor_cases(), **_mask_value_cases(), **_milesial_cases()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    unet_fast.save(_model(), d / "good.pt")
    torch.save(_payload(), d / "old.pt")  # as earlier unet_fast versions wrote it: no digest
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(d / "img.png")
    files = {}
    with warnings.catch_warnings():  # torch's prototype warning for nested tensors
        warnings.simplefilter("ignore")
        for name, obj in _content_cases().items():
            files[name] = d / f"{name}.pt"
            torch.save(obj, files[name])
    return d, files


def _assert_refused(path: Path, milesial: bool, capsys) -> str:
    loader = from_milesial if milesial else unet_fast.load
    with pytest.raises(CheckpointError) as e:
        loader(path)
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    assert len(msg) < 400, msg
    code, _, err = run_cli(capsys, "segment", path.parent / "img.png", "-c", path,
                           "-o", path.parent / "out.png", "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("unet-fast segment: error: ") and "Traceback" not in err
    assert not (path.parent / "out.png").exists()
    return msg


def test_content_cases_are_refused_in_one_line(saved, capsys):
    _, files = saved
    messages = {}
    for name, path in files.items():
        messages[name] = _assert_refused(path, name.startswith("milesial"), capsys)
    assert len(messages) >= 90
    # a sample of what the user reads
    assert "needs at least" in messages["config-base_channels-1000000000"]
    assert "needs at least" in messages["config-depth-50"]
    assert "dtype torch.int64" in messages["dtype-torch.int64"]
    assert "sparse" in messages["sparse"] and "nested" in messages["nested-tensor"]
    assert "mask_values" in messages["mask_values-huge"]
    assert "65535" in messages["mask_values-huge"]
    assert "inc.double_conv.0.weight" in messages["milesial-1d-first"]
    assert "mask_values" in messages["milesial-str-mask-values"]


def test_byte_flips_and_truncations(saved, capsys):
    d, _ = saved
    rng = random.Random(SEED)
    good = (d / "good.pt").read_bytes()
    old = (d / "old.pt").read_bytes()
    reference = _model().state_dict()
    bad = d / "mutated.pt"
    refused = benign = 0
    for i in range(150):
        data = bytearray(good if i % 3 else old)
        if i < 120:
            for _ in range(rng.choice((1, 1, 2, 8))):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(1, len(data)):]
        bad.write_bytes(bytes(data))
        try:
            model = unet_fast.load(bad)
        except CheckpointError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        # only a file without a digest can pass, and only when what changed is never read
        # (a timestamp or padding in a zip header): then the weights are exactly the saved ones
        assert i % 3 == 0 and i < 120, f"case {i}: a damaged file with a digest loaded"
        for k, v in reference.items():
            assert torch.equal(model.state_dict()[k], v), (i, k)
        benign += 1
    assert refused + benign == 150 and benign < 25, (refused, benign)
    # and a few through the command line, in this process
    for _ in range(5):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= 0xFF
        bad.write_bytes(bytes(data))
        _assert_refused(bad, False, capsys)


def test_console_script_sees_one_line(saved):
    # a few cases through a real process (the rest run in-process above); started together
    d, files = saved
    names = ("config-base_channels-1000000000", "milesial-1d-first")
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "unet_fast.cli", "segment", str(d / "img.png"), "-c",
         str(files[name]), "-o", str(d / f"{name}.png"), "--device", "cpu", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, err)
        assert lines[0].startswith("unet-fast segment: error: "), (name, err)
        assert "checkpoint" in lines[0] and "Traceback" not in err, (name, err)
        assert not (d / f"{name}.png").exists()


def test_training_resume_reads_with_the_same_checks(saved):
    from unet_fast.training.checkpoint import load_model, read_checkpoint

    _, files = saved
    for name in ("config-base_channels-1000000000", "dtype-torch.bool", "wrong-shape"):
        with pytest.raises(CheckpointError):
            read_checkpoint(files[name])
        with pytest.raises(CheckpointError):
            load_model(files[name])


def test_save_refuses_mask_values_load_would_refuse(tmp_path):
    model = _model()
    model.mask_values = [0, 10**9]
    with pytest.raises(CheckpointError, match=r"mask_values.*10+ is outside 0..65535"):
        unet_fast.save(model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []
    model.mask_values = [0, 255]
    unet_fast.save(model, tmp_path / "m.pt")
    assert unet_fast.load(tmp_path / "m.pt").mask_values == [0, 255]
