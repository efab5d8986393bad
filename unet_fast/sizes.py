"""Valid-size arithmetic: the single place that knows which spatial sizes a U-Net accepts.

A valid-padding ("paper") U-Net of depth ``d`` loses 4 pixels per pair of 3x3 convolutions and
needs every 2x2 max-pool to see an even size. Working back from the bottleneck size ``b`` gives
the closed forms used here::

    input  = 2**d * b + 8 * 2**d - 4
    output = 2**d * b - 4 * 2**d + 4          (so input - output = 12 * 2**d - 8)

For ``d = 4`` that is ``input = 16 b + 124`` and ``output = input - 184``: the paper's 572 -> 388.
The smallest valid input needs ``output >= 1``. A same-padding U-Net keeps the size; it needs
``input >= 2**d`` so the bottleneck is at least one pixel (odd sizes are floored by pooling and the
up-sampled map is zero-padded back to the skip's size, as the popular PyTorch U-Net does).
"""

from __future__ import annotations

import math


def _check_depth_padding(depth: int, padding: str) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def margin(depth: int = 4, padding: str = "valid") -> int:
    """Pixels lost on each side between input and output (92 for the paper network)."""
    _check_depth_padding(depth, padding)
    if padding == "same":
        return 0
    return 6 * 2**depth - 4


def _min_bottleneck(depth: int) -> int:
    # smallest b with output = 2**d * b - 4 * 2**d + 4 >= 1
    return math.ceil((4 * 2**depth - 3) / 2**depth)


def min_input_size(depth: int = 4, padding: str = "valid") -> int:
    """The smallest spatial size the network accepts (188 for the paper network)."""
    _check_depth_padding(depth, padding)
    if padding == "same":
        return 2**depth
    return 2**depth * _min_bottleneck(depth) + 8 * 2**depth - 4


def is_valid_input_size(n: int, depth: int = 4, padding: str = "valid") -> bool:
    """Whether an input of spatial size ``n`` runs through the network without a size error."""
    _check_depth_padding(depth, padding)
    lo = min_input_size(depth, padding)
    if n < lo:
        return False
    return padding == "same" or (n - lo) % 2**depth == 0


def nearest_valid_sizes(n: int, depth: int = 4, padding: str = "valid") -> tuple[int | None, int]:
    """The largest valid size ``<= n`` (None if there is none) and the smallest valid size ``>= n``."""
    _check_depth_padding(depth, padding)
    lo = min_input_size(depth, padding)
    if n <= lo:
        return (lo if n == lo else None), lo
    step = 1 if padding == "same" else 2**depth
    below = lo + (n - lo) // step * step
    above = below if below == n else below + step
    return below, above


def output_size(n: int, depth: int = 4, padding: str = "valid") -> int:
    """Spatial output size for an input of size ``n``; raises ValueError for an invalid ``n``."""
    check_input_size(n, depth, padding)
    return n - 2 * margin(depth, padding)


def input_size_for_output(m: int, depth: int = 4, padding: str = "valid") -> int:
    """The smallest valid input size whose output is at least ``m`` pixels."""
    _check_depth_padding(depth, padding)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"wanted output size must be a positive integer, got {m!r}")
    return nearest_valid_sizes(m + 2 * margin(depth, padding), depth, padding)[1]


def check_input_size(n: int, depth: int = 4, padding: str = "valid", axis: str = "size") -> None:
    """Raise a ValueError naming the nearest valid sizes if ``n`` is not a valid input size."""
    if is_valid_input_size(n, depth, padding):
        return
    below, above = nearest_valid_sizes(n, depth, padding)
    if padding == "same":
        rule = f"a same-padding U-Net of depth {depth} needs {axis} >= {above}"
    else:
        step, lo = 2**depth, min_input_size(depth, padding)
        rule = (
            f"a valid-padding U-Net of depth {depth} needs {axis} = {step}k + {lo % step}, "
            f">= {lo}; nearest valid: "
            + (f"{below} or {above}" if below is not None else f"{above}")
        )
    raise ValueError(f"input {axis} {n} is invalid: {rule} (or use segment() for any size)")
