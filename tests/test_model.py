"""The drop-in unet_fast.UNet on the CPU: weights contract, parity, dispatch, caches, errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import unet_fast
from unet_fast import reference
from unet_fast.dispatch import select_backend

from .helpers import label_agreement, make_pair, rel_l2

VARIANTS = [
    ({}, (1, 188, 204)),
    ({"padding": "same"}, (3, 37, 53)),
    ({"upsample": "bilinear"}, (1, 204, 188)),
    ({"norm": "batch"}, (3, 188, 188)),
    ({"padding": "same", "norm": "batch", "upsample": "bilinear", "in_channels": 3}, (1, 45, 32)),
]


def _input(cfg_kw, shape, dtype=torch.float64):
    n, h, w = shape
    return torch.randn(n, cfg_kw.get("in_channels", 1), h, w, dtype=dtype)


@pytest.mark.parametrize("kw,shape", VARIANTS)
def test_fp32_parity_with_float64_reference(kw, shape):
    ref, fast = make_pair(base_channels=8, **kw)
    x = _input(kw, shape)
    with torch.inference_mode():
        assert fast.backend_name(x.float()) == "cpu-onednn"
        y = fast(x.float())
        r = ref(x)
    assert y.dtype == torch.float32 and y.shape == r.shape and y.is_contiguous()
    assert rel_l2(y, r) <= 1e-5


@pytest.mark.parametrize("kw,shape", VARIANTS[:3])
def test_bf16_within_twice_pytorchs_own_error(kw, shape):
    ref, fast = make_pair(base_channels=8, **kw)
    x = _input(kw, shape)
    with torch.inference_mode():
        r = ref(x)
        eager = reference.UNet(base_channels=8, **kw).eval()
        eager.load_state_dict(fast.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch_err = rel_l2(eager(x.float()), r)
            y_auto = fast(x.float())
        y_model = fast.bfloat16()(x.bfloat16())
    assert y_auto.dtype == y_model.dtype == torch.bfloat16
    for y in (y_auto, y_model):
        assert rel_l2(y, r) <= 2 * torch_err
        assert label_agreement(y, r) >= 0.99


def test_state_dict_round_trip_both_ways():
    ref = reference.UNet(base_channels=4, norm="batch")
    fast = unet_fast.UNet(base_channels=4, norm="batch")
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict(), strict=True)
    back = reference.UNet(base_channels=4, norm="batch")
    back.load_state_dict(fast.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_from_reference_shares_weights():
    ref = reference.UNet(base_channels=4, depth=2).eval()
    fast = unet_fast.UNet.from_reference(ref)
    assert not fast.training
    assert all(a is b for a, b in zip(ref.parameters(), fast.parameters(), strict=True))
    x = torch.randn(1, 1, 60, 60)
    with torch.no_grad():
        before = fast(x)
        ref.head.bias += 1.0  # seen by the fast model too, packed cache included
        after = fast(x)
        assert torch.allclose(after, before + 1.0, atol=1e-5)


def test_dispatch_choices():
    _, fast = make_pair(base_channels=4, depth=2, norm="batch", dropout=0.3)
    x = torch.randn(1, 1, 60, 60)
    assert select_backend(fast, x).name == "reference"  # autograd records
    with torch.no_grad():
        assert select_backend(fast, x).name == "cpu-onednn"
        fast.double()
        assert select_backend(fast, x.double()).name == "reference"  # no oneDNN float64
        fast.float()
        fast.train()  # BatchNorm batch statistics and dropout need the reference ops
        assert select_backend(fast, x).name == "reference"
    with torch.inference_mode():
        fast.eval()
        assert select_backend(fast, x).name == "cpu-onednn"


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_inference_runs_the_fused_onednn_path(monkeypatch):
    monkeypatch.delenv("UNET_FAST_CPU_CONV", raising=False)  # (layers this small run direct)
    _, fast = make_pair(base_channels=4, depth=2)
    x = torch.randn(1, 1, 60, 60)
    with torch.inference_mode(), RecordOps() as rec:
        fast(x)
    assert rec.ops.count("mkldnn._convolution_pointwise") == 2 * 5 + 1
    # the 2x2 up-convolution is two GEMMs per decoder level (one per output row parity, so only
    # half the output is ever held twice); no aten convolution is left
    assert rec.ops.count("aten.addmm") == 2 * 2
    assert not {"aten.convolution", "aten.conv2d", "aten.conv_transpose2d", "aten.relu",
                "aten.relu_"} & set(rec.ops)


def test_training_through_the_fast_model_matches_reference_gradients():
    torch.manual_seed(1)
    ref = reference.UNet(base_channels=4, depth=2)
    fast = unet_fast.UNet(base_channels=4, depth=2)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 60, 60)
    ref(x).square().mean().backward()
    fast(x).square().mean().backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_weight_cache_follows_every_kind_of_update():
    ref, fast = make_pair(base_channels=4, depth=2, norm="batch")
    ref = ref.float()
    x = torch.randn(1, 1, 60, 60)

    def check():
        with torch.inference_mode():
            assert rel_l2(fast(x), ref(x)) < 1e-5

    check()
    with torch.no_grad():  # in-place edit
        for p in (fast.encoder[0].conv1.weight, ref.encoder[0].conv1.weight):
            p.mul_(-2.0)
    check()
    new = reference.UNet(base_channels=4, depth=2, norm="batch").eval()
    fast.load_state_dict(new.state_dict())  # load_state_dict
    ref = new
    check()
    opt = torch.optim.SGD(fast.parameters(), lr=1e-2)  # optimizer step
    fast(x).square().mean().backward()
    opt.step()
    ref.load_state_dict(fast.state_dict())
    check()
    with torch.no_grad():  # BatchNorm buffers are folded too
        fast.encoder[1].norm2.running_mean.add_(3.0)
        ref.encoder[1].norm2.running_mean.add_(3.0)
    check()
    fast.double().float()  # .to() round trip swaps storages
    check()
    assert len(fast.weight_cache) == 1


def test_weight_cache_clear_after_data_writes():
    _, fast = make_pair(base_channels=4, depth=2)
    ref = reference.UNet(base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 60, 60)
    with torch.inference_mode():
        fast(x)
        fast.head.bias.data.add_(1.0)  # bypasses PyTorch's version counter ...
        fast.clear_weight_cache()  # ... so it is documented to need this
        ref.load_state_dict(fast.state_dict())
        assert rel_l2(fast(x), ref(x)) < 1e-5


def test_channels_last_and_non_contiguous_inputs():
    ref, fast = make_pair(base_channels=4, depth=2, in_channels=3)
    x = torch.randn(2, 3, 60, 76, dtype=torch.float64)
    with torch.inference_mode():
        r = ref(x)
        assert rel_l2(fast(x.float().contiguous(memory_format=torch.channels_last)), r) < 1e-5
        wide = torch.randn(2, 3, 60, 152, dtype=torch.float64)
        view = wide[..., ::2]
        assert not view.is_contiguous()
        assert rel_l2(fast(view.float()), ref(view)) < 1e-5


def test_deterministic_and_cache_does_not_grow():
    _, fast = make_pair(base_channels=4, depth=2)
    x = torch.randn(1, 1, 60, 60)
    with torch.inference_mode():
        first = fast(x)
        for _ in range(3):
            assert torch.equal(fast(x), first)
    assert len(fast.weight_cache) == 1


def test_empty_batch():
    fast = unet_fast.UNet(base_channels=4, depth=2).eval()
    with torch.inference_mode():
        out = fast(torch.empty(0, 1, 60, 76))
    assert out.shape == (0, 2, 60 - 40, 76 - 40)


@pytest.mark.parametrize("x,exc,msg", [
    (torch.randn(1, 60, 60), ValueError, r"expected a 4-D input.*unsqueeze\(0\)"),
    (torch.randn(1, 3, 60, 60), ValueError, r"expected 1 input channel"),
    (torch.ones(1, 1, 60, 60, dtype=torch.uint8), TypeError, "floating-point input"),
    (torch.randn(1, 1, 60, 60, dtype=torch.float64), TypeError, "does not match the model's"),
    (torch.randn(1, 1, 62, 60), ValueError, r"input height 62 is invalid.*60 or 64"),
    (torch.randn(1, 1, 60, 60, device="meta"), ValueError, "input is on meta"),
    ([[1.0]], TypeError, "expected a torch.Tensor"),
])
def test_input_errors(x, exc, msg):
    fast = unet_fast.UNet(base_channels=4, depth=2)
    with torch.no_grad(), pytest.raises(exc, match=msg):
        fast(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected_by_default(bad):
    fast = unet_fast.UNet(base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 60, 60)
    x[0, 0, 5, 7] = bad
    with torch.no_grad(), pytest.raises(ValueError, match="NaN or Inf"):
        fast(x)
    fast.check_finite = False
    with torch.no_grad():
        assert fast(x).shape == (1, 2, 20, 20)


@pytest.mark.gpu
def test_cuda_graph_capture_with_the_default_finite_check():
    fast = unet_fast.UNet(base_channels=4, depth=2).cuda().eval()
    x = torch.randn(1, 1, 60, 60, device="cuda")
    with torch.inference_mode():
        expected = fast(x)  # warm-up: autotuning and packing happen outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fast(x)
        graph.replay()
        torch.testing.assert_close(out, expected)


def test_weight_change_drops_every_stale_cache_entry():
    """Entries built from old weights are garbage once the weights change (they would be rebuilt
    on use): the first rebuild drops them all, so e.g. CUDA graphs of other shapes do not keep
    their memory."""
    _, fast = make_pair(base_channels=4, depth=2)
    cache = fast.weight_cache
    cache.get(fast, "a", lambda: 1)
    cache.get(fast, "b", lambda: 2)
    assert len(cache) == 2
    with torch.no_grad():
        fast.head.bias.add_(1.0)
    assert cache.get(fast, "a", lambda: 3) == 3
    assert list(cache.keys()) == ["a"]
