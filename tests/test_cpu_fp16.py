"""fp16 on the CPU runs the fast oneDNN path in fp32 (rounded to fp16 once at the end), says so
once, and is at least as accurate as PyTorch's own fp16. Oracle: the float64 reference."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from unet_fast.backends import cpu_onednn

from .helpers import make_pair, rel_l2


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(cpu_onednn, "_FP16_WARNED", False)


def test_fp16_model_uses_the_fast_path_in_fp32(fresh_warning):
    _, fast = make_pair(base_channels=8, depth=2, norm="batch")
    x = torch.randn(2, 1, 44, 52)
    fast = fast.half()
    xh = x.half()
    with torch.inference_mode():
        # the oracle: float64 on exactly the fp16 weights and input
        ref64 = copy.deepcopy(fast).double().reference_forward(xh.double())
        torch_fp16 = copy.deepcopy(fast).reference_forward(xh)
        assert fast.backend_name(xh) == "cpu-onednn"
        with pytest.warns(UserWarning, match="float16 on the CPU"):
            y = fast(xh)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once, not per call
            fast(xh)
    assert y.dtype == torch.float16 and y.shape == ref64.shape
    err = rel_l2(y, ref64)
    assert err <= rel_l2(torch_fp16, ref64)
    # fp32 compute: the only error left is the final rounding to fp16 (unit roundoff 2**-11)
    assert err <= 2.0**-11


def test_fp16_autocast_on_cpu_uses_the_fast_path(fresh_warning):
    _, fast = make_pair(base_channels=4, depth=2)
    x = torch.randn(1, 1, 44, 44)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        assert fast.backend_name(x) == "cpu-onednn"
        with pytest.warns(UserWarning, match="float16 on the CPU"):
            y = fast(x)
    assert y.dtype == torch.float16
