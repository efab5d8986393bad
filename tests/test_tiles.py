"""extract_tiles / stitch_tiles (native ops) against the plain-torch references."""

from __future__ import annotations

import random

import pytest
import torch

from unet_fast.ops import extract_tiles, stitch_tiles, tile_origins
from unet_fast.ops.tiling import _ops
from unet_fast.ops.tiling_reference import extract_tiles_reference, stitch_tiles_reference

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def random_origins(rng: random.Random, n: int, h: int, w: int, t: int, reach: int,
                   device: str = "cpu") -> torch.Tensor:
    return tile_origins([rng.randrange(n) for _ in range(t)],
                        [rng.randint(-reach, h + reach) for _ in range(t)],
                        [rng.randint(-reach, w + reach) for _ in range(t)], device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ("reflect", "symmetric"))
@pytest.mark.parametrize("channels_last", (False, True))
def test_extract_matches_reference(mode: str, channels_last: bool, device: str) -> None:
    rng = random.Random(2)
    for _ in range(30):
        n, c, h, w = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 9), rng.randint(1, 9)
        image = torch.randn(n, c, h, w, device=device)
        if rng.random() < 0.3:
            image = image.to(memory_format=torch.channels_last)
        th, tw = rng.randint(1, 12), rng.randint(1, 12)
        origins = random_origins(rng, n, h, w, rng.randint(0, 5), 25, device)
        got = extract_tiles(image, origins, (th, tw), mode, channels_last)
        assert got.shape == (origins.shape[0], c, th, tw)
        if channels_last and c > 1 and origins.shape[0]:
            assert got.is_contiguous(memory_format=torch.channels_last)
        want = extract_tiles_reference(image.cpu(), origins.cpu(), (th, tw), mode)
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (*FLOATS, torch.uint8))
def test_extract_dtypes_and_strided_image(dtype: torch.dtype, device: str) -> None:
    image = (torch.rand(2, 3, 14, 10, device=device) * 50).to(dtype)[:, :, 1::2, ::3]
    origins = tile_origins([0, 1, 1], [-4, 3, 6], [-9, 0, 2], device)
    got = extract_tiles(image, origins, (7, 5), "reflect", channels_last=True)
    assert got.dtype == dtype
    assert torch.equal(got.cpu(), extract_tiles_reference(image.cpu(), origins.cpu(), (7, 5)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("weighted", (False, True))
def test_stitch_matches_reference(dtype: torch.dtype, weighted: bool, device: str) -> None:
    rng = random.Random(3)
    for _ in range(20):
        n, k, h, w = rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 12), rng.randint(1, 12)
        th, tw = rng.randint(1, 8), rng.randint(1, 8)
        origins = random_origins(rng, n, h, w, rng.randint(0, 6), 6, device)
        # a cropped, non-contiguous view of bigger tiles, as segment() passes them
        tiles = torch.randn(origins.shape[0], k, th + 2, tw + 3, device=device,
                            dtype=dtype)[:, :, 1:-1, 2:-1]
        weight = torch.rand(th, tw, device=device, dtype=dtype) if weighted else None
        out = torch.randn(n, k, h, w, device=device, dtype=dtype)
        want = stitch_tiles_reference(out.clone().cpu(), tiles.cpu(), origins.cpu(),
                                      None if weight is None else weight.cpu())
        got = stitch_tiles(out, tiles, origins, weight)
        assert got is out
        if weighted:
            # references multiply-add in the dtype, the kernel in fp32 for half types
            tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-6)
            torch.testing.assert_close(out.cpu(), want, rtol=tol, atol=tol)
        else:
            assert torch.equal(out.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_stitch_channels_last_out_and_determinism(device: str) -> None:
    out = torch.zeros(1, 3, 20, 20, device=device).to(memory_format=torch.channels_last)
    tiles = torch.randn(9, 3, 8, 8, device=device)
    origins = tile_origins([0] * 9, [-2, 5, 13] * 3, [-2] * 3 + [5] * 3 + [13] * 3, device)
    weight = torch.rand(8, 8, device=device)
    first = stitch_tiles(out.clone(), tiles, origins, weight)
    for _ in range(3):
        assert torch.equal(stitch_tiles(out.clone(), tiles, origins, weight), first)
    want = stitch_tiles_reference(torch.zeros(1, 3, 20, 20), tiles.cpu(), origins.cpu(),
                                  weight.cpu())
    torch.testing.assert_close(first.cpu(), want)


def test_extract_then_stitch_roundtrip() -> None:
    """Non-overlapping tiles cut from an image and stitched back rebuild it exactly."""
    image = torch.randn(2, 3, 23, 17)
    ys, xs = range(0, 23, 8), range(0, 17, 8)
    origins = tile_origins([b for b in range(2) for _ in ys for _ in xs],
                           [y for _ in range(2) for y in ys for _ in xs],
                           [x for _ in range(2) for _ in ys for x in xs])
    tiles = extract_tiles(image, origins, (8, 8))
    assert torch.equal(stitch_tiles(torch.zeros_like(image), tiles, origins), image)


def test_errors_name_the_argument() -> None:
    ops = _ops()
    image = torch.randn(2, 1, 5, 5)
    good = tile_origins([0], [0], [0])
    with pytest.raises(RuntimeError, match=r"origins must be a \(T, 3\)"):
        ops.extract_tiles(image, good[:, :2], 3, 3, "reflect", False)
    with pytest.raises(RuntimeError, match="origins must be int64"):
        ops.extract_tiles(image, good.int(), 3, 3, "reflect", False)
    with pytest.raises(RuntimeError, match=r"origins\[1\] has batch index 2, outside \[0, 2\)"):
        ops.extract_tiles(image, tile_origins([0, 2], [0, 0], [0, 0]), 3, 3, "reflect", False)
    with pytest.raises(RuntimeError, match="tile_h and tile_w must be >= 1"):
        ops.extract_tiles(image, good, 0, 3, "reflect", False)
    with pytest.raises(RuntimeError, match="image must be 4-D"):
        ops.extract_tiles(image[0], good, 3, 3, "reflect", False)
    out = torch.zeros(1, 2, 6, 6)
    tiles = torch.randn(1, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"tiles dtype .* must match out dtype"):
        ops.stitch_tiles(out, tiles.double(), good, None)
    with pytest.raises(RuntimeError, match="tiles has 1 channels but out has 2"):
        ops.stitch_tiles(out, tiles[:, :1], good, None)
    with pytest.raises(RuntimeError, match="tiles has 1 tiles but origins has 2 rows"):
        ops.stitch_tiles(out, tiles, tile_origins([0, 0], [0, 0], [0, 0]), None)
    with pytest.raises(RuntimeError, match=r"weight must be \(tile_h, tile_w\) = \(3, 3\)"):
        ops.stitch_tiles(out, tiles, good, torch.ones(3, 4))
    with pytest.raises(RuntimeError, match="out must be floating point"):
        ops.stitch_tiles(out.long(), tiles.long(), good, None)
    with pytest.raises(RuntimeError, match="has batch index 1, outside"):
        ops.stitch_tiles(out, tiles, tile_origins([1], [0], [0]), None)
    with pytest.raises(ValueError, match="same length"):
        tile_origins([0], [0, 1], [0])


def test_native_ops_run() -> None:
    image = torch.randn(1, 1, 6, 6)
    origins = tile_origins([0], [-2], [3])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        tiles = extract_tiles(image, origins, (4, 4))
        stitch_tiles(torch.zeros_like(image), tiles, origins)
    names = {e.name for e in prof.events()}
    assert {"unet_fast::extract_tiles", "unet_fast::stitch_tiles"} <= names


def test_opcheck() -> None:
    _ops()
    image = torch.randn(2, 3, 6, 5)
    origins = tile_origins([0, 1, 1], [-7, 2, 4], [0, -3, 9])
    for cl in (False, True):
        torch.library.opcheck(torch.ops.unet_fast.extract_tiles.default,
                              (image, origins, 4, 7, "symmetric", cl))
    tiles = torch.randn(3, 2, 4, 4)
    for weight in (None, torch.rand(4, 4)):
        torch.library.opcheck(torch.ops.unet_fast.stitch_tiles.default,
                              (torch.zeros(2, 2, 6, 6), tiles, origins, weight))
