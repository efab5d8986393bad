"""The Winograd kernel's AMX GEMMs (bf16, isa="amx"; csrc/cpu/winograd_kernel.h gemm_point_amx)
against a float64 direct convolution of the same bf16 inputs, bounded by PyTorch's own bf16
convolution's error on that input, as the AVX512-BF16 path is in test_winograd.py.

The shapes cover what the AMX path adds: chunks whose tile count is not a multiple of 16 (the
padding rows of the last 16-row tile), an odd number of 16-row tiles, input channels that are not
a multiple of 32 but round up to one, output channels that are not a multiple of 16, batches, both
paddings, the decoder's two sources, weights over the 6 MiB threshold (64-row chunks), and a call
right after one of oneDNN's AMX convolutions on the same threads (tile configuration)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import rel_l2
from unet_fast import winograd
from unet_fast.reference import join_skip

AMX = winograd.isa_supported("amx", torch.bfloat16)
needs_amx = pytest.mark.skipif(not AMX, reason="CPU, kernel or build without AMX-BF16")
# measured 1.0-1.6x PyTorch's own error (the transformed operands are rounded to bf16 again)
BOUND = 2.0


def _case(n: int, cin: int, cout: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g).bfloat16()
    weight = (torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5).bfloat16()
    bias = torch.randn(cout, generator=g)
    return x, weight, bias


def _oracle(x, weight, bias, padding):
    return F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=padding))


def _torch_bf16_error(x, weight, bias, padding, ref):
    return rel_l2(F.relu(F.conv2d(x, weight, bias.bfloat16(), padding=padding)), ref)


SHAPES = [
    (1, 32, 32, 9, 11),  # 30 tiles (same) / 20 (valid): padding rows in the last 16-row tile
    (2, 20, 47, 17, 13),  # 20 input channels round up to 32; 47 outputs; two images
    (3, 64, 16, 7, 5),  # 36 / 18 tiles over three images
    (1, 96, 64, 30, 29),  # 225 / 210 tiles, several chunks
    (1, 50, 33, 12, 19),  # 50 -> 64 input channels, 33 outputs (the second block 1 wide)
]


@needs_amx
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_amx_within_pytorchs_bf16_error(shape, padding):
    x, weight, bias = _case(*shape)
    ref = _oracle(x, weight, bias, padding)
    conv = winograd.pack(weight.float(), bias, padding, 2, torch.bfloat16)
    y = winograd.conv3x3(x, conv, True, isa="amx")
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert rel_l2(y, ref) <= BOUND * _torch_bf16_error(x, weight, bias, padding, ref)


@needs_amx
def test_amx_agrees_with_avx512_bf16():
    """Same exact products and fp32 accumulation, summed in another order: outputs differ by at
    most one bf16 rounding."""
    x, weight, bias = _case(2, 64, 48, 21, 18, seed=1)
    conv = winograd.pack(weight.float(), bias, 1, 2, torch.bfloat16)
    a = winograd.conv3x3(x, conv, True, isa="amx").float()
    b = winograd.conv3x3(x, conv, True, isa="avx512").float()
    assert torch.allclose(a, b, rtol=2 ** -7, atol=1e-6)
    assert (a != b).float().mean() < 0.05


@needs_amx
@pytest.mark.parametrize("threads", [1, 2])
def test_amx_large_weights_take_64_row_chunks(threads):
    """U here is 16 x 512 x 416 x 2 bytes = 6.5 MiB, over the 6 MiB threshold."""
    x, weight, bias = _case(1, 512, 400, 20, 23, seed=2)
    ref = _oracle(x, weight, bias, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = winograd.conv3x3(x, winograd.pack(weight.float(), bias, 1, 2, torch.bfloat16), True,
                             isa="amx")
    finally:
        torch.set_num_threads(before)
    assert rel_l2(y, ref) <= BOUND * _torch_bf16_error(x, weight, bias, 1, ref)


@needs_amx
@pytest.mark.parametrize(("same", "skip_hw", "up_hw"), [
    (False, (20, 21), (12, 13)), (True, (13, 15), (12, 14)),
])
def test_amx_two_sources_equal_the_reference_join(same, skip_hw, up_hw):
    g = torch.Generator().manual_seed(3)
    skip = torch.randn(2, 32, *skip_hw, generator=g).bfloat16()
    up = torch.randn(2, 32, *up_hw, generator=g).bfloat16()
    weight = (torch.randn(40, 64, 3, 3, generator=g) / 24).bfloat16()
    bias = torch.randn(40, generator=g)
    padding = 1 if same else 0
    joined = join_skip(skip, up, same)
    ref = _oracle(joined, weight, bias, padding)
    conv = winograd.pack(weight.float(), bias, padding, 2, torch.bfloat16)
    y = winograd.conv3x3(up, conv, True, skip=skip, same=same, isa="amx")
    assert y.shape == ref.shape
    assert rel_l2(y, ref) <= BOUND * _torch_bf16_error(joined, weight, bias, padding, ref)


@needs_amx
def test_amx_after_onednn_amx_convolution_on_the_same_threads():
    """oneDNN loads its own tile configuration on torch's threads; each of our work items loads
    ours again, so a call right after one of its bf16 convolutions is still right."""
    x, weight, bias = _case(1, 64, 64, 40, 40, seed=4)
    conv = winograd.pack(weight.float(), bias, 1, 2, torch.bfloat16)
    alone = winograd.conv3x3(x, conv, True, isa="amx")
    xc = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        F.conv2d(xc, torch.randn(96, 64, 3, 3).bfloat16(), padding=1)  # oneDNN (AMX where it can)
        assert torch.equal(winograd.conv3x3(x, conv, True, isa="amx"), alone)


def test_auto_takes_amx_only_where_it_fits():
    """'auto' runs bf16 with 16 input channels (not a multiple of 32) on the AVX512-BF16 or
    portable GEMMs instead of refusing it."""
    x, weight, bias = _case(1, 16, 8, 9, 9)
    ref = _oracle(x, weight, bias, 1)
    y = winograd.conv3x3(x, winograd.pack(weight.float(), bias, 1, 2, torch.bfloat16), True)
    assert rel_l2(y, ref) <= BOUND * _torch_bf16_error(x, weight, bias, 1, ref)


@pytest.mark.parametrize(("dtype", "cin", "message"), [
    (torch.float32, 32, "isa='amx' needs bfloat16"),
    (torch.bfloat16, 16, "multiple of 32 input channels"),
])
def test_amx_refuses_what_it_cannot_run(dtype, cin, message):
    conv = winograd.pack(torch.randn(8, cin, 3, 3), torch.zeros(8), 1, 2, dtype)
    with pytest.raises(RuntimeError, match=message):
        winograd.conv3x3(torch.randn(1, cin, 9, 9).to(dtype), conv, True, isa="amx")
