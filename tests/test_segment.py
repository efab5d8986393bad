"""unet_fast.segment: seamless overlap-tile segmentation of images of any size."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

import unet_fast as uf
from unet_fast import sizes
from unet_fast.ops import mirror_pad
from unet_fast.tiling import estimate_tile_bytes
from unet_fast.tiling.overlap_tile import receptive_radius

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def make_models(device: str = "cpu", **kwargs):
    ref = uf.reference.UNet(**kwargs).eval().to(device)
    return ref, uf.UNet.from_reference(ref).eval()


def untiled(model: torch.nn.Module, image: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """One pass of a valid-padding model over the whole mirror-extended image, cropped to it."""
    d = model.config.depth
    m = sizes.margin(d)
    h, w = image.shape[-2:]
    eh, ew = (sizes.output_size(sizes.input_size_for_output(n, d), d) - n for n in (h, w))
    with torch.inference_mode():
        return model(mirror_pad(image, [m, m + eh, m, m + ew], mode))[..., :h, :w].float()


def assert_float_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item() or 1.0
    err = (got - want).abs().max().item()
    assert err <= 1e-5 * scale, f"max abs diff {err} vs scale {scale}"


@pytest.mark.parametrize("depth", (2, 3))
def test_valid_tiling_is_seamless_random_sizes(depth: int) -> None:
    rng = random.Random(depth)
    ref, fast = make_models(in_channels=2, num_classes=3, base_channels=4, depth=depth)
    step, lo = 2**depth, sizes.input_size_for_output(4 % 2**depth + 1, depth)
    for i in range(8):
        n = rng.randint(1, 2)
        h, w = (1, 1) if i == 0 else (rng.randint(1, 70), rng.randint(1, 70))
        tile = (lo + step * rng.randint(0, 4), lo + step * rng.randint(0, 4))
        mode = rng.choice(("reflect", "symmetric"))
        image = torch.randn(n, 2, h, w)
        for model in (ref, fast):
            got = uf.segment(model, image, tile_size=tile, mirror_mode=mode,
                             batch_size=rng.randint(1, 5))
            assert got.shape == (n, 3, h, w) and got.dtype == torch.float32
            assert_float_rounding(got, untiled(model, image, mode))


def test_paper_network_2000x1500_matches_untiled_pass() -> None:
    """The Done-when check: depth 4 (92 px margin), 572 tiles, small width for the CPU."""
    _, fast = make_models(base_channels=4)
    image = torch.rand(1, 2000, 1500)
    want = untiled(fast, image[None])[0]
    got = fast.segment(image, tile_size=572)
    assert got.shape == (2, 2000, 1500)
    assert_float_rounding(got, want)


def test_budget_picks_tile_and_batch() -> None:
    _, fast = make_models(base_channels=4, depth=3)
    image = torch.randn(1, 1, 150, 130)
    small = 4 * estimate_tile_bytes(fast.config, 100, 100, torch.float32)
    got = uf.segment(fast, image, memory_budget=small)
    assert_float_rounding(got, untiled(fast, image))
    need = estimate_tile_bytes(fast.config, sizes.input_size_for_output(6, 3),
                               sizes.input_size_for_output(6, 3), torch.float32)
    with pytest.raises(ValueError, match=r"memory_budget of 1000 bytes is below the estimated"):
        uf.segment(fast, image, memory_budget=1000)
    assert need > 1000


def test_large_image_peak_memory_within_budget() -> None:
    """Measured peak resident memory of a 2000x1500 run (fresh process, see the probe)."""
    budget = 64 << 20
    probe = os.path.join(os.path.dirname(__file__), "segment_memory_probe.py")
    res = subprocess.run([sys.executable, probe, "fast", "4", "2000", "1500", str(budget)],
                         capture_output=True, text=True, check=True, timeout=300)
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    # the budget covers the tile batches; the full-size float32 result comes on top
    assert stats["peak_bytes"] <= budget + stats["result_bytes"], stats


@pytest.mark.parametrize("padding", ("valid", "same"))
def test_labels_never_hold_full_float_logits(padding: str) -> None:
    """Issue 19: labels are computed band by band, so the peak is the labels plus the budget
    (it used to add full-size float32 logits, and for same padding their weight sums)."""
    budget = 8 << 20
    probe = os.path.join(os.path.dirname(__file__), "segment_memory_probe.py")
    res = subprocess.run([sys.executable, probe, "fast", "2", "2000", "2000", str(budget),
                          "labels", "2", padding],
                         capture_output=True, text=True, check=True, timeout=600)
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats["result_bytes"] == 2000 * 2000 * 8  # int64 labels
    # RSS also holds a few MiB the budget does not model (allocator slack, oneDNN scratch; 1-3
    # MiB measured for same padding, varying run to run); full-size float32 logits would add 32
    # MB more (the old code peaked 28 MB over this bound)
    slack = 4 << 20
    assert stats["peak_bytes"] <= budget + stats["result_bytes"] + slack, stats


def test_outputs_and_3d_input() -> None:
    ref, _ = make_models(num_classes=3, base_channels=4, depth=2)
    image = torch.randn(1, 21, 34)
    logits = uf.segment(ref, image)
    assert logits.shape == (3, 21, 34)
    probs = uf.segment(ref, image, output="probabilities")
    torch.testing.assert_close(probs, logits.softmax(0))
    labels = uf.segment(ref, image, output="labels")
    assert labels.dtype == torch.int64 and labels.shape == (21, 34)
    assert torch.equal(labels, logits.argmax(0))
    assert torch.equal(uf.segment(ref, image, output="probs"), probs)
    binary, _ = make_models(num_classes=1, base_channels=4, depth=2)
    logit = uf.segment(binary, image)
    torch.testing.assert_close(uf.segment(binary, image, output="probs"), logit.sigmoid())
    assert torch.equal(uf.segment(binary, image, output="labels"), (logit[0] > 0).long())
    empty = uf.segment(ref, torch.randn(0, 1, 9, 9))
    assert empty.shape == (0, 3, 9, 9)


def test_tta_averages_flips() -> None:
    """Image = one valid output tile: with a symmetric margin, flips commute with tiling."""
    ref, _ = make_models(base_channels=4, depth=2)
    side = sizes.output_size(sizes.input_size_for_output(20, 2), 2)
    image = torch.randn(1, 1, side, side)
    got = uf.segment(ref, image, tta=True, tile_size=sizes.input_size_for_output(side + 1, 2))
    want = sum(untiled(ref, image.flip(f) if f else image).flip(f) if f else untiled(ref, image)
               for f in ((), (3,), (2,), (2, 3))) / 4
    assert_float_rounding(got, want)


def test_determinism_and_reference_agreement() -> None:
    ref, fast = make_models(base_channels=4, depth=3, padding="same")
    image = torch.randn(2, 1, 45, 60)
    a = uf.segment(fast, image, tile_size=32, tta=True)
    assert torch.equal(a, uf.segment(fast, image, tile_size=32, tta=True))
    torch.testing.assert_close(a, uf.segment(ref, image, tile_size=32, tta=True),
                               rtol=1e-4, atol=1e-4)


def test_bfloat16_model() -> None:
    """Tiles are cast to the model's dtype; the stitched result is float32 either way."""
    _, fast = make_models(base_channels=4, depth=3)
    image = torch.randn(1, 1, 150, 130)
    want = uf.segment(fast, image, tile_size=124)
    got = uf.segment(fast.to(torch.bfloat16), image, tile_size=124)
    assert got.dtype == torch.float32
    assert (got - want).norm() <= 0.05 * want.norm()
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.99


