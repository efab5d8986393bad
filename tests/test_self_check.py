"""The stock fallback path and the Triton backend's first-call self-check, on the CPU.

The stock backend is checked against the float64 reference model. The switching logic runs the
real Triton kernels under the interpreter (tiny networks) with the check forced on, and plants a
wrong, a NaN or a crashing kernel path with monkeypatch: the warning must fire exactly once per
key, every output (the first one included) must then be the reference's, and a correct path must
be kept without a warning.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from unet_fast.backends import self_check
from unet_fast.backends.cuda_triton import CudaTritonBackend
from unet_fast.backends.stock import StockBackend

from .helpers import make_pair, rel_l2
from .test_triton_model import make_models
from .triton_helpers import needs_triton


@pytest.mark.parametrize("padding,norm,upsample,size", [
    ("valid", None, "transpose", 44), ("valid", "batch", "bilinear", 60),
    ("same", "batch", "transpose", 13), ("same", None, "bilinear", 16),
])
def test_stock_backend_matches_float64_reference(padding, norm, upsample, size):
    ref, fast = make_pair(in_channels=2, num_classes=3, base_channels=4, depth=2,
                          padding=padding, norm=norm, upsample=upsample)
    x = torch.randn(2, 2, size, size + 4)
    with torch.inference_mode():
        y = StockBackend().forward(fast, x)
        expected = ref(x.double())
    assert y.dtype == torch.float32 and y.shape == expected.shape and y.is_contiguous()
    assert rel_l2(y, expected) <= 1e-5


def test_stock_backend_bfloat16_within_twice_torch_error():
    ref, fast = make_pair(in_channels=1, num_classes=2, base_channels=8, depth=2, norm="batch")
    x = torch.randn(1, 1, 60, 60)
    fast16, ref16 = copy.deepcopy(fast).bfloat16(), copy.deepcopy(ref).bfloat16()
    with torch.inference_mode():
        expected = ref(x.double())
        y = StockBackend().forward(fast16, x.bfloat16())
        y_torch = ref16(x.bfloat16())  # PyTorch's own bf16 error: the unfolded reference ops
    assert y.dtype == torch.bfloat16
    assert rel_l2(y, expected) <= 2 * rel_l2(y_torch, expected)


def test_bound_follows_design_numerics():
    assert self_check.bound(1e-9) == self_check.FP32_BOUND == 1e-5
    assert self_check.bound(3e-3) == 6e-3


@pytest.mark.parametrize("padding,depth", [("valid", 4), ("same", 3), ("valid", 2)])
def test_check_input_size_is_valid(padding, depth):
    from unet_fast import sizes

    fast = make_pair(base_channels=2, depth=depth, padding=padding)[1]
    n = self_check.check_input_size(fast)
    assert sizes.is_valid_input_size(n, depth, padding) and sizes.output_size(n, depth, padding) > 1


# ------------------------------------------------------------------ switching (Triton interpreter)


def _models():
    ref, fast = make_models("valid", "batch", "transpose", in_channels=2, num_classes=3)
    return ref, fast, torch.randn(1, 2, 44, 48)


def _reference64(ref, x):
    with torch.no_grad():
        return copy.deepcopy(ref).double()(x.double())


def _calls(backend, fast, xs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.inference_mode():
            ys = [backend.forward(fast, x) for x in xs]
    return ys, [w for w in caught if "self-check" in str(w.message)]


@needs_triton
def test_correct_kernels_are_kept_without_warning():
    ref, fast, x = _models()
    backend = CudaTritonBackend(self_check=True)
    ys, warned = _calls(backend, fast, [x, x])
    assert warned == []
    assert list(backend.verdicts.values()) == [True]
    with torch.inference_mode():
        plain = CudaTritonBackend(self_check=False).forward(fast, x)
    torch.testing.assert_close(ys[0], plain, rtol=0, atol=0)  # the kernels' own output
    assert rel_l2(ys[1], _reference64(ref, x)) <= 1e-5


@needs_triton
@pytest.mark.parametrize("fault", ["wrong", "nan", "raises"])
def test_failing_kernels_warn_once_and_fall_back(monkeypatch, fault):
    ref, fast, x = _models()
    real_run = CudaTritonBackend._run

    def bad_run(self, packed, t, tf32):
        if fault == "raises":
            raise RuntimeError("planted kernel failure")
        y = real_run(self, packed, t, tf32)
        return y * 1.01 if fault == "wrong" else torch.full_like(y, float("nan"))

    monkeypatch.setattr(CudaTritonBackend, "_run", bad_run)
    backend = CudaTritonBackend(self_check=True)
    x2 = torch.randn(1, 2, 60, 44)
    ys, warned = _calls(backend, fast, [x, x2, x])
    assert len(warned) == 1 and issubclass(warned[0].category, RuntimeWarning)
    assert "stock cuDNN path" in str(warned[0].message)
    assert list(backend.verdicts.values()) == [False]
    for y, xi in zip(ys, [x, x2, x], strict=True):
        assert rel_l2(y, _reference64(ref, xi)) <= 1e-5


@needs_triton
def test_kernels_that_fail_on_a_later_call_fall_back_once(monkeypatch):
    ref, fast, x = _models()
    backend = CudaTritonBackend(self_check=True)
    _, warned = _calls(backend, fast, [x])
    assert warned == []

    def crash(self, packed, t, tf32):
        raise RuntimeError("planted launch failure")

    monkeypatch.setattr(CudaTritonBackend, "_run", crash)
    ys, warned = _calls(backend, fast, [x, x])
    assert len(warned) == 1 and "planted launch failure" in str(warned[0].message)
    assert all(rel_l2(y, _reference64(ref, x)) <= 1e-5 for y in ys)


@needs_triton
def test_each_precision_and_config_is_checked_once(monkeypatch):
    _, fast, x = _models()
    backend = CudaTritonBackend(self_check=True)
    checks = []
    real = self_check.run_check
    monkeypatch.setattr(self_check, "run_check", lambda *a: checks.append(a[2]) or real(*a))
    _calls(backend, fast, [x, x])
    half = copy.deepcopy(fast).half()
    _calls(backend, half, [x.half()])
    other = make_models("same", None, "bilinear", in_channels=2, num_classes=3)[1]
    _calls(backend, other, [torch.randn(1, 2, 9, 9)])
    assert checks == [torch.float32, torch.float16, torch.float32]
    assert len(backend.verdicts) == 3 and all(backend.verdicts.values())


def test_check_is_off_for_cpu_inputs_by_default_and_by_env(monkeypatch):
    backend = CudaTritonBackend()
    assert not backend._checking(torch.empty(1))
    cuda_like = type("T", (), {"is_cuda": True})()
    assert backend._checking(cuda_like)
    monkeypatch.setenv("UNET_FAST_SELF_CHECK", "0")
    assert not backend._checking(cuda_like)
    assert CudaTritonBackend(self_check=True)._checking(torch.empty(1))
