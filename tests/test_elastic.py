"""Elastic deformation and flips/rotations against their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unet_fast.training.elastic import augment, coarse_to_dense, random_displacement, warp


def test_zero_displacement_is_identity():
    x = torch.randn(2, 3, 11, 14)
    lab = torch.randint(0, 5, (2, 11, 14))
    zero = torch.zeros(2, 2, 11, 14)
    for mode in ("bilinear", "bicubic"):
        torch.testing.assert_close(warp(x, zero, mode), x, atol=1e-5, rtol=0)
    assert torch.equal(warp(lab, zero, "nearest"), lab)


def test_constant_displacement_shifts():
    x = torch.randn(1, 2, 16, 20, dtype=torch.float64)
    disp = torch.zeros(1, 2, 16, 20, dtype=torch.float64)
    disp[:, 0], disp[:, 1] = 2.0, -3.0  # output (y, x) reads input (y + 2, x - 3)
    out = warp(x, disp, "bilinear")
    torch.testing.assert_close(out[..., :14, 3:], x[..., 2:, :17])
    # Reflection at the border: x - 3 < 0 mirrors about the first pixel centre.
    torch.testing.assert_close(out[..., :14, 0], x[..., 2:, 3])
    lab = torch.randint(0, 9, (1, 16, 20))
    assert torch.equal(warp(lab, disp.float(), "nearest")[:, :14, 3:], lab[:, 2:, :17])


def test_half_pixel_displacement_interpolates_linearly():
    x = torch.randn(1, 1, 6, 9, dtype=torch.float64)
    disp = torch.zeros(1, 2, 6, 9, dtype=torch.float64)
    disp[:, 1] = 0.25
    out = warp(x, disp, "bilinear")
    torch.testing.assert_close(out[..., :-1], 0.75 * x[..., :-1] + 0.25 * x[..., 1:])


def test_coarse_grid_is_bicubic_with_corners_on_pixels():
    coarse = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    dense = coarse_to_dense(coarse, 21, 31)
    ref = F.interpolate(coarse, size=(21, 31), mode="bicubic", align_corners=True)
    torch.testing.assert_close(dense, ref)
    # align_corners=True puts the 3x3 grid on the corner, edge-middle and centre pixels.
    torch.testing.assert_close(dense[..., ::10, ::15], coarse)


def test_random_displacement_std():
    g = torch.Generator().manual_seed(1)
    d = random_displacement(4000, 9, 9, sigma=10.0, generator=g)
    assert d.shape == (4000, 2, 9, 9)
    grid_pts = d[..., ::4, ::4]  # exactly the coarse vectors
    assert abs(grid_pts.std().item() - 10.0) < 0.2
    assert abs(grid_pts.mean().item()) < 0.2
    # smooth: neighbouring pixels move almost alike
    assert (d[..., 1:, :] - d[..., :-1, :]).abs().mean() < 0.5 * d.abs().mean()


def test_same_field_for_all_inputs_and_labels_stay_labels():
    img = torch.randn(2, 1, 24, 24, dtype=torch.float64)
    lab = torch.randint(0, 4, (2, 24, 24)) * 7
    g = torch.Generator().manual_seed(5)
    out_img, out_lab, out_w = augment(img, lab, img[:, 0].clone(), generator=g, flips=False)
    # the weight map went through exactly the image's (bilinear) warp
    torch.testing.assert_close(out_w, out_img[:, 0])
    assert set(out_lab.unique().tolist()) <= set(lab.unique().tolist())
    # and the draw is the documented one: a 3x3 grid with 10 px std from the same generator
    disp = random_displacement(2, 24, 24, 10.0, 3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out_img, warp(img, disp, "bilinear"))
    assert torch.equal(out_lab, warp(lab, disp, "nearest"))
    assert not torch.equal(out_lab, lab)  # it did deform


def test_flips_rotations_are_dihedral_and_shared():
    img = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    lab = torch.arange(2 * 36).view(2, 6, 6)
    seen = set()
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        oi, ol, ow = augment(img, lab, img[:, 0], sigma=0.0, generator=g)
        for i in range(2):
            cands = [torch.rot90(t, k, (-2, -1)) for t in (lab[i], lab[i].flip(-1))
                     for k in range(4)]
            idx = [j for j, c in enumerate(cands) if torch.equal(c, ol[i])]
            assert len(idx) == 1
            seen.add(idx[0])
            assert torch.equal(oi[i, 0].long(), ol[i]) and torch.equal(ow[i].long(), ol[i])
    assert seen == set(range(8))


def test_non_square_keeps_shape():
    img = torch.randn(3, 2, 8, 12)
    for seed in range(8):
        oi, ol, _ = augment(img, torch.zeros(3, 8, 12, dtype=torch.long),
                            generator=torch.Generator().manual_seed(seed))
        assert oi.shape == img.shape and ol.shape == (3, 8, 12)


def test_seeded_and_reproducible():
    img = torch.randn(1, 1, 20, 20)
    a = augment(img, generator=torch.Generator().manual_seed(3))[0]
    b = augment(img, generator=torch.Generator().manual_seed(3))[0]
    c = augment(img, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        augment(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="labels must be"):
        augment(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), "area")


@pytest.mark.gpu
def test_runs_on_gpu_like_cpu():
    img = torch.randn(2, 1, 32, 32)
    lab = torch.randint(0, 3, (2, 32, 32))
    cpu = augment(img, lab, generator=torch.Generator().manual_seed(0))
    gpu = augment(img.cuda(), lab.cuda(), generator=torch.Generator().manual_seed(0))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=1e-4)
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.99
    g = torch.Generator(device="cuda").manual_seed(0)
    assert augment(img.cuda(), lab.cuda(), generator=g)[0].is_cuda
