"""Models made or loaded under ``torch.inference_mode()`` (their weights are inference tensors,
which have no version counter) run, and their packed weights still follow every change PyTorch
allows such tensors: in-place edits and ``load_state_dict`` inside ``inference_mode``."""

from __future__ import annotations

import pytest
import torch

import unet_fast
from unet_fast import reference

from .helpers import make_pair, rel_l2

KW = {"base_channels": 4, "depth": 2, "norm": "batch"}


def _oracle(fast: unet_fast.UNet, x: torch.Tensor) -> torch.Tensor:
    """The float64 reference holding ``fast``'s current weights, run on ``x``."""
    ref = reference.UNet(**KW).double().eval()
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        return ref(x.double())


def _agrees(fast: unet_fast.UNet, x: torch.Tensor, mode=torch.inference_mode) -> bool:
    with mode():
        assert fast.backend_name(x) == "cpu-onednn"
        return rel_l2(fast(x), _oracle(fast, x)) < 1e-5


def test_model_made_under_inference_mode_runs_inside_and_outside_it():
    src, _ = make_pair(**KW)
    with torch.inference_mode():
        fast = unet_fast.UNet(**KW).eval()
        fast.load_state_dict(src.state_dict())
    assert fast.head.weight.is_inference()
    x = torch.randn(1, 1, 60, 60)
    assert _agrees(fast, x, torch.inference_mode)
    assert _agrees(fast, x, torch.no_grad)
    assert fast.segment(x[0], output="logits").shape == (2, 60, 60)


def test_model_loaded_under_inference_mode_runs(tmp_path):
    src, _ = make_pair(**KW)
    unet_fast.save(src.float(), tmp_path / "m.pt")
    with torch.inference_mode():
        fast = unet_fast.load(tmp_path / "m.pt")
    assert fast.head.weight.is_inference()
    assert _agrees(fast, torch.randn(1, 1, 60, 60), torch.no_grad)


@pytest.mark.parametrize("edit", ["in-place", "load_state_dict", "assign", "buffer"])
def test_inference_weights_changed_in_place_are_never_stale(edit):
    src, _ = make_pair(**KW)
    with torch.inference_mode():
        fast = unet_fast.UNet(**KW).eval()
        fast.load_state_dict(src.state_dict())
    x = torch.randn(1, 1, 60, 60)
    assert _agrees(fast, x)
    other = {k: v.float() for k, v in make_pair(**KW)[0].state_dict().items()}
    with torch.inference_mode():
        if edit == "in-place":  # no version counter records this
            fast.decoder[0].conv2.weight.mul_(-1.5)
        elif edit == "load_state_dict":  # copies into the same (inference) tensors
            fast.load_state_dict(other)
        elif edit == "assign":
            fast.load_state_dict({k: v.clone() for k, v in other.items()}, assign=True)
        else:  # a BatchNorm statistic, folded into the packed weights
            fast.encoder[1].norm1.running_var.mul_(3.0)
    assert _agrees(fast, x)
    assert _agrees(fast, x, torch.no_grad)


def test_normal_model_given_inference_tensors_by_assign():
    """Mixed weights: some tensors with a version counter, some without."""
    _, fast = make_pair(**KW)
    x = torch.randn(1, 1, 60, 60)
    assert _agrees(fast, x)
    with torch.inference_mode():
        fast.head.load_state_dict({"weight": torch.randn(2, 4, 1, 1), "bias": torch.zeros(2)},
                                  assign=True)
    assert _agrees(fast, x, torch.no_grad)
    with torch.inference_mode():
        fast.head.bias.add_(0.5)  # an inference tensor
    assert _agrees(fast, x)
    with torch.inference_mode():
        fast.encoder[0].conv1.weight.neg_()  # a normal tensor, edited in inference mode
    assert _agrees(fast, x)
