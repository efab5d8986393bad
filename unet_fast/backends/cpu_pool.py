"""The CPU backend's 2x2 max pooling on channels_last maps.

aten's ``max_pool2d`` on the CPU also computes the argmax indices (an int64 map as large as the
output, which inference throws away) and is 1.1-3x slower on NHWC maps than three element-wise
maxima of the four strided quarter views into one output (measured on the paper and same-pad
networks' maps, 2 threads: 64x512x512 bf16 8.0 against 24.0 ms, fp32 12.4 against 30.0 ms;
``benchmarks/NOTES.md``). ``torch.maximum`` propagates NaN as pooling does, and an odd row or
column is dropped (floor mode), so the result equals ``F.max_pool2d(x, 2)`` bit for bit.
"""

from __future__ import annotations

import torch


def maxpool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for an (N, C, H, W) map; channels_last in, channels_last out."""
    h2, w2 = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    out = torch.maximum(x[..., 0:h2:2, 0:w2:2], x[..., 0:h2:2, 1:w2:2])
    torch.maximum(out, x[..., 1:h2:2, 0:w2:2], out=out)
    return torch.maximum(out, x[..., 1:h2:2, 1:w2:2], out=out)
