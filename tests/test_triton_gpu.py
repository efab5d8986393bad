"""GPU checks of the Triton path at full size (the paper's network), per DESIGN.md's tolerances.

fp32 without TF32: <= 1e-5 relative L2 against float64. TF32, fp16, bf16: <= 2x the error PyTorch
itself (cuDNN) makes in the same precision, and argmax labels agreeing on >= 99.9% of pixels, or,
where PyTorch itself disagrees on more than 0.05% (bf16 on a random network, whose two logits are
close), on all but 2x the pixels PyTorch gets wrong: the same 2x rule applied to the labels.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import unet_fast
from unet_fast import reference

from .test_triton_ops import opcheck_cases
from .triton_helpers import INTERPRET, rel_l2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(INTERPRET, reason="compiled Triton kernels, not the interpreter"),
    # these tests are about the Triton kernels: a failed first-call self-check would quietly
    # hand every later call to the stock fallback, so it fails the test instead
    pytest.mark.filterwarnings("error:unet_fast. the Triton kernels failed their self-check"),
]


@contextlib.contextmanager
def tf32(enabled: bool):
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def paper():
    """The paper's network, a 572x572 input, and its float64 logits (computed on the GPU)."""
    torch.manual_seed(0)
    ref = reference.UNet().eval().cuda()
    x = torch.randn(1, 1, 572, 572, device="cuda")
    with torch.no_grad():
        expected = copy.deepcopy(ref).double()(x.double())
    return ref, unet_fast.UNet.from_reference(ref), x, expected


def argmax_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).double().mean().item()


def min_label_agreement(torch_agreement: float) -> float:
    """DESIGN.md's 99.9%, unless PyTorch itself misses that: then 2x PyTorch's disagreement."""
    return min(0.999, 1.0 - 2.0 * (1.0 - torch_agreement))


def test_backend_selected(paper):
    _, fast, x, _ = paper
    with torch.inference_mode():
        assert fast.backend_name(x) == "cuda-triton"


def test_fp32_ieee_parity(paper):
    _, fast, x, expected = paper
    with tf32(False), torch.inference_mode():
        y = fast(x)
    assert y.shape == expected.shape == (1, 2, 388, 388)
    assert rel_l2(y, expected) <= 1e-5


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16", "autocast-fp16", "autocast-bf16"])
def test_reduced_precision_parity(paper, mode):
    ref, fast, x, expected = paper
    dtype = torch.bfloat16 if mode.endswith("bf16") else torch.float16
    with torch.inference_mode():
        if mode == "tf32":
            with tf32(True):
                y, y_torch = fast(x), ref(x)
        elif mode.startswith("autocast"):
            with torch.autocast("cuda", dtype=dtype):
                y, y_torch = fast(x), ref(x)
            assert y.dtype == dtype
        else:
            ref_low = copy.deepcopy(ref).to(dtype)
            fast_low = unet_fast.UNet.from_reference(ref_low)
            y, y_torch = fast_low(x.to(dtype)), ref_low(x.to(dtype))
            assert y.dtype == dtype
    err, torch_err = rel_l2(y, expected), rel_l2(y_torch, expected)
    assert err <= 2 * torch_err, (err, torch_err)
    agreement, torch_agreement = argmax_agreement(y, expected), argmax_agreement(y_torch, expected)
    assert agreement >= min_label_agreement(torch_agreement), (agreement, torch_agreement)


def test_min_label_agreement():
    assert min_label_agreement(1.0) == min_label_agreement(0.9996) == 0.999
    assert min_label_agreement(0.996) == pytest.approx(0.992)


def test_deterministic(paper):
    _, fast, x, _ = paper
    with torch.inference_mode():
        a, b = fast(x), fast(x)
    assert torch.equal(a, b)


def test_no_memory_growth(paper):
    _, fast, x, _ = paper
    with torch.inference_mode():
        for _ in range(2):
            fast(x)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(5):
            fast(x)
        torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("norm,upsample,padding", [
    ("batch", "bilinear", "same"), (None, "transpose", "same"), ("batch", "transpose", "valid"),
])
def test_variants_fp32(norm, upsample, padding):
    torch.manual_seed(0)
    ref = reference.UNet(in_channels=3, num_classes=5, base_channels=32, norm=norm,
                         upsample=upsample, padding=padding).eval().cuda()
    fast = unet_fast.UNet.from_reference(ref)
    size = 189 if padding == "same" else 188
    x = torch.randn(2, 3, size, size, device="cuda")
    with tf32(False), torch.inference_mode():
        y = fast(x)
        expected = copy.deepcopy(ref).double()(x.double())
    assert rel_l2(y, expected) <= 1e-5


def test_opcheck_on_gpu():
    for op, args in opcheck_cases():
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op, args)


def test_torch_compile_traces_the_ops():
    from unet_fast.triton_kernels.conv3x3 import pack_conv3x3_weight

    from unet_fast.ops import fused

    x = torch.randn(2, 16, 33, 35, device="cuda")
    w = pack_conv3x3_weight(torch.randn(24, 16, 3, 3, device="cuda") * 0.1)
    b = torch.randn(24, device="cuda")

    def f(x):
        _, p = fused.conv3x3_pool(x, w, b, 1, False)
        return fused.conv3x3(p, pack_conv3x3_weight(torch.ones(8, 24, 3, 3, device="cuda")),
                             None, 0, True, False)

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))


def test_cuda_graph_replay_matches_eager(paper):
    from unet_fast.backends.cuda_triton import CudaTritonBackend

    _, fast, x, _ = paper
    graphed, launched = CudaTritonBackend(cuda_graphs=True), CudaTritonBackend(cuda_graphs=False)
    with torch.inference_mode():
        eager = launched.forward(fast, x)
        first = graphed.forward(fast, x)
        x2 = torch.randn_like(x)
        second = graphed.forward(fast, x2)  # replay with new input data
        torch.testing.assert_close(first, eager, rtol=0, atol=0)
        torch.testing.assert_close(second, launched.forward(fast, x2), rtol=0, atol=0)
        with torch.no_grad():
            fast.head.bias.add_(1.0)  # a weight change re-captures
        try:
            torch.testing.assert_close(graphed.forward(fast, x), eager + 1.0, rtol=1e-5,
                                       atol=1e-5)
        finally:
            with torch.no_grad():
                fast.head.bias.sub_(1.0)
