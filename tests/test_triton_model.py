"""The whole fast model through the Triton backend against the reference model.

Small networks (base_channels 4, depth 2) so the interpreter finishes quickly; the backend object
is called directly, since the registry only offers it for CUDA inputs.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import unet_fast
from unet_fast import reference
from unet_fast.backends.cuda_triton import CudaTritonBackend

from .triton_helpers import DEVICE, needs_triton, rel_l2

pytestmark = needs_triton
BACKEND = CudaTritonBackend()


def make_models(padding, norm, upsample, in_channels=3, num_classes=3):
    ref = reference.UNet(in_channels=in_channels, num_classes=num_classes, base_channels=4,
                         depth=2, padding=padding, norm=norm, upsample=upsample)
    if norm == "batch":
        # non-trivial running statistics, so folding is actually exercised
        with torch.no_grad():
            for m in ref.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
    ref = ref.eval().to(DEVICE)
    return ref, unet_fast.UNet.from_reference(ref)


def run_fast(fast, x):
    with torch.inference_mode():
        return BACKEND.forward(fast, x)


def packed_keys(model):
    """The packed-weight entries of the cache (on a GPU it also holds batch 1's CUDA graph)."""
    return [k for k in model.weight_cache.keys() if k[1] != "graph"]


def reference64(ref, x):
    with torch.no_grad():
        return copy.deepcopy(ref).double()(x.double())


# valid needs size 4k (>= 44) at depth 2; same takes any size (odd ones exercise the zero-padded
# join). Batch 1 for the bigger valid inputs keeps the interpreter fast.
MODEL_CASES = [
    ("valid", None, "transpose", (1, 44, 48)),
    ("valid", "batch", "bilinear", (1, 44, 44)),
    ("valid", None, "bilinear", (1, 48, 44)),
    ("valid", "batch", "transpose", (1, 44, 44)),
    ("same", None, "transpose", (3, 10, 13)),
    ("same", "batch", "bilinear", (3, 13, 11)),
    ("same", None, "bilinear", (1, 9, 7)),
    ("same", "batch", "transpose", (1, 11, 12)),
]


@pytest.mark.parametrize("padding,norm,upsample,shape", MODEL_CASES)
def test_fast_model_matches_reference_fp32(padding, norm, upsample, shape):
    ref, fast = make_models(padding, norm, upsample)
    n, h, w = shape
    x = torch.randn(n, 3, h, w, device=DEVICE)
    if n == 3:
        x = x.contiguous(memory_format=torch.channels_last)
    elif upsample == "bilinear":
        x = torch.randn(n, 3, h, 2 * w, device=DEVICE)[..., ::2]  # non-contiguous view
    y = run_fast(fast, x)
    expected = reference64(ref, x)
    assert y.dtype == torch.float32 and y.shape == expected.shape and y.is_contiguous()
    assert rel_l2(y, expected) <= 1e-5


def test_unfused_pool_gives_the_same_results():
    _, fast = make_models("same", "batch", "transpose")
    x = torch.randn(1, 3, 13, 14, device=DEVICE)
    with torch.inference_mode():
        unfused = CudaTritonBackend(fuse_pool=False).forward(fast, x)
    # same math; not bitwise, as the pool epilogue orders the GEMM rows differently
    torch.testing.assert_close(run_fast(fast, x), unfused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,upsample", [
    (torch.float16, "transpose"), (torch.float16, "bilinear"), (torch.bfloat16, "transpose"),
])
def test_fast_model_low_precision(dtype, upsample):
    """``model.half()/.bfloat16()`` and autocast: within 2x PyTorch's own error in that dtype."""
    ref, fast = make_models("same", None, upsample)
    x = torch.randn(1, 3, 11, 9, device=DEVICE)
    y = run_fast(copy.deepcopy(fast).to(dtype), x.to(dtype))
    assert y.dtype == dtype
    expected = reference64(ref, x)
    with torch.no_grad():
        torch_low = copy.deepcopy(ref).to(dtype)(x.to(dtype))
    assert rel_l2(y, expected) <= 2 * rel_l2(torch_low, expected)
    assert (y.argmax(1) == expected.argmax(1)).double().mean() >= 0.99
    # autocast gives the same computation from the fp32 model
    with torch.autocast(DEVICE, dtype=dtype):
        y_auto = run_fast(fast, x)
    assert y_auto.dtype == dtype
    torch.testing.assert_close(y_auto, y, rtol=0, atol=0)


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


