"""Same-padded networks: one exact pass when the image fits, grid-aligned blending that beats
MONAI's sliding window, and blend="margin" exact for every tile size it accepts."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf
from unet_fast.tiling.geometry import plan_blend_axis
from unet_fast.tiling.overlap_tile import receptive_radius


def same_net(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random same-padded BatchNorm net with non-trivial running statistics, eval mode."""
    torch.manual_seed(seed)
    args = dict(padding="same", norm="batch", base_channels=4)
    args.update(kwargs)
    net = uf.reference.UNet(**args)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def smooth_image(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, c, h // 16 + 2, w // 16 + 2, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]


@pytest.mark.parametrize("upsample", ("bilinear", "transpose"))
@pytest.mark.parametrize("hw", ((300, 451), (400, 600), (37, 45), (16, 17)))
def test_image_that_fits_runs_once_at_its_own_size(upsample: str, hw: tuple[int, int]) -> None:
    ref = same_net(in_channels=3, num_classes=2, upsample=upsample)
    fast = uf.UNet.from_reference(ref).eval()
    image = torch.rand(3, *hw)
    with torch.no_grad():
        want = ref(image[None])[0]
    for model, kwargs in ((ref, {}), (fast, {}), (ref, {"tile_size": (hw[0], hw[1] + 7)})):
        got = uf.segment(model, image, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    labels = uf.segment(fast, image, output="labels", tile_size=max(hw))
    assert (labels == want.argmax(0)).float().mean().item() >= 0.9999


def test_blend_plan_stays_on_the_grid_inside_the_image() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        depth = rng.randint(1, 5)
        step = 2**depth
        n = rng.randint(1, 3000)
        tile = rng.randint(step, 700)
        overlap = rng.choice((0.0, 0.25, 0.5, 0.9, rng.random() * 0.99))
        plan = plan_blend_axis(n, tile, depth, overlap)
        wins = plan.windows
        if n < step:  # below the network's minimum: one minimum window into the mirror
            assert [(w.start, w.size, w.keep) for w in wins] == [(0, step, n)]
            continue
        if n <= tile:
            assert [(w.start, w.size, w.keep) for w in wins] == [(0, n, n)]
            continue
        covered = np.zeros(n, dtype=bool)
        for i, w in enumerate(wins):
            assert w.start % step == 0 and w.start >= 0 and w.start + w.size <= n
            assert w.size >= step and (w.crop, w.keep, w.out) == (0, w.size, w.start)
            assert w.at_start == (w.start == 0) and w.at_end == (w.start + w.size == n)
            if i + 1 < len(wins):  # all but the last: the requested size on the grid
                assert w.size == max(tile // step * step, step)
            covered[w.start:w.start + w.size] = True
        assert covered.all() and wins[0].start == 0 and wins[-1].start + wins[-1].size == n
        assert len(wins) == len({w.start for w in wins})
        stride = max(step, int(wins[0].size * (1 - overlap)) // step * step)
        gaps = [b.start - a.start for a, b in itertools.pairwise(wins)]
        assert max(gaps, default=0) <= stride


def _numpy_blend(model: torch.nn.Module, image: np.ndarray, tile: int, depth: int,
                 overlap: float) -> np.ndarray:
    """float64 weighted mean of exact crops (windows taken from the plan), written from the
    documented rule: Gaussian sigma = size/8, flat towards image borders, floor 1e-3."""
    _, h, w = image.shape

    def profile(start: int, size: int, n: int) -> np.ndarray:
        x = np.arange(size) - (size - 1) / 2
        g = np.exp(-0.5 * (x / (size / 8)) ** 2)
        g /= g.max()
        if start == 0:
            g[:size // 2] = 1
        if start + size == n:
            g[size // 2:] = 1
        return g

    acc, wsum = None, np.zeros((h, w))
    for r in plan_blend_axis(h, tile, depth, overlap).windows:
        for c in plan_blend_axis(w, tile, depth, overlap).windows:
            crop = image[:, r.start:r.start + r.size, c.start:c.start + c.size]
            with torch.no_grad():
                y = model(torch.from_numpy(crop)[None])[0].double().numpy()
            wt = np.maximum(np.outer(profile(r.start, r.size, h), profile(c.start, c.size, w)),
                            1e-3)
            if acc is None:
                acc = np.zeros((y.shape[0], h, w))
            acc[:, r.start:r.start + r.size, c.start:c.start + c.size] += y * wt
            wsum[r.start:r.start + r.size, c.start:c.start + c.size] += wt
    return acc / wsum


def test_blending_matches_numpy_oracle() -> None:
    model = same_net(in_channels=2, num_classes=3, depth=3)
    image = smooth_image(2, 90, 77, 1).numpy()
    for tile, overlap in ((40, 0.25), (33, 0.5), (64, 0.0)):
        got = uf.segment(model, image, tile_size=tile, overlap=overlap)
        want = _numpy_blend(model, image, tile, 3, overlap)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


CASES = ((300, 420, 128), (380, 300, 96), (260, 400, 192))


@pytest.fixture(scope="module")
def monai_comparison() -> list[dict[str, float]]:
    """mean |difference| to one whole pass and label agreement, unet_fast vs MONAI."""
    inferers = pytest.importorskip("monai.inferers")
    model = same_net(seed=3, in_channels=3, num_classes=2, base_channels=8)
    rows = []
    for i, (h, w, tile) in enumerate(CASES):
        image = smooth_image(3, h, w, 10 + i)[None]
        with torch.no_grad():
            whole = model(image)
            peer = inferers.sliding_window_inference(image, (tile, tile), 4, model,
                                                     overlap=0.25, mode="gaussian")
        ours = uf.segment(model, image, tile_size=tile, overlap=0.25, blend="gaussian")
        labels = whole.argmax(1)
        rows.append({
            "ours_mean": (ours - whole).abs().mean().item(),
            "monai_mean": (peer - whole).abs().mean().item(),
            "ours_labels": (ours.argmax(1) == labels).float().mean().item(),
            "monai_labels": (peer.argmax(1) == labels).float().mean().item(),
        })
    return rows


@pytest.mark.parametrize("case", range(len(CASES)))
def test_blending_beats_monai_sliding_window(monai_comparison, case: int) -> None:
    row = monai_comparison[case]
    assert row["ours_mean"] <= 0.5 * row["monai_mean"], row
    assert row["ours_labels"] >= row["monai_labels"], row


@pytest.mark.parametrize("depth", (2, 3))
def test_margin_exact_for_every_accepted_tile_size(depth: int) -> None:
    model = same_net(num_classes=2, depth=depth)
    image = np.random.default_rng(depth).standard_normal((1, 50, 37)).astype(np.float32)
    c = receptive_radius(depth)
    padded = np.pad(image, ((0, 0), (c, c), (c, c)), mode="reflect")
    with torch.no_grad():
        want = model(torch.from_numpy(padded)[None])[0, :, c:c + 50, c:c + 37]
    step, accepted = 2**depth, 0
    for tile in range(2 * c - 3, 2 * c + 5 * step + 3):
        if tile >= 2 * c + step and (tile - 2 * c) % step == 0:
            got = uf.segment(model, image, tile_size=tile, blend="margin")
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            accepted += 1
        else:
            below = 2 * c + max(tile - 2 * c, 0) // step * step
            near = (f"{below} or {below + step}" if below >= 2 * c + step
                    else f"{2 * c + step}")
            with pytest.raises(ValueError, match=rf"^tile_size {tile} cannot be exact with "
                                                 rf"blend='margin'.*nearest: {near}$"):
                uf.segment(model, image, tile_size=tile, blend="margin")
    assert accepted == 5


def test_margin_refuses_inexact_paper_depth_tile() -> None:
    model = same_net(depth=4, base_channels=2)
    image = torch.rand(1, 40, 40)
    # the measured case: tile 256 kept a 42-px core (max difference 7.5)
    with pytest.raises(ValueError, match=r"nearest: 246 or 262$"):
        uf.segment(model, image, tile_size=256, blend="margin")


INT_TYPES = (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64)


@pytest.mark.parametrize("np_type", INT_TYPES)
def test_integer_images_scaled_by_their_type_max(np_type: type) -> None:
    model = same_net(in_channels=2, num_classes=3, depth=2)
    info = np.iinfo(np_type)
    rng = np.random.default_rng(7)
    a = rng.integers(info.min, info.max, size=(2, 23, 30), dtype=np_type, endpoint=True)
    a[0, 0, :2] = (info.min, info.max)
    want = uf.segment(model, torch.from_numpy((a.astype(np.float64) / info.max)
                                              .astype(np.float32)), tile_size=16)
    for image in (a, torch.from_numpy(a)):
        got = uf.segment(model, image, tile_size=16)  # tiled: several gathers
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if np_type in (np.uint8, np.uint16):  # exactly as the command line reads such files
        from unet_fast.image_io import normalise

        assert torch.equal(uf.segment(model, a), uf.segment(model, normalise(a)))


def test_numpy_and_bool_inputs() -> None:
    model = same_net(num_classes=2, depth=2)
    a = np.random.default_rng(1).random((1, 19, 21))
    torch.testing.assert_close(uf.segment(model, a), uf.segment(model, torch.from_numpy(a)))
    readonly = a.astype(">f4")  # big-endian and read-only
    readonly.flags.writeable = False
    torch.testing.assert_close(uf.segment(model, readonly),
                               uf.segment(model, torch.from_numpy(a.astype(np.float32))))
    mask = a > 0.5
    assert torch.equal(uf.segment(model, mask), uf.segment(model, mask.astype(np.float32)))
    with pytest.raises(TypeError, match=r"image must be a torch.Tensor or numpy.ndarray"):
        uf.segment(model, [[[0.0]]])
    with pytest.raises(TypeError, match=r"numpy array of <U1"):
        uf.segment(model, np.array([[["a"]]]))
