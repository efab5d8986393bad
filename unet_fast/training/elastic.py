"""Elastic deformation and flips/rotations, the paper's data augmentation, in vectorised torch.

A smooth random displacement field is drawn per sample: displacement vectors on a coarse
``grid_size x grid_size`` grid (3x3 in the paper) from a Gaussian with ``sigma`` = 10 px standard
deviation, interpolated bicubically to one vector per pixel (the coarse grid's corners sit on the
image's corner pixels, ``align_corners=True``). Every output pixel ``p`` then reads its input at
``p + d(p)`` (a backward warp), with reflection at the border. The same field is applied to the
image (bilinear or bicubic), the label mask (nearest neighbour, so labels stay labels) and the
weight map (bilinear). Runs on whatever device the tensors live on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_IMAGE_MODES = ("bilinear", "bicubic")


def _randn(shape: tuple[int, ...], generator: torch.Generator | None,
           device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, (n,), generator=generator, device=gen_device).cpu()


def coarse_to_dense(coarse: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel displacements ``(N, 2, H, W)`` (channel 0 = dy, 1 = dx, pixels) from coarse grid
    vectors ``(N, 2, g, g)`` by bicubic interpolation with ``align_corners=True``."""
    if coarse.ndim != 4 or coarse.shape[1] != 2:
        raise ValueError(f"coarse displacements must be (N, 2, gh, gw), got {tuple(coarse.shape)}")
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)


def random_displacement(n: int, height: int, width: int, sigma: float = 10.0,
                        grid_size: int = 3, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """A random smooth displacement field ``(n, 2, height, width)`` in pixels (dy, dx)."""
    if sigma < 0 or grid_size < 2:
        raise ValueError(f"need sigma >= 0 and grid_size >= 2, got {sigma}, {grid_size}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    coarse = _randn((n, 2, grid_size, grid_size), generator, device) * sigma
    return coarse_to_dense(coarse, height, width)


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample`` grid ``(N, H, W, 2)`` (x, y in [-1, 1], ``align_corners=True``) that
    reads pixel ``p + d(p)`` for every output pixel ``p``."""
    h, w = displacement.shape[-2:]
    dev, dt = displacement.device, displacement.dtype
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1) + displacement[:, 0]
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w) + displacement[:, 1]
    # A size-1 axis has no extent to normalise by; its only coordinate is 0.
    gy = ys * (2.0 / (h - 1)) - 1.0 if h > 1 else torch.zeros_like(ys)
    gx = xs * (2.0 / (w - 1)) - 1.0 if w > 1 else torch.zeros_like(xs)
    return torch.stack([gx, gy], dim=-1)


def warp(x: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp ``x`` (N, C, H, W) or (N, H, W) by ``displacement`` (N, 2, H, W), reflecting at the
    border. ``mode="nearest"`` keeps integer labels exact (they are warped in float64 and cast
    back to ``x``'s dtype)."""
    if mode not in (*_IMAGE_MODES, "nearest"):
        raise ValueError(f"mode must be 'bilinear', 'bicubic' or 'nearest', got {mode!r}")
    squeeze = x.ndim == 3
    xx = x.unsqueeze(1) if squeeze else x
    if xx.ndim != 4 or displacement.shape != (xx.shape[0], 2, *xx.shape[2:]):
        raise ValueError(f"displacement must be (N, 2, H, W) matching x; got x "
                         f"{tuple(x.shape)} and displacement {tuple(displacement.shape)}")
    if mode == "nearest":
        work = torch.float64  # exact for any int32 label id
    elif xx.dtype in (torch.float32, torch.float64):
        work = xx.dtype
    else:
        work = torch.float32  # half-precision coordinates would be off by up to a pixel
    grid = sampling_grid(displacement.to(work))
    out = F.grid_sample(xx.to(work), grid, mode=mode, padding_mode="reflection",
                        align_corners=True)
    out = out.to(x.dtype) if mode == "nearest" or not x.is_floating_point() else out
    return out.squeeze(1) if squeeze else out


def flip_rotate(x: torch.Tensor, flip: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per sample ``i``: flip the width axis if ``flip[i]``, then rotate by ``k[i]`` quarter
    turns (in the (H, W) plane). ``x`` is (N, ..., H, W); odd ``k`` needs H == W."""
    outs = []
    for i in range(x.shape[0]):
        xi = x[i]
        if bool(flip[i]):
            xi = torch.flip(xi, dims=(-1,))
        outs.append(torch.rot90(xi, int(k[i]), dims=(-2, -1)))
    return torch.stack(outs)


def augment(image: torch.Tensor, labels: torch.Tensor | None = None,
            weights: torch.Tensor | None = None, *, sigma: float = 10.0, grid_size: int = 3,
            flips: bool = True, image_mode: str = "bilinear",
            generator: torch.Generator | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Random elastic deformation plus flips and 90-degree rotations, the same for all inputs.

    Args:
        image: (N, C, H, W) float.
        labels: optional (N, H, W) integer mask, warped with nearest neighbour.
        weights: optional (N, H, W) float weight map, warped bilinearly.
        sigma: standard deviation in pixels of the coarse displacement vectors (0 disables).
        grid_size: coarse grid size (the paper's 3).
        flips: also apply a random horizontal flip and a random number of quarter turns
            (quarter turns only by 0 or 180 degrees when H != W).
        image_mode: ``"bilinear"`` or ``"bicubic"`` sampling of the image.
        generator: the torch.Generator that makes the draw reproducible.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {tuple(image.shape)}")
    if image_mode not in _IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {_IMAGE_MODES}, got {image_mode!r}")
    n, _, h, w = image.shape
    for name, t in (("labels", labels), ("weights", weights)):
        if t is not None and tuple(t.shape) != (n, h, w):
            raise ValueError(f"{name} must be (N, H, W) = {(n, h, w)}, got {tuple(t.shape)}")
    if sigma > 0:
        disp = random_displacement(n, h, w, sigma, grid_size, generator, image.device)
        image = warp(image, disp, image_mode)
        labels = warp(labels, disp, "nearest") if labels is not None else None
        weights = warp(weights, disp, "bilinear") if weights is not None else None
    if flips:
        flip = _randint(2, n, generator, image.device).bool()
        k = _randint(4, n, generator, image.device) if h == w else 2 * _randint(
            2, n, generator, image.device)
        image = flip_rotate(image, flip, k)
        labels = flip_rotate(labels, flip, k) if labels is not None else None
        weights = flip_rotate(weights, flip, k) if weights is not None else None
    return image, labels, weights
