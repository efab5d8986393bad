"""The Winograd 3x3 kernel (csrc/cpu/winograd_kernel.h, unet_fast/winograd.py) against a float64
direct convolution (torch's conv2d on float64 tensors): odd sizes, channel counts that are not
multiples of 16, batches, both paddings, both tile sizes, float32 and bfloat16, the AVX-512 and
the portable build, the decoder's two-source input, and float32 weights given raw (the kernel
lays out and transforms the module's own 3x3 taps on the fly; with m=2 the 64-channel 30x29
case's 225 tiles take the raw form's 72-row chunks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import rel_l2
from unet_fast import winograd
from unet_fast.reference import join_skip

ISAS = [pytest.param("portable", id="portable"),
        pytest.param("avx512", id="avx512", marks=pytest.mark.skipif(
            not winograd.isa_supported("avx512"), reason="CPU without AVX-512"))]
# Relative L2 bounds against float64. fp32: measured 0.7-4.4e-6 for F(4x4) (the largest with
# 1024 channels), 0.7-2e-7 for F(2x2); direct fp32 is ~1e-7. bf16 is checked against PyTorch's
# own bf16 convolution's error on the same input instead (see test_bf16_error_vs_pytorch).
FP32_BOUND = {4: 1e-5, 2: 1e-6}


def _case(n: int, cin: int, cout: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5
    bias = torch.randn(cout, generator=g)
    return x, weight, bias


def _oracle(x, weight, bias, padding, relu):
    y = F.conv2d(x.double(), weight.double(), bias.double(), padding=padding)
    return F.relu(y) if relu else y


SHAPES = [(1, 5, 7, 13, 11), (2, 20, 40, 9, 10), (3, 33, 47, 17, 6), (1, 64, 64, 30, 29),
          (2, 16, 32, 3, 3), (1, 130, 70, 12, 19)]


RAW = [pytest.param(False, id="U"), pytest.param(True, id="raw")]


@pytest.mark.parametrize("raw", RAW)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [4, 2])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_float64_direct(shape, padding, m, isa, raw):
    x, weight, bias = _case(*shape)
    conv = winograd.pack(weight, bias, padding, m, torch.float32, raw=raw)
    for relu in (True, False):
        ref = _oracle(x, weight, bias, padding, relu)
        y = winograd.conv3x3(x, conv, relu, isa=isa)
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert rel_l2(y, ref) <= FP32_BOUND[m], (relu, rel_l2(y, ref))


@pytest.mark.parametrize("raw", RAW)
@pytest.mark.parametrize("isa", ISAS)
def test_deep_layer_within_bound(isa, raw):
    """1024 channels: the longest accumulation of the paper network, several work items."""
    x, weight, bias = _case(1, 1024, 96, 14, 13)
    ref = _oracle(x, weight, bias, 0, True)
    conv = winograd.pack(weight, bias, 0, 4, torch.float32, raw=raw)
    y = winograd.conv3x3(x, conv, True, isa=isa)
    assert rel_l2(y, ref) <= FP32_BOUND[4]


@pytest.mark.parametrize("raw", RAW)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", [4, 2])
def test_large_weights_split_into_big_chunks_and_channel_groups(m, threads, raw):
    """F(4x4)'s weights here (9.7 MiB) pass the kernel's 6 MiB threshold and take the split for
    large weights: chunks of 143 tiles (11 full micro-tiles and an 11-row remainder), one per
    image, shared by groups of output-channel blocks when two threads need work. F(2x2)'s
    (4.3 MiB) take the cache-bounded split, 1100 tiles ending in an 8-row micro-tile."""
    x, weight, bias = _case(2, 700, 70, 45, 51)
    ref = _oracle(x, weight, bias, 0, True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = winograd.conv3x3(x, winograd.pack(weight, bias, 0, m, torch.float32, raw=raw), True)
    finally:
        torch.set_num_threads(before)
    assert rel_l2(y, ref) <= FP32_BOUND[m], rel_l2(y, ref)


@pytest.mark.parametrize("isa", [p for p in ISAS if p.id == "portable"] + [pytest.param(
    "avx512", id="avx512", marks=pytest.mark.skipif(
        not winograd.isa_supported("avx512", torch.bfloat16), reason="CPU without AVX512-BF16"))])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
def test_bf16_error_vs_pytorch(shape, m, isa):
    """bf16 operands, fp32 transforms and accumulation. The transformed input and weights are
    rounded to bf16 again, which a direct convolution of bf16 inputs never does: F(2x2) measured
    1.5-1.6x PyTorch's own bf16 error per layer, F(4x4) 7-8x (why the backend never picks F(4x4)
    in bf16; the network-level label check is in test_cpu_tactics.py)."""
    x, weight, bias = _case(*shape)
    xb, wb = x.bfloat16(), weight.bfloat16()
    ref = _oracle(xb.float(), wb.float(), bias, 1, True)
    torch_err = rel_l2(F.relu(F.conv2d(xb, wb, bias.bfloat16(), padding=1)), ref)
    y = winograd.conv3x3(xb, winograd.pack(wb.float(), bias, 1, m, torch.bfloat16), True, isa=isa)
    assert y.dtype == torch.bfloat16
    assert rel_l2(y, ref) <= (2.0 if m == 2 else 10.0) * torch_err


@pytest.mark.parametrize("raw", RAW)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [4, 2])
@pytest.mark.parametrize(("same", "skip_hw", "up_hw"), [
    (False, (20, 21), (12, 13)), (False, (17, 18), (12, 12)),  # centre crop, even and odd
    (True, (13, 15), (12, 14)), (True, (12, 12), (12, 12)), (True, (9, 7), (8, 6)),  # zero pad
])
def test_two_sources_equal_the_reference_join(same, skip_hw, up_hw, m, isa, raw):
    g = torch.Generator().manual_seed(3)
    skip, up = torch.randn(2, 16, *skip_hw, generator=g), torch.randn(2, 24, *up_hw, generator=g)
    weight, bias = torch.randn(20, 40, 3, 3, generator=g) / 19, torch.randn(20, generator=g)
    padding = 1 if same else 0
    ref = _oracle(join_skip(skip, up, same), weight, bias, padding, True)
    conv = winograd.pack(weight, bias, padding, m, torch.float32, raw=raw)
    y = winograd.conv3x3(up, conv, True, skip=skip, same=same, isa=isa)
    assert y.shape == ref.shape
    assert rel_l2(y, ref) <= FP32_BOUND[m]


def test_avx512_and_portable_agree():
    if not winograd.isa_supported("avx512"):
        pytest.skip("CPU without AVX-512")
    x, weight, bias = _case(2, 48, 40, 23, 21)
    conv = winograd.pack(weight, bias, 1, 4, torch.float32)
    a = winograd.conv3x3(x, conv, True, isa="avx512")
    b = winograd.conv3x3(x, conv, True, isa="portable")
    assert rel_l2(a, b) <= 1e-6  # same arithmetic except FMA contraction


def test_non_finite_input_propagates():
    x, weight, bias = _case(1, 16, 16, 10, 10)
    x[0, 3, 5, 5] = float("nan")
    y = winograd.conv3x3(x, winograd.pack(weight, bias, 1, 4, torch.float32), False)
    assert y[0, :, 4:7, 4:7].isnan().all()


def test_empty_batch():
    conv = winograd.pack(torch.randn(8, 16, 3, 3), torch.zeros(8), 1, 4, torch.float32)
    assert winograd.conv3x3(torch.zeros(0, 16, 9, 9), conv, True).shape == (0, 8, 9, 9)


@pytest.mark.parametrize(("call", "message"), [
    (lambda c, x: winograd.conv3x3(x.double(), c, True), "float32 or bfloat16"),
    (lambda c, x: winograd.conv3x3(x.bfloat16(), c, True), "weight is Float but the input is BFloat16"),
    (lambda c, x: winograd.conv3x3(x[:, :8], c, True), "packed for 16 input channels but the input has 8"),
    (lambda c, x: winograd.conv3x3(x[..., :1, :], c, True), "too small"),
    (lambda c, x: winograd.conv3x3(x, c, True, isa="sse"), "isa must be"),
    (lambda c, x: winograd.conv3x3(x[0], c, True), "must be 4-D"),
])
def test_bad_calls_get_one_clear_line(call, message):
    conv = winograd.pack(torch.randn(8, 16, 3, 3), torch.zeros(8), 0, 4, torch.float32)
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(conv, torch.randn(1, 16, 9, 9))


def test_pack_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="must be one of"):
        winograd.pack(torch.randn(4, 4, 3, 3), torch.zeros(4), 1, 3, torch.float32)
    with pytest.raises(ValueError, match="3x3 weight"):
        winograd.pack(torch.randn(4, 4, 5, 5), torch.zeros(4), 1, 4, torch.float32)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        winograd.pack(torch.randn(4, 4, 3, 3), torch.zeros(4), 1, 4, torch.float16)
    with pytest.raises(ValueError, match=r"raw .* float32 only"):
        winograd.pack(torch.randn(4, 4, 3, 3), torch.zeros(4), 1, 4, torch.bfloat16, raw=True)


def test_raw_form_is_the_weight_itself():
    """raw=True costs no memory beyond the bias: the kernel reads a contiguous float32
    (C_out, C_in, 3, 3) weight as it is, and packing makes no copy of it."""
    weight = torch.randn(40, 17, 3, 3)
    conv = winograd.pack(weight, torch.zeros(40), 0, 4, torch.float32, raw=True)
    assert conv.weight.data_ptr() == weight.data_ptr() and conv.weight.shape == weight.shape


def test_raw_taps_in_bfloat16_refused_by_the_op():
    """The op tells raw taps from transformed weights by their shape; raw ones are float32 only."""
    conv = winograd.pack(torch.randn(8, 16, 3, 3), torch.zeros(8), 0, 4, torch.float32, raw=True)
    assert conv.weight.shape == (8, 16, 3, 3)
    bad = winograd.WinogradConv(conv.weight.bfloat16(), conv.bias, 8, 16, 0, 4, raw=True)
    with pytest.raises(RuntimeError, match=r"raw .*float32 only"):
        winograd.conv3x3(torch.randn(1, 16, 9, 9).bfloat16(), bad, True)


def _thread_cpu_ticks() -> dict[str, int]:
    out = {}
    for stat in Path(f"/proc/{os.getpid()}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        out[stat.parent.name] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_work_is_spread_over_torchs_threads():
    """Regression: the extension was built without OpenMP, so at::parallel_for (inline in
    ATen's headers) ran every loop on the calling thread whatever torch.get_num_threads() said."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, weight, bias = _case(1, 64, 64, 200, 200)
        x = x.contiguous(memory_format=torch.channels_last)  # (no layout copy by aten's threads)
        conv = winograd.pack(weight, bias, 1, 4, torch.float32)
        before = _thread_cpu_ticks()
        for _ in range(10):
            winograd.conv3x3(x, conv, True)
        after = _thread_cpu_ticks()
    finally:
        torch.set_num_threads(threads)
    busy = [t for t, ticks in after.items() if ticks - before.get(t, 0) >= 2]
    assert len(busy) >= 2, {t: after[t] - before.get(t, 0) for t in after}