def test_same_padding_margin_matches_whole_pass() -> None:
    """Cores on the pooling grid + a context of the receptive margin = one whole-image pass."""
    ref, _ = make_models(base_channels=4, depth=2, padding="same")
    image = torch.randn(1, 1, 50, 37)
    c = receptive_radius(2)  # 23; 20 (the valid margin) is not enough: pooling reaches further
    with torch.inference_mode():
        # padded to 120 x 108, multiples of 4 like every window, origin -c like the first one
        want = ref(mirror_pad(image, [c, c + 24, c, c + 25]))[..., c:c + 50, c:c + 37]
    got = uf.segment(ref, image, blend="margin", tile_size=2 * c + 16)
    assert_float_rounding(got, want)


def test_native_ops_used() -> None:
    ref, _ = make_models(base_channels=4, depth=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        uf.segment(ref, torch.randn(1, 1, 10, 10))
    names = {e.name for e in prof.events()}
    assert {"unet_fast::extract_tiles", "unet_fast::stitch_tiles"} <= names


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    ref, _ = make_models(base_channels=4, depth=2)
    uf.segment(ref, torch.randn(1, 1, 30, 30), tile_size=sizes.input_size_for_output(8, 2))
    assert "segment" not in capsys.readouterr().err
    uf.segment(ref, torch.randn(1, 1, 30, 30), tile_size=sizes.input_size_for_output(8, 2),
               progress=True)
    assert "segment" in capsys.readouterr().err


def test_bad_arguments() -> None:
    ref, _ = make_models(base_channels=4, depth=2)
    img = torch.randn(1, 1, 20, 20)
    cases = [
        (dict(output="mask"), ValueError, "output must be one of"),
        (dict(mirror_mode="wrap"), ValueError, "mirror_mode must be one of"),
        (dict(blend="max"), ValueError, "blend must be one of"),
        (dict(tile_size=101), ValueError, r"tile_size 101 is invalid.*nearest valid: 100 or 104"),
        (dict(tile_size=0), ValueError, "tile_size must be a positive int"),
        (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (dict(tta=True, batch_size=2), ValueError, "batch_size must be an int >= 4"),
        (dict(memory_budget=-5), ValueError, "memory_budget must be a positive"),
        (dict(overlap=1.5), ValueError, r"overlap is the fraction .* in \[0, 1\)"),
        (dict(progress="yes"), TypeError, "progress must be True or False"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            uf.segment(ref, img, **kwargs)
    with pytest.raises(ValueError, match=r"image has 3 channel\(s\) but the model expects 1"):
        uf.segment(ref, torch.randn(3, 20, 20))
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\) or \(N, C, H, W\)"):
        uf.segment(ref, torch.randn(20, 20))
    with pytest.raises(ValueError, match=r"H, W >= 1"):
        uf.segment(ref, torch.randn(1, 0, 20))
    with pytest.raises(TypeError, match=r"model must be a unet_fast\.UNet"):
        uf.segment(torch.nn.Conv2d(1, 2, 1), img)
    same, _ = make_models(base_channels=4, depth=2, padding="same")
    with pytest.raises(ValueError, match="context in pixels per side"):
        uf.segment(same, img, blend="margin", overlap=0.5)
    with pytest.raises(ValueError, match=r"tile_size 16 cannot be exact with blend='margin'.*"
                                         r"multiple of 4 \(2\*\*depth\); nearest: 20"):
        uf.segment(same, img, blend="margin", tile_size=16, overlap=8)


@pytest.mark.gpu
@pytest.mark.parametrize("padding", ("valid", "same"))
def test_gpu_matches_cpu(padding: str) -> None:
    ref, _ = make_models(base_channels=4, depth=3, padding=padding)
    image = torch.randn(2, 1, 300, 211)
    cpu = uf.segment(ref, image, tile_size=108 if padding == "valid" else 64)
    ref_gpu, fast_gpu = make_models("cuda", base_channels=4, depth=3, padding=padding)
    ref_gpu.load_state_dict(ref.state_dict())
    for model in (ref_gpu, fast_gpu):
        got = uf.segment(model, image, tile_size=108 if padding == "valid" else 64)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), cpu, rtol=1e-3, atol=1e-3)
    assert math.isfinite(got.sum().item())
