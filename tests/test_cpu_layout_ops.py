"""The CPU backend's pooling and decoder join (unet_fast/backends/cpu_pool.py, cpu_onednn.py)
against PyTorch's own ops: ``F.max_pool2d``, and ``F.conv_transpose2d`` followed by the
reference's ``join_skip`` computed in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import rel_l2
from unet_fast.backends.cpu_onednn import _pack_up, upconv_joined
from unet_fast.backends.cpu_pool import maxpool2x2
from unet_fast.reference import join_skip

CL = torch.channels_last


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 16, 16), (2, 5, 9, 7), (1, 3, 3, 2), (1, 512, 65, 64)])
def test_maxpool2x2_equals_max_pool2d_bit_for_bit(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    x.view(-1)[:: 97] = float("inf")
    x.view(-1)[5:: 89] = -float("inf")
    x.view(-1)[3:: 101] = float("nan")
    x = x.contiguous(memory_format=CL)
    y, ref = maxpool2x2(x), F.max_pool2d(x, 2)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=CL)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("same", "skip_hw", "up_in_hw"), [
    (False, (20, 22), (7, 8)),   # valid: the skip is center-cropped (odd and even margins)
    (False, (14, 14), (7, 7)),   # no crop
    (True, (15, 13), (7, 6)),    # same: the up-sampled map is zero-padded (odd pixel bottom/right)
    (True, (16, 12), (8, 6)),    # no padding
])
def test_upconv_joined_equals_conv_transpose_then_join(same, skip_hw, up_in_hw, dtype):
    g = torch.Generator().manual_seed(1)
    cin, cup, cskip = 24, 12, 12
    up = torch.nn.ConvTranspose2d(cin, cup, 2, stride=2)
    with torch.no_grad():
        up.weight.copy_(torch.randn(up.weight.shape, generator=g) / cin ** 0.5)
        up.bias.copy_(torch.randn(cup, generator=g))
    x = torch.randn(2, cin, *up_in_hw, generator=g).to(dtype)
    skip = torch.randn(2, cskip, *skip_hw, generator=g).to(dtype)
    ref = join_skip(skip.double(), F.conv_transpose2d(x.double(), up.weight.double(),
                                                      up.bias.double(), stride=2), same)
    y = upconv_joined(x.contiguous(memory_format=CL), _pack_up(up, dtype),
                      skip.contiguous(memory_format=CL), same)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=CL)
    assert torch.equal(y[:, :cskip].double(), ref[:, :cskip])  # the skip, copied exactly
    assert rel_l2(y, ref) <= (1e-6 if dtype == torch.float32 else 1e-2), rel_l2(y, ref)
    if same and skip_hw != (2 * up_in_hw[0], 2 * up_in_hw[1]):
        border = ref[:, cskip:] == 0
        assert bool((y[:, cskip:][border] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_one_channel_network_runs_nhwc_from_its_first_layer(monkeypatch, dtype):
    """Regression: a one-channel input kept NCHW strides through contiguous(channels_last), so
    oneDNN wrote the first layer's output NCHW (a slower kernel, then a full-size layout copy in
    the next layer). Every 3x3 layer's output must be NHWC, and the result match float64."""
    from tests.helpers import make_pair
    from unet_fast.backends import cpu_conv3x3

    monkeypatch.setenv("UNET_FAST_CPU_CONV", "direct")
    ref, fast = make_pair(base_channels=8, depth=2)
    outs = []
    real = cpu_conv3x3.onednn_conv

    def recording(*a, **k):
        y = real(*a, **k)
        outs.append(y)
        return y

    monkeypatch.setattr(cpu_conv3x3, "onednn_conv", recording)
    x = torch.randn(2, 1, 60, 60, dtype=torch.float64)
    with torch.no_grad():
        y = fast(x.to(dtype)) if dtype == torch.float32 else fast.to(dtype)(x.to(dtype))
    assert len(outs) == 10
    for out in outs:
        assert out.is_contiguous(memory_format=CL) and not out.is_contiguous(), out.stride()
    if dtype == torch.float32:
        assert rel_l2(y, ref(x)) <= 1e-5
