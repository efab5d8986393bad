"""Import of milesial/Pytorch-UNet state dicts: same outputs as its network, every variant."""

from __future__ import annotations

import pytest
import torch

import unet_fast
from unet_fast.checkpoint import CheckpointError
from unet_fast.milesial import from_milesial, looks_like_milesial

from .milesial_arch import MilesialUNet, randomise_


def _pair(bilinear: bool, conv_bias: bool = False, n_channels: int = 3, n_classes: int = 2):
    ref = randomise_(MilesialUNet(n_channels, n_classes, bilinear, width=4, conv_bias=conv_bias))
    return ref, from_milesial(ref.state_dict())


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("hw", [(32, 32), (37, 45), (19, 16)])
def test_matches_reference_network(bilinear, hw):
    ref, model = _pair(bilinear)
    assert model.config.upsample == ("bilinear" if bilinear else "transpose")
    assert (model.config.in_channels, model.config.num_classes) == (3, 2)
    assert model.config.base_channels == 4 and model.config.depth == 4
    assert not model.training
    # the channel plans coincide exactly, the bilinear bottleneck (C -> C/2 -> C/2) included
    mid = model.bottleneck.conv1.weight.shape[0]
    assert ref.down4.maxpool_conv[1].double_conv[0].weight.shape[0] == mid == (32 if bilinear else 64)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        expected = ref(x)
        got = model(x)
        got_ref_path = model.reference_forward(x)
    assert got.shape == expected.shape == (2, 2, *hw)
    torch.testing.assert_close(got_ref_path, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("bilinear", [True, False])
def test_old_checkpoints_with_conv_biases(bilinear):
    ref, model = _pair(bilinear, conv_bias=True, n_channels=1, n_classes=1)
    assert "inc.double_conv.0.bias" in ref.state_dict()
    x = torch.randn(1, 1, 21, 34)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-3)


def test_training_script_extras_and_file(tmp_path):
    ref = randomise_(MilesialUNet(3, 3, True, width=4))
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    sd["mask_values"] = [0, 127, 255]
    path = tmp_path / "checkpoint_epoch5.pth"
    torch.save(sd, path)
    assert looks_like_milesial(torch.load(path, weights_only=True))
    model = from_milesial(path)
    assert model.mask_values == [0, 127, 255]
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-3)
    # and it survives a round trip through unet_fast's own format, mask_values included
    unet_fast.save(model, tmp_path / "ours.pt")
    back = unet_fast.load(tmp_path / "ours.pt")
    assert back.mask_values == [0, 127, 255]
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref(x), atol=1e-4, rtol=1e-3)
    colours = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    model.mask_values = colours
    unet_fast.save(model, tmp_path / "colours.pt")
    assert unet_fast.load(tmp_path / "colours.pt").mask_values == colours
    # files written before mask_values were stored still load, without any
    raw = torch.load(tmp_path / "ours.pt", weights_only=True)
    del raw["mask_values"]
    torch.save(raw, tmp_path / "old.pt")
    assert getattr(unet_fast.load(tmp_path / "old.pt"), "mask_values", None) is None


def test_bad_state_dicts():
    sd = randomise_(MilesialUNet(3, 2, False, width=4)).state_dict()
    with pytest.raises(CheckpointError, match=r"not a milesial"):
        from_milesial({"encoder.weight": torch.zeros(1)})
    extra = dict(sd, **{"up1.attention.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys.*up1.attention.weight"):
        from_milesial(extra)
    # errors name the keys as they are in the user's file, not unet_fast's names for them
    missing = {k: v for k, v in sd.items() if not k.startswith("up2.conv.double_conv.4")}
    with pytest.raises(CheckpointError, match=r"missing keys up2.conv.double_conv.4.weight, "
                                              r"up2.conv.double_conv.4.bias") as e:
        from_milesial(missing)
    assert "decoder" not in str(e.value)
    wrong = dict(sd, **{"up3.up.weight": torch.zeros(3, 3, 2, 2)})
    with pytest.raises(CheckpointError, match=r"'up3.up.weight' has shape \(3, 3, 2, 2\)"):
        from_milesial(wrong)
    wrong = {f"module.{k}": v for k, v in sd.items()}
    wrong["module.down4.maxpool_conv.1.double_conv.1.running_var"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"'module.down4.maxpool_conv.1.double_conv.1."
                                              r"running_var' has shape \(5,\)"):
        from_milesial(wrong)
