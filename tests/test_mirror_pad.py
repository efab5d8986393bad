"""unet_fast.ops.mirror_pad (native op) against numpy.pad, including pads larger than the image."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from unet_fast.ops import mirror_pad
from unet_fast.ops.tiling import _ops

MODES = ("reflect", "symmetric")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8)
DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def numpy_pad(x: torch.Tensor, pad: list[int], mode: str) -> torch.Tensor:
    top, bottom, left, right = pad
    as_np = x.float().cpu().numpy() if x.dtype == torch.bfloat16 else x.cpu().numpy()
    out = np.pad(as_np, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode)
    return torch.from_numpy(out).to(x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_numpy_random_shapes(mode: str, device: str) -> None:
    rng = random.Random(1)
    for _ in range(150):
        h, w = rng.randint(1, 7), rng.randint(1, 7)
        pad = [rng.randint(0, 3 * max(h, w) + 2) for _ in range(4)]  # often > size: folds
        x = torch.randn(rng.randint(1, 2), rng.randint(1, 3), h, w, device=device)
        got = mirror_pad(x, pad, mode)
        assert torch.equal(got.cpu(), numpy_pad(x, pad, mode)), (h, w, pad, mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_dtypes_and_one_pixel(dtype: torch.dtype, mode: str, device: str) -> None:
    x = (torch.rand(2, 3, 5, 4) * 100).to(dtype).to(device)
    for pad in ([7, 0, 2, 11], [0, 0, 0, 0], [4, 4, 3, 3]):
        assert torch.equal(mirror_pad(x, pad, mode).cpu(), numpy_pad(x, pad, mode))
    one = (torch.rand(1, 2, 1, 1) * 100).to(dtype).to(device)
    got = mirror_pad(one, [3, 5, 2, 0], mode)
    assert got.shape == (1, 2, 9, 3)
    assert torch.equal(got.cpu(), numpy_pad(one, [3, 5, 2, 0], mode))


@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device: str) -> None:
    x = torch.randn(2, 3, 6, 5, device=device)
    pad = [9, 2, 0, 13]
    want = numpy_pad(x, pad, "reflect")
    cl = mirror_pad(x.to(memory_format=torch.channels_last), pad, "reflect")
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl.cpu(), want)
    strided = torch.randn(2, 3, 12, 10, device=device)[:, :, ::2, ::2]
    assert torch.equal(mirror_pad(strided, pad, "reflect").cpu(),
                       numpy_pad(strided, pad, "reflect"))
    assert torch.equal(mirror_pad(x[0], pad, "reflect").cpu(), want[0])  # (C, H, W) input


def test_empty_batch() -> None:
    assert mirror_pad(torch.empty(0, 3, 4, 4), [1, 2, 3, 4]).shape == (0, 3, 7, 11)


def test_errors_name_the_argument() -> None:
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="mode must be"):
        mirror_pad(x, [1, 1, 1, 1], "wrap")
    with pytest.raises(ValueError, match="pad must be 4 values"):
        mirror_pad(x, [1, 1, -1, 1])
    with pytest.raises(ValueError, match="pad must be 4 values"):
        mirror_pad(x, [1, 1])
    with pytest.raises(RuntimeError, match="image must be 4-D"):
        _ops().mirror_pad(torch.randn(4, 4), [1, 1, 1, 1], "reflect")
    with pytest.raises(RuntimeError, match="image must have H, W >= 1"):
        _ops().mirror_pad(torch.randn(1, 1, 0, 4), [1, 1, 1, 1], "reflect")
    with pytest.raises(RuntimeError, match="mode must be 'reflect' or 'symmetric'"):
        _ops().mirror_pad(x, [1, 1, 1, 1], "edge")


def test_native_op_runs() -> None:
    """The wrapper must dispatch to the C++ kernel, never to a Python fallback."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        mirror_pad(torch.randn(1, 1, 4, 4), [2, 2, 2, 2])
    assert "unet_fast::mirror_pad" in {e.name for e in prof.events()}
    assert torch._C._dispatch_has_kernel_for_dispatch_key("unet_fast::mirror_pad", "CPU")


def test_opcheck() -> None:
    _ops()
    cl = torch.randn(1, 4, 3, 6).to(memory_format=torch.channels_last)
    for x in (torch.randn(2, 3, 5, 4), cl):
        torch.library.opcheck(torch.ops.unet_fast.mirror_pad.default, (x, [6, 1, 0, 9], "reflect"))


def test_traces_under_compile() -> None:
    fn = torch.compile(lambda x: mirror_pad(x, [3, 3, 9, 0], "symmetric") * 2,
                       backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 2, 4, 5)
    assert torch.equal(fn(x), numpy_pad(x, [3, 3, 9, 0], "symmetric") * 2)
