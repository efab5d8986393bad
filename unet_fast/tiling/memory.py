"""Memory estimate of one forward pass per tile, and the default memory budget.

The estimate walks the network level by level and counts, in elements of the compute dtype:

* every skip connection (the reference forward keeps all of them alive until the end);
* the largest step on top of those: a 3x3 convolution holds its input and output, and a
  stock CPU/GPU convolution may reorder both into its own blocked layout (counted as one more
  copy of each, hence ``2 * (in + out)``); a decoder step also holds the tensor coming from
  below, the up-sampled tensor and the concatenation;
* the tile batch itself (input window, output tile, and the float32 copy stitched).

Weights (and packed weight copies) are not counted: they are resident before segmentation starts.
The estimate is linear in the batch, deliberately generous, and checked against measured peak
memory in tests/test_segment.py.
"""

from __future__ import annotations

import os

import torch

from ..config import UNetConfig


def _conv(n: int, valid: bool) -> int:
    return n - 2 if valid else n


def estimate_tile_bytes(config: UNetConfig, tile_h: int, tile_w: int, dtype: torch.dtype,
                        batch: int = 1) -> int:
    """Estimated peak bytes of ``batch`` forward passes on ``(tile_h, tile_w)`` windows."""
    valid = config.padding == "valid"
    item = torch.empty((), dtype=dtype).element_size()
    h, w = tile_h, tile_w
    c_in = config.in_channels
    skips = 0
    step_peak = 0
    sizes = []
    for level in range(config.depth + 1):
        c = config.channels(level)
        h1, w1 = _conv(h, valid), _conv(w, valid)
        h2, w2 = _conv(h1, valid), _conv(w1, valid)
        conv1 = 2 * (c_in * h * w + c * h1 * w1)
        conv2 = 2 * (c * h1 * w1 + c * h2 * w2)
        step_peak = max(step_peak, skips + conv1, skips + conv2)
        sizes.append((c, h2, w2))
        if level < config.depth:
            skips += c * h2 * w2
            h, w, c_in = h2 // 2, w2 // 2, c
    # decoder: from below (c_b, hb, wb) up to the skip's level
    c_b, hb, wb = sizes[-1]
    for level in reversed(range(config.depth)):
        c, hs, ws = sizes[level]
        hu, wu = 2 * hb, 2 * wb
        hc, wc = (hu, wu) if valid else (hs, ws)
        up = c * hu * wu
        cat = 2 * c * hc * wc
        h1, w1 = _conv(hc, valid), _conv(wc, valid)
        h2, w2 = _conv(h1, valid), _conv(w1, valid)
        held = c_b * hb * wb + up
        step_peak = max(step_peak,
                        skips + held + cat + 2 * (cat + c * h1 * w1),
                        skips + 2 * (c * h1 * w1 + c * h2 * w2))
        c_b, hb, wb = c, h2, w2
    head = config.num_classes * hb * wb
    tile_io = config.in_channels * tile_h * tile_w * item + head * (item + 4)
    return batch * (step_peak * item + 2 * head * item + tile_io)


def default_memory_budget(device: torch.device) -> int:
    """Half the free memory of a CUDA device; on the CPU a quarter of the free RAM, <= 2 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    available = _available_ram()
    return int(min(2 * 1024**3, available // 4)) if available else 1024**3


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
