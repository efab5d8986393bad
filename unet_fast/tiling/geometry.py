"""Where the tiles go: per-axis window sizes and origins for the three tiling schemes.

* ``valid``: a valid-padding network. Output tiles of size ``core`` cover the axis exactly once
  (the last one may run past the end; the excess is dropped when stitching); each input window is
  the output tile plus the network margin on both sides, read from the mirror extension. A valid
  U-Net is translation-equivariant only for shifts by multiples of ``2**depth`` (the pooling
  grid), so the tile stride is one; since valid output sizes are 4 (mod ``2**depth``), each tile
  keeps all but ``4 % 2**depth`` of its output pixels. The stitched result therefore equals one
  pass over the whole mirror-extended image.
* ``margin``: a same-padding network whose windows carry ``context`` extra pixels per side that
  are discarded; cores are multiples of ``2**depth`` so every window's pooling grid lines up
  with the whole image's.
* ``blend``: a same-padding network with overlapping windows, later blended with a weight map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import sizes


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis: window (network input), crop offset and kept size in the network's
    output, and for each tile the (input origin, output origin) in image coordinates."""

    window: int
    crop: int
    core: int
    origins: tuple[tuple[int, int], ...]


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _valid_phase(depth: int) -> int:
    # valid output sizes are = 4 (mod 2**depth); the tile stride must be = 0 so that every
    # window's pooling grid lines up with the whole image's, so each tile keeps all but this many
    # of its output pixels
    return 4 % 2**depth


def min_valid_window(depth: int) -> int:
    """Smallest valid window that still advances by at least one pixel per tile."""
    return sizes.input_size_for_output(_valid_phase(depth) + 1, depth)


def plan_valid_axis(n: int, window: int, depth: int) -> AxisPlan:
    """Exact cover of ``n`` output pixels with valid windows of at most ``window`` pixels."""
    sizes.check_input_size(window, depth, "valid", axis="tile_size")
    if window < min_valid_window(depth):
        raise ValueError(f"tile_size {window} is too small to tile with: use at least "
                         f"{min_valid_window(depth)} for depth {depth}")
    m, r = sizes.margin(depth, "valid"), _valid_phase(depth)
    out = min(window - 2 * m, sizes.output_size(sizes.input_size_for_output(n + r, depth), depth))
    count = math.ceil(n / (out - r))
    # the same number of tiles, each as small as possible: less compute past the image's end
    out = sizes.output_size(sizes.input_size_for_output(math.ceil(n / count) + r, depth), depth)
    core = out - r
    return AxisPlan(out + 2 * m, 0, core, tuple((k * core - m, k * core) for k in range(count)))


def plan_margin_axis(n: int, window: int, depth: int, context: int) -> AxisPlan:
    """Cover ``n`` pixels with cores of windows that discard ``context`` pixels per side."""
    step = 2**depth
    core = window - 2 * context
    if core < 1:
        raise ValueError(
            f"tile_size {window} leaves no output with a context margin of {context} px per side; "
            f"use tile_size > {2 * context} or a smaller overlap")
    core = min(core, _round_up(n, step))
    count = math.ceil(n / core)
    core = min(core, _round_up(math.ceil(n / count), step))
    win = max(core + 2 * context, sizes.min_input_size(depth, "same"))
    return AxisPlan(win, context, core,
                    tuple((k * core - context, k * core) for k in range(count)))


def plan_blend_axis(n: int, window: int, depth: int, overlap: float) -> AxisPlan:
    """Evenly spread windows of ``window`` pixels sharing about ``overlap`` of their width."""
    step = 2**depth
    win = max(min(window, _round_up(n, step)), sizes.min_input_size(depth, "same"))
    stride = max(1, int(win * (1.0 - overlap)))
    count = 1 if n <= win else math.ceil((n - win) / stride) + 1
    if count == 1:
        starts = [0]
    else:
        starts = [round(k * (n - win) / (count - 1)) for k in range(count)]
    return AxisPlan(win, 0, win, tuple((s, s) for s in starts))


def plan_axis(scheme: str, n: int, window: int, depth: int, context: int = 0,
              overlap: float = 0.0) -> AxisPlan:
    """Dispatch to the plan of ``scheme`` ("valid", "margin" or "blend")."""
    if scheme == "valid":
        return plan_valid_axis(n, window, depth)
    if scheme == "margin":
        return plan_margin_axis(n, window, depth, context)
    return plan_blend_axis(n, window, depth, overlap)


def window_candidates(scheme: str, n_max: int, depth: int, context: int = 0) -> list[int]:
    """Window sizes worth trying for an image side of ``n_max``, largest first."""
    step = 2**depth
    if scheme == "valid":
        lo = min_valid_window(depth)
        hi = sizes.input_size_for_output(n_max + _valid_phase(depth), depth)
        return list(range(hi, lo - 1, -step))
    if scheme == "margin":
        lo = max(sizes.min_input_size(depth, "same"), 2 * context + step)
        hi = _round_up(n_max, step) + 2 * context
        return list(range(hi, lo - 1, -step))
    hi = max(_round_up(n_max, step), step)
    return list(range(hi, step - 1, -step))