FORBIDDEN = ("conv", "cat", "max_pool", "upsample", "pad", "relu", "batch_norm")


def test_forward_dispatches_only_unet_fast_kernels():
    _, fast = make_models("valid", "batch", "transpose")
    x = torch.randn(1, 3, 44, 44, device=DEVICE)
    # The mode sees the top-level ops (weight packing included); the profiler also sees the ops
    # nested inside the custom ops, which must be allocations only.
    with torch.inference_mode(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof, OpRecorder() as rec:
        BACKEND.forward(fast, x)
    top = [op for op in rec.ops if not op.startswith("unet_fast.")]
    kernels = [op for op in rec.ops if op.startswith("unet_fast.")]
    assert sorted(set(kernels)) == [
        "unet_fast.conv3x3.default", "unet_fast.conv3x3_cat.default",
        "unet_fast.conv3x3_head.default", "unet_fast.conv3x3_pool.default",
        "unet_fast.upconv2x2.default",
    ]
    assert len(kernels) == 2 * 2 + 2 + 2 * 3  # encoder, bottleneck, decoder (up, cat, conv)
    # aten ops only: on a GPU the profiler also lists runtime calls, not operators
    nested = {e.name for e in prof.events() if e.name.startswith("aten::")}
    assert nested, "the profiler recorded no operators"
    for name in (*top, *nested):
        if name.startswith("unet_fast"):
            continue
        assert not any(f in name for f in FORBIDDEN), name


def test_weights_packed_once_and_refreshed_after_change():
    _, fast = make_models("same", None, "transpose")
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    y1 = run_fast(fast, x)
    assert len(packed_keys(fast)) == 1
    run_fast(fast, x)
    assert len(packed_keys(fast)) == 1
    with torch.no_grad():
        fast.head.bias.add_(1.0)
    y2 = run_fast(fast, x)
    torch.testing.assert_close(y2, y1 + 1.0, rtol=1e-5, atol=1e-5)


def test_registered_for_cuda_without_importing_triton():
    code = ("import sys, unet_fast, unet_fast.ops; "
            "assert 'triton' not in sys.modules, 'triton imported at import time'; "
            "assert 'cuda-triton' in unet_fast.dispatch.registered_backends('cuda'); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_supports():
    _, fast = make_models("same", None, "transpose")
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    assert BACKEND.supports(fast, x)
    assert not BACKEND.supports(copy.deepcopy(fast).double(), x.double())


class ArgRecorder(TorchDispatchMode):
    """Records (op, {argument name: value}) of every unet_fast op dispatched."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith("unet_fast."):
            names = [a.name for a in func._schema.arguments]
            self.calls.append((str(func), dict(zip(names, args, strict=False))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("allow", [True, False])
def test_fp32_follows_cudnn_allow_tf32(monkeypatch, allow):
    """fp32 convolutions use TF32 exactly when cuDNN's would (torch.backends.cudnn.allow_tf32);
    half precision never does."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
    _, fast = make_models("same", None, "transpose")
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    for dtype, want in ((torch.float32, allow), (torch.float16, False)):
        model = copy.deepcopy(fast).to(dtype)
        with torch.inference_mode(), ArgRecorder() as rec:
            BACKEND.forward(model, x.to(dtype))
        flags = [args["allow_tf32"] for _, args in rec.calls if "allow_tf32" in args]
        assert len(flags) == 2 * 2 + 2 + 2 * 3, rec.calls
        assert all(f is want for f in flags), (dtype, flags)


def test_tf32_weights_packed_rounded_to_nearest(monkeypatch):
    """TF32 convolutions get their own packed weights, rounded to the nearest TF32 value (the
    tensor cores would truncate them); the network stays within TF32's error of float64."""
    from unet_fast.triton_kernels._common import round_to_tf32

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    ref, fast = make_models("same", "batch", "transpose")
    x = torch.randn(1, 3, 11, 12, device=DEVICE)
    y = run_fast(fast, x)
    (key,) = packed_keys(fast)
    assert key[-1] is True  # keyed on TF32
    packed = fast.weight_cache.get(fast, key, lambda: None)
    convs = [c for pair in (*packed.encoder, packed.bottleneck) for c in pair]
    convs += [c for _, *pair in packed.decoder for c in pair]
    for w in [c.weight for c in convs] + [up.weight for up, *_ in packed.decoder]:
        torch.testing.assert_close(w, round_to_tf32(w), rtol=0, atol=0)
    assert 0 < rel_l2(y, reference64(ref, x)) <= 2e-3
