"""Every Triton kernel (through its torch.ops.unet_fast op) against its plain-torch reference.

bf16 under the interpreter upcasts the tl.dot operands (see triton_kernels/_common.py); on a GPU
the same cases run the real bf16 tensor-core path.

Runs on CPU through TRITON_INTERPRET=1 (set by conftest when there is no GPU), on the GPU
otherwise. Shapes are small and odd, channel counts not multiples of 16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from unet_fast.triton_kernels import conv3x3 as kconv
from unet_fast.triton_kernels import crop_concat as kcc
from unet_fast.triton_kernels import pool_upsample as kpu
from unet_fast.triton_kernels import upconv as kup

from unet_fast.ops import fused
from unet_fast.reference import join_skip

from .triton_helpers import DEVICE, assert_matches, layout, needs_triton

pytestmark = needs_triton

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def rand(*shape, dtype=F32, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def conv_weights(c_in, c_out, dtype):
    w = rand(c_out, c_in, 3, 3, dtype=dtype, scale=(2.0 / (9 * c_in)) ** 0.5)
    return w, rand(c_out, dtype=dtype, scale=0.1)


# (dtype, padding, batch, layout, C_in, C_out, H, W)
CONV_CASES = [
    (F32, 0, 1, "cl", 5, 7, 9, 11),
    (F32, 1, 3, "nchw", 3, 17, 7, 6),
    (F32, 0, 1, "strided", 20, 33, 6, 9),
    (F16, 1, 1, "cl", 5, 7, 9, 11),
    (F16, 0, 3, "strided", 18, 9, 7, 8),
    (F16, 1, 1, "nchw", 33, 40, 5, 7),
    (BF16, 1, 3, "cl", 6, 10, 7, 5),
]


@pytest.mark.parametrize("dtype,padding,batch,kind,c_in,c_out,h,w", CONV_CASES)
def test_conv3x3(dtype, padding, batch, kind, c_in, c_out, h, w):
    x = layout(rand(batch, c_in, h, w, dtype=dtype), kind)
    wt, b = conv_weights(c_in, c_out, dtype)
    y = fused.conv3x3(x, kconv.pack_conv3x3_weight(wt), b, padding, True, False)
    ref = kconv.conv3x3_reference(x.double(), wt.double(), b.double(), padding)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches(y, ref, dtype)


def test_few_input_channels_take_one_k_step():
    # 9 * C_in <= 64 (the first conv: 1 or 3 channels): all taps in one K block
    assert [kconv.flat_k(c, False) for c in (1, 2, 3, 7, 8)] == [16, 32, 32, 64, 0]
    assert kconv.flat_k(1, True) == 0  # the dual-source conv keeps the per-tap loop


@pytest.mark.parametrize("dtype,padding,kind,c_in", [
    (F32, 0, "cl", 1), (F16, 1, "strided", 1), (F32, 1, "nchw", 3), (BF16, 0, "cl", 3),
    (F16, 0, "cl", 7), (F32, 1, "cl", 8),
])
def test_conv3x3_few_input_channels(dtype, padding, kind, c_in):
    x = layout(rand(2, c_in, 10, 13, dtype=dtype), kind)
    wt, b = conv_weights(c_in, 24, dtype)
    packed = kconv.pack_conv3x3_weight(wt)
    ref = kconv.conv3x3_reference(x.double(), wt.double(), b.double(), padding)
    assert_matches(fused.conv3x3(x, packed, b, padding, True, False), ref, dtype)
    y, p = fused.conv3x3_pool(x, packed, b, padding, False)
    assert_matches(y, ref, dtype)
    torch.testing.assert_close(p, kpu.maxpool2x2_reference(y), rtol=0, atol=0)


def test_conv3x3_without_bias_or_relu():
    x = rand(1, 4, 6, 5)
    wt, _ = conv_weights(4, 6, F32)
    y = fused.conv3x3(x, kconv.pack_conv3x3_weight(wt), None, 1, False, False)
    assert (y < 0).any()  # no ReLU applied
    assert_matches(y, kconv.conv3x3_reference(x.double(), wt.double(), None, 1, relu=False), F32)


@pytest.mark.parametrize("dtype,padding,batch,h,w", [
    (F32, 0, 1, 11, 13), (F32, 1, 3, 9, 10), (F16, 1, 1, 13, 7), (F16, 0, 1, 12, 12),
    (BF16, 1, 1, 7, 9),
])
def test_conv3x3_pool_epilogue(dtype, padding, batch, h, w):
    x = layout(rand(batch, 6, h, w, dtype=dtype), "cl")
    wt, b = conv_weights(6, 19, dtype)
    y, p = fused.conv3x3_pool(x, kconv.pack_conv3x3_weight(wt), b, padding, False)
    ref = kconv.conv3x3_reference(x.double(), wt.double(), b.double(), padding)
    assert_matches(y, ref, dtype)
    # the pool of the stored output, exactly (max commutes with the rounding)
    torch.testing.assert_close(p, kpu.maxpool2x2_reference(y), rtol=0, atol=0)


# (dtype, padding, batch, skip C/H/W, up C/H/W): valid crops the skip (odd difference
# included), same zero-pads up (odd skip sizes, as after a floor-mode pool)
CAT_CASES = [
    (F32, 0, 1, (5, 14, 15), (6, 8, 10)),
    (F32, 1, 3, (4, 9, 7), (3, 8, 6)),
    (F16, 0, 3, (7, 12, 12), (7, 8, 8)),
    (F16, 1, 1, (6, 11, 10), (5, 10, 10)),
    (BF16, 0, 1, (4, 9, 9), (3, 6, 6)),
]


@pytest.mark.parametrize("dtype,padding,batch,skip_shape,up_shape", CAT_CASES)
def test_conv3x3_dual_source(dtype, padding, batch, skip_shape, up_shape):
    skip = layout(rand(batch, *skip_shape, dtype=dtype), "cl")
    up = layout(rand(batch, *up_shape, dtype=dtype), "strided" if batch == 3 else "nchw")
    c_in = skip_shape[0] + up_shape[0]
    wt, b = conv_weights(c_in, 11, dtype)
    y = fused.conv3x3_cat(skip, up, kconv.pack_conv3x3_weight(wt), b, padding, True, False)
    joined = join_skip(skip.double(), up.double(), padding == 1)
    assert_matches(y, kconv.conv3x3_reference(joined, wt.double(), b.double(), padding), dtype)


@pytest.mark.parametrize("dtype,padding,c_out,classes", [(F32, 0, 8, 2), (F16, 1, 20, 3),
                                                          (BF16, 1, 6, 2)])
def test_conv3x3_head_epilogue(dtype, padding, c_out, classes):
    x = layout(rand(3, 5, 9, 8, dtype=dtype), "cl")
    wt, b = conv_weights(5, c_out, dtype)
    hw = rand(classes, c_out, 1, 1, dtype=dtype, scale=c_out ** -0.5)
    hb = rand(classes, dtype=dtype)
    y = fused.conv3x3_head(x, kconv.pack_conv3x3_weight(wt), b, kconv.pack_head_weight(hw), hb,
                           padding, False)
    assert y.is_contiguous()
    hidden = kconv.conv3x3_reference(x.double(), wt.double(), b.double(), padding)
    # the hidden activation is rounded to the compute dtype, as between two unfused layers
    ref = F.conv2d(hidden.to(dtype).double(), hw.double(), hb.double())
    assert_matches(y, ref, dtype)


@pytest.mark.parametrize("c_in,c_out", [(1, 64), (3, 5), (5, 7), (16, 33), (64, 8)])
def test_packed_weights_are_k_contiguous(c_in, c_out):
    """Both GEMM weights are stored K-contiguous (16-byte copies for a TF32 wgmma operand),
    rows padded to 16 elements; element ``[tap * C_in + c, co]`` is ``W[co, c, ky, kx]``."""
    wt = rand(c_out, c_in, 3, 3)
    w = kconv.pack_conv3x3_weight(wt)
    assert w.shape == (9 * c_in, c_out) and w.stride(0) == 1
    assert w.stride(1) % 16 == 0 and 9 * c_in <= w.stride(1) < 9 * c_in + 16
    for co in range(c_out):
        for c in range(c_in):
            for ky in range(3):
                for kx in range(3):
                    assert w[(3 * ky + kx) * c_in + c, co] == wt[co, c, ky, kx]
    ut = rand(c_in, c_out, 2, 2)
    u = kup.pack_upconv_weight(ut)
    assert u.shape == (c_in, 4 * c_out) and u.stride(0) == 1 and u.stride(1) % 16 == 0
    for c in range(c_in):
        for co in range(c_out):
            for dy in range(2):
                for dx in range(2):
                    assert u[c, (2 * dy + dx) * c_out + co] == ut[c, co, dy, dx]


@pytest.mark.parametrize("dtype", [F32, F16])
def test_ops_take_packed_weights_with_any_strides(dtype):
    """The layout is the packing's choice: the same GEMM weight stored N-contiguous (dense) or
    with gaps gives the same numbers."""
    x = rand(2, 6, 7, 9, dtype=dtype)
    wt, b = conv_weights(6, 10, dtype)
    ref = kconv.conv3x3_reference(x.double(), wt.double(), b.double(), 1)
    packed = kconv.pack_conv3x3_weight(wt)
    gapped = torch.zeros(2 * packed.shape[0], packed.shape[1], dtype=dtype, device=DEVICE)[::2]
    gapped.copy_(packed)
    for w in (packed.contiguous(), gapped):
        assert_matches(fused.conv3x3(x, w, b, 1, True, False), ref, dtype)
    ut = rand(6, 4, 2, 2, dtype=dtype, scale=6 ** -0.5)
    up = kup.pack_upconv_weight(ut)
    assert_matches(fused.upconv2x2(x, up.contiguous(), None, False),
                   kup.upconv2x2_reference(x.double(), ut.double(), None), dtype)


@pytest.mark.parametrize("dtype,batch,kind,c_in,c_out,h,w", [
    (F32, 1, "cl", 7, 5, 5, 7), (F32, 3, "strided", 20, 9, 3, 4),
    (F16, 1, "nchw", 17, 6, 4, 5), (F16, 3, "cl", 6, 3, 5, 3), (BF16, 1, "strided", 5, 4, 3, 3),
])
def test_upconv2x2(dtype, batch, kind, c_in, c_out, h, w):
    x = layout(rand(batch, c_in, h, w, dtype=dtype), kind)
    wt = rand(c_in, c_out, 2, 2, dtype=dtype, scale=c_in ** -0.5)
    b = rand(c_out, dtype=dtype, scale=0.1)
    y = fused.upconv2x2(x, kup.pack_upconv_weight(wt), b, False)
    assert_matches(y, kup.upconv2x2_reference(x.double(), wt.double(), b.double()), dtype)


@pytest.mark.parametrize("dtype,same,skip_shape,up_shape", [
    (F32, False, (5, 13, 12), (3, 8, 7)), (F16, True, (4, 9, 11), (6, 8, 10)),
    (F32, True, (3, 6, 6), (3, 6, 6)),
])
def test_crop_concat(dtype, same, skip_shape, up_shape):
    skip = layout(rand(3, *skip_shape, dtype=dtype), "strided")
    up = layout(rand(3, *up_shape, dtype=dtype), "cl")
    y = fused.crop_concat(skip, up, same)
    torch.testing.assert_close(y, kcc.crop_concat_reference(skip, up, same), rtol=0, atol=0)


@pytest.mark.parametrize("dtype,kind", [(F32, "strided"), (F16, "cl")])
def test_maxpool_and_bilinear(dtype, kind):
    x = layout(rand(3, 5, 7, 9, dtype=dtype), kind)
    torch.testing.assert_close(fused.maxpool2x2(x), kpu.maxpool2x2_reference(x), rtol=0, atol=0)
    y = fused.upsample_bilinear2x(x)
    assert_matches(y, kpu.upsample_bilinear2x_reference(x.double()), dtype)


def test_tile_configs_follow_the_arithmetic_unit_and_layer():
    def shapes(configs):
        return {(c.kwargs["BLOCK_H"], c.kwargs["BLOCK_W"], c.kwargs["BLOCK_K"]) for c in configs}

    def widths(configs):
        return {c.kwargs["BLOCK_N"] for c in configs}

    # IEEE fp32 runs on the FMA units: its own small tiles, N <= 64; TF32/fp16/bf16 on tensor cores
    fma = kconv.gpu_configs(torch.float32, False, 512, head=False)
    assert shapes(fma) == {s[:3] for s in kconv._FMA_SHAPES} and widths(fma) == {64}
    for dtype, tf32 in ((torch.float32, True), (torch.float16, False), (torch.bfloat16, False)):
        assert len(kconv.gpu_configs(dtype, tf32, 128, head=False)) == 9
        assert widths(kconv.gpu_configs(dtype, tf32, 128, head=False)) == {128, 64}
        assert widths(kconv.gpu_configs(dtype, tf32, 512, head=False)) == {256, 128, 64}
        assert widths(kconv.gpu_configs(dtype, tf32, 64, head=False)) == {64}
        assert widths(kconv.gpu_configs(dtype, tf32, 40, head=False)) == {64}
        # the fused head holds every output channel in one tile
        assert widths(kconv.gpu_configs(dtype, tf32, 256, head=True)) == {256}
    # every candidate's pipeline fits Hopper's shared memory: TF32 (4-byte operands) drops the
    # large bf16 tiles that would not
    for dtype, tf32 in ((torch.float32, True), (torch.bfloat16, False)):
        for c_out in (64, 256, 1024):
            for head in (False, True):
                for c in kconv.gpu_configs(dtype, tf32, c_out, head):
                    assert kconv._pipeline_bytes(c, dtype.itemsize) <= kconv._SHARED_LIMIT
    assert len(kconv.gpu_configs(torch.float32, True, 512, False)) < len(
        kconv.gpu_configs(torch.bfloat16, False, 512, False))
    # the autotuner holds every candidate any launch may want (else pruning would drop it)
    known = {kconv._key(c) for c in kconv._ALL_CONFIGS}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for tf32 in (False, True):
            for c_out in (1, 16, 24, 64, 100, 128, 256, 1000):
                for head in (False, True):
                    for c in kconv.gpu_configs(dtype, tf32, min(c_out, 256) if head else c_out,
                                               head):
                        assert kconv._key(c) in known, c
    # TF32 and IEEE fp32 share dtypes but not candidates: the tuning cache must tell them apart
    assert "PRECISION" in kconv.conv3x3_kernel_autotuned.keys
    # the autotuner's pruning keeps exactly a launch's configurations, in order (first = pinned)
    x = torch.empty(1, dtype=torch.bfloat16)
    kept = kconv.prune_configs(kconv._ALL_CONFIGS, {"x_ptr": x, "C_out": 1024},
                               PRECISION="ieee", HEAD=False)
    assert [kconv._key(c) for c in kept] == [
        kconv._key(c) for c in kconv.gpu_configs(torch.bfloat16, False, 1024, head=False)]
    assert all(any(c is own for own in kconv._ALL_CONFIGS) for c in kept)
    x32 = torch.empty(1)
    head = kconv.prune_configs(kconv._ALL_CONFIGS, {"x_ptr": x32, "C_out": 64},
                               PRECISION="ieee", HEAD=True)
    assert [kconv._key(c) for c in head] == [
        kconv._key(c) for c in kconv.gpu_configs(torch.float32, False, 64, True)]


def test_int64_indexing_only_when_needed():
    from unet_fast.triton_kernels._common import needs_int64

    assert not needs_int64(torch.empty(2, 64, 512, 512, device="meta"))
    assert needs_int64(torch.empty(2**31, device="meta"))
    # a small view whose last element lies past int32 (an offset, not a count, overflows)
    assert needs_int64(torch.empty(4, device="meta").as_strided((2, 2), (2**31, 1)))


@pytest.mark.parametrize("wide", [False, True])
def test_data_movement_kernels_int32_and_int64_paths(wide, monkeypatch):
    # the int64 path serves tensors past 2^31 elements: too large to test, so force it here
    monkeypatch.setattr(kpu, "needs_int64", lambda *t: wide)
    monkeypatch.setattr(kcc, "needs_int64", lambda *t: wide)
    x = layout(rand(2, 5, 7, 9, dtype=F16), "cl")
    torch.testing.assert_close(fused.maxpool2x2(x), kpu.maxpool2x2_reference(x), rtol=0, atol=0)
    assert_matches(fused.upsample_bilinear2x(x), kpu.upsample_bilinear2x_reference(x.double()),
                   F16)
    skip, up = rand(2, 3, 11, 12, dtype=F16), rand(2, 4, 7, 8, dtype=F16)
    torch.testing.assert_close(fused.crop_concat(skip, up, False),
                               kcc.crop_concat_reference(skip, up, False), rtol=0, atol=0)


def test_empty_batch():
    x = rand(0, 3, 6, 6)
    wt, b = conv_weights(3, 4, F32)
    assert fused.conv3x3(x, kconv.pack_conv3x3_weight(wt), b, 0, True, False).shape == (0, 4, 4, 4)
    assert fused.maxpool2x2(x).shape == (0, 3, 3, 3)


def test_clear_errors():
    x = rand(1, 3, 6, 6)
    wt, b = conv_weights(3, 4, F32)
    packed = kconv.pack_conv3x3_weight(wt)
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16"):
        fused.conv3x3(x.double(), packed, b, 0, True, False)
    with pytest.raises(TypeError, match=r"weight is torch\.float16"):
        fused.conv3x3(x, packed.half(), b, 0, True, False)
    with pytest.raises(ValueError, match=r"packed \[9 \* C_in, C_out\]"):
        fused.conv3x3(x, wt, b, 0, True, False)
    with pytest.raises(ValueError, match="padding must be 0"):
        fused.conv3x3(x, packed, b, 2, True, False)
    with pytest.raises(ValueError, match="too small"):
        fused.conv3x3(rand(1, 3, 2, 6), packed, b, 0, True, False)
    with pytest.raises(ValueError, match="at least up's"):
        fused.crop_concat(rand(1, 2, 4, 4), rand(1, 2, 6, 6), False)


def test_fake_implementations_launch_nothing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 3, 9, 7)
        y, p = torch.ops.unet_fast.conv3x3_pool(x, torch.empty(27, 5), None, 0, False)
        assert y.shape == (2, 5, 7, 5) and p.shape == (2, 5, 3, 2)
        cat = torch.ops.unet_fast.conv3x3_cat(torch.empty(2, 4, 11, 11), torch.empty(2, 3, 8, 8),
                                              torch.empty(63, 6), None, 0, True, False)
        assert cat.shape == (2, 6, 6, 6)
        head = torch.ops.unet_fast.conv3x3_head(x, torch.empty(27, 5), None, torch.empty(5, 2),
                                                None, 1, False)
        assert head.shape == (2, 2, 9, 7) and head.is_contiguous()
        assert torch.ops.unet_fast.upconv2x2(x, torch.empty(3, 8), None, False).shape == (
            2, 2, 18, 14)


@pytest.mark.skipif(DEVICE == "cpu", reason="CPU tensors are valid under the interpreter")
def test_cpu_tensor_without_interpreter_is_a_clear_error():
    with pytest.raises(ValueError, match="need CUDA tensors"):
        fused.maxpool2x2(torch.randn(1, 2, 4, 4))


def test_tuning_key_holds_the_batch_size():
    """Batch 1 wants tiles that fill the SMs, a throughput batch larger ones: the tuning cache is
    keyed on the batch size, in powers of two (a tiled run's smaller last batch of tiles need not
    re-tune), capped where every layer fills the GPU many times over."""
    assert "BATCH_BUCKET" in kconv.conv3x3_kernel_autotuned.keys
    assert [kconv.batch_bucket(n) for n in (1, 2, 3, 16, 17, 1000)] == [1, 2, 4, 16, 32, 32]

    class Recorder:
        def __getitem__(self, grid):
            return self

        def __call__(self, *args, **kwargs):
            self.kwargs = kwargs

    for n in (1, 3, 16):
        rec = Recorder()
        x = rand(n, 4, 6, 6)
        w = kconv.pack_conv3x3_weight(rand(8, 4, 3, 3))
        kconv.conv3x3_launch(x, w, None, torch.empty(n, 8, 4, 4, device=DEVICE), padding=0,
                             kernel=rec)
        assert rec.kwargs["BATCH_BUCKET"] == kconv.batch_bucket(n)


def test_channel_offsets_past_int32():
    """NCHW inputs put channels H*W apart: with 3 channels 2^30 apart, channel 2 starts at element
    2^31, which an int32 channel offset wraps to a negative address. The storage is 4 GiB of
    virtual memory of which only the few pages read are ever touched."""
    h = w = 6
    storage = torch.empty(2**31 + 64, dtype=F16, device=DEVICE)
    x = storage.as_strided((1, 3, h, w), (0, 2**30, w, 1))
    for c in range(3):
        x[0, c] = rand(h, w, dtype=F16)
    dense = x.contiguous()
    weight = rand(4, 3, 3, 3, dtype=F16)
    assert_matches(fused.conv3x3(x, kconv.pack_conv3x3_weight(weight), None, 0, False, False),
                   F.conv2d(dense.double(), weight.double()), F16)
    up = rand(3, 5, 2, 2, dtype=F16)
    assert_matches(fused.upconv2x2(x, kup.pack_upconv_weight(up), None, False),
                   F.conv_transpose2d(dense.double(), up.double(), stride=2), F16)


def test_round_to_tf32():
    from unet_fast.triton_kernels._common import round_to_tf32

    ulp = 2.0**-10  # TF32 spacing in [1, 2)
    x = torch.tensor([1.0, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2**-20, -(1 + 3 * ulp / 2),
                      2**-130, float("inf"), float("-inf"), 3.4028e38, float("nan")])
    want = torch.tensor([1.0, 1.0, 1 + 2 * ulp, 1 + ulp, -(1 + 2 * ulp),  # ties go to even
                         2**-130, float("inf"), float("-inf"), float("inf"), float("nan")])
    torch.testing.assert_close(round_to_tf32(x), want, rtol=0, atol=0, equal_nan=True)
    y = torch.randn(1000) * 100
    r = round_to_tf32(y)
    assert (r.view(torch.int32) & 0x1FFF).eq(0).all()  # on the TF32 grid ...
    assert ((r - y).abs() <= y.abs() * 2.0**-11).all()  # ... within half a TF32 ulp


def test_tf32_outputs_feed_the_next_layer_rounded():
    """With TF32, the tensor cores truncate fp32 operands; every conv output (the next layer's
    operand) is stored on the TF32 grid instead, rounded to nearest. The head's logits are not
    an operand and stay full fp32."""
    from unet_fast.triton_kernels._common import round_to_tf32

    x = rand(2, 8, 9, 8)
    w = kconv.pack_conv3x3_weight(rand(6, 8, 3, 3))
    ieee = fused.conv3x3(x, w, None, 1, True, False)
    tf32 = fused.conv3x3(x, w, None, 1, True, True)
    # the interpreter multiplies TF32 operands exactly, so only the epilogue's rounding differs
    torch.testing.assert_close(tf32, round_to_tf32(ieee), rtol=0, atol=0)
    # the first conv (few channels, one K step) also rounds the network's input it reads
    x3, w3 = rand(2, 3, 9, 8), kconv.pack_conv3x3_weight(rand(6, 3, 3, 3))
    torch.testing.assert_close(
        fused.conv3x3(x3, w3, None, 1, True, True),
        round_to_tf32(fused.conv3x3(round_to_tf32(x3), w3, None, 1, True, False)), rtol=0, atol=0)
    _, pooled = fused.conv3x3_pool(x, w, None, 1, True)
    torch.testing.assert_close(pooled, round_to_tf32(fused.conv3x3_pool(x, w, None, 1, False)[1]),
                               rtol=0, atol=0)
    up = kup.pack_upconv_weight(rand(8, 3, 2, 2))
    torch.testing.assert_close(fused.upconv2x2(x, up, None, True),
                               round_to_tf32(fused.upconv2x2(x, up, None, False)), rtol=0, atol=0)
    head_w = kconv.pack_head_weight(rand(3, 6, 1, 1))
    logits = fused.conv3x3_head(x, w, None, head_w, rand(3), 1, True)
    assert (logits.view(torch.int32) & 0x1FFF).ne(0).any()
