"""MONAI integration: UNetFastInferer where MONAI takes an Inferer, and MONAI's own
sliding_window_inference with a unet_fast.UNet as predictor. Oracles: the float64 reference on a
numpy-mirrored image, and MONAI's sliding window run on the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_fast import sizes

from .helpers import make_pair, rel_l2

monai = pytest.importorskip("monai")
from monai.inferers import Inferer, sliding_window_inference  # noqa: E402

from unet_fast.integrations.monai import UNetFastInferer  # noqa: E402


def _whole_pass_reference(ref: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """One float64 pass over the image mirror-extended by numpy (reflect), cropped to it."""
    d = ref.config.depth
    m = sizes.margin(d)
    h, w = image.shape[-2:]
    eh, ew = (sizes.output_size(sizes.input_size_for_output(n, d), d) - n for n in (h, w))
    padded = np.pad(image.double().numpy(), ((0, 0), (0, 0), (m, m + eh), (m, m + ew)),
                    mode="reflect")
    with torch.no_grad():
        return ref(torch.from_numpy(padded))[..., :h, :w]


def test_inferer_is_a_monai_inferer_and_matches_a_whole_pass():
    ref, fast = make_pair(base_channels=4, depth=2)
    image = torch.randn(2, 1, 37, 61)
    inferer = UNetFastInferer(tile_size=44)
    assert isinstance(inferer, Inferer)
    with torch.no_grad():
        y = inferer(image, fast)
    assert y.shape == (2, 2, 37, 61)
    assert rel_l2(y, _whole_pass_reference(ref, image)) <= 1e-5


def test_inferer_keeps_metatensor_metadata_and_options():
    from monai.data import MetaTensor

    _, fast = make_pair(base_channels=4, depth=2)
    affine = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.randn(1, 1, 30, 30), affine=affine)
    labels = UNetFastInferer(output="labels")(image, fast)
    assert isinstance(labels, MetaTensor) and labels.shape == (1, 30, 30)
    assert torch.equal(labels.affine, affine)
    assert labels.dtype == torch.int64


def test_inferer_rejects_bad_use():
    with pytest.raises(TypeError, match="unknown UNetFastInferer option"):
        UNetFastInferer(roi_size=64)
    with pytest.raises(TypeError, match=r"needs a unet_fast\.UNet"):
        UNetFastInferer()(torch.randn(1, 1, 8, 8), torch.nn.Identity())
    _, fast = make_pair(base_channels=4, depth=2)
    with pytest.raises(TypeError, match="no extra arguments"):
        UNetFastInferer()(torch.randn(1, 1, 8, 8), fast, foo=1)


def test_monai_sliding_window_with_the_fast_model_as_predictor():
    ref, fast = make_pair(base_channels=4, depth=2, padding="same", in_channels=3,
                          num_classes=3, norm="batch")
    image = torch.randn(1, 3, 50, 41)
    kw = dict(roi_size=(32, 32), sw_batch_size=4, overlap=0.25, mode="gaussian")
    with torch.inference_mode():
        assert fast.backend_name(torch.randn(4, 3, 32, 32)) == "cpu-onednn"
        y = sliding_window_inference(image, predictor=fast, **kw)
        want = sliding_window_inference(image.double(), predictor=ref, **kw)
    assert y.shape == want.shape == (1, 3, 50, 41)
    assert rel_l2(torch.as_tensor(y), torch.as_tensor(want)) <= 1e-5

