"""NaN/Inf weights and negative BatchNorm variances: refused with one line naming the entry when
the fast backends pack them and when a checkpoint is loaded; the reference path is untouched.

The oracle for "refuse" is the reference model itself: on each of these weights its output is
NaN, so any finite output (or mask) the fast model made would be a silent lie.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import reference
from unet_fast.weight_checks import weight_problem

from .cli_helpers import segment_error
from .helpers import make_pair
from .milesial_arch import MilesialUNet, randomise_

KW = {"base_channels": 4, "depth": 2, "norm": "batch"}
X = torch.randn(1, 1, 60, 60)


def _nan_conv(m):
    w = m.encoder[0].conv1.weight
    w.view(-1)[[0, 5, 9]] = float("nan")


def _inf_bias(m):
    m.decoder[0].up.bias[1] = float("inf")


def _negative_var(m):
    m.encoder[1].norm2.running_var[[0, 3]] = -0.5


def _all_nan(m):
    for p in m.parameters():
        p.fill_(float("nan"))


BAD = [
    (_nan_conv, r"^parameter 'encoder\.0\.conv1\.weight' has 3 NaN value\(s\) out of 36; "
                "weights must be finite$"),
    (_inf_bias, r"^parameter 'decoder\.0\.up\.bias' has 1 infinite value\(s\) out of 8; "
                "weights must be finite$"),
    (_negative_var, r"^buffer 'encoder\.1\.norm2\.running_var' has 2 negative value\(s\); "
                    r"a BatchNorm variance must be >= 0$"),
    (_all_nan, r"^parameter 'encoder\.0\.conv1\.weight' has 36 NaN value\(s\) out of 36"),
]


def _bad_pair(spoil):
    ref, fast = make_pair(**KW)
    with torch.no_grad():
        spoil(ref)
        spoil(fast)
    return ref, fast


@pytest.mark.parametrize("spoil,msg", BAD)
def test_fast_model_refuses_to_pack_weights_the_reference_turns_into_nan(spoil, msg):
    ref, fast = _bad_pair(spoil)
    with torch.no_grad():
        assert ref(X.double()).isnan().all()  # what the weights really give
        assert fast.backend_name(X) == "cpu-onednn"
        for mode in (torch.no_grad, torch.inference_mode):
            with mode(), pytest.raises(ValueError, match=msg):
                fast(X)
        with pytest.raises(ValueError, match=msg):
            fast.segment(X[0], output="labels")


@pytest.mark.parametrize("spoil,msg", BAD[:1])
def test_weights_spoiled_after_packing_are_refused_too(spoil, msg):
    _, fast = make_pair(**KW)
    with torch.no_grad():
        fast(X)
        spoil(fast)
        with pytest.raises(ValueError, match=msg):
            fast(X)


@pytest.mark.parametrize("spoil,msg", BAD)
def test_triton_backend_packing_refuses_them(spoil, msg):
    pytest.importorskip("triton")
    from unet_fast.backends import cuda_triton

    _, fast = _bad_pair(spoil)
    with torch.no_grad(), pytest.raises(ValueError, match=msg):
        cuda_triton.CudaTritonBackend().forward(fast, X)


def test_autograd_and_training_still_run_the_reference_ops():
    """Training may legitimately diverge to NaN: the reference path never checks."""
    _, fast = _bad_pair(_nan_conv)
    assert torch.isnan(fast(X)).all()  # autograd recording: reference ops, NaN like the reference
    fast.train()
    fast(X).sum().backward()
    with torch.no_grad():
        assert torch.isnan(fast(X)).all()  # train-mode BatchNorm: reference ops
    assert fast.backend_name(X) == "reference"


@pytest.mark.parametrize("spoil,msg", BAD)
def test_checkpoint_with_such_weights_is_refused_on_load(tmp_path, spoil, msg):
    _, fast = _bad_pair(spoil)
    unet_fast.save(fast, tmp_path / "m.pt")  # saving is allowed: a diverged run may be inspected
    path = str(tmp_path / "m.pt")
    with pytest.raises(unet_fast.CheckpointError) as info:
        unet_fast.load(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"checkpoint {path!r}: ")
    assert re.search(msg, text.split(": ", 1)[1])


def test_milesial_import_names_the_milesial_key():
    sd = randomise_(MilesialUNet(3, 2, False, width=4)).state_dict()
    sd["down1.maxpool_conv.1.double_conv.1.running_var"][2] = -1.0
    with pytest.raises(unet_fast.CheckpointError,
                       match=r"buffer 'down1\.maxpool_conv\.1\.double_conv\.1\.running_var' has 1 "
                             r"negative value\(s\); a BatchNorm variance must be >= 0"):
        unet_fast.from_milesial(sd)


def test_cli_refuses_a_checkpoint_with_a_nan_weight(tmp_path, capsys):
    model = reference.UNet(in_channels=1, num_classes=2, base_channels=4, depth=2, padding="same")
    with torch.no_grad():
        model.head.weight[1, 2] = float("nan")
    unet_fast.save(model, tmp_path / "nan.pt")
    image = tmp_path / "img.npy"
    np.save(image, torch.rand(12, 14).numpy())
    out = tmp_path / "mask.png"
    line = segment_error(capsys, "segment", image, "-c", tmp_path / "nan.pt", "-o", out)
    assert "parameter 'head.weight' has 1 NaN value(s) out of 8" in line
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["img.npy", "nan.pt"]


def test_meta_models_pack_without_values_to_check():
    """The benchmarks plan layers by packing a model on the meta device: nothing to check."""
    pytest.importorskip("triton")
    from unet_fast.backends import cuda_triton

    with torch.device("meta"):
        model = unet_fast.UNet(**KW).eval()
    assert weight_problem(model) is None
    assert cuda_triton.pack(model, torch.float32).head_weight.is_meta
