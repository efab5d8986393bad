"""Where the windows go: per-axis window plans for the three tiling schemes (pure functions).

Every plan is one axis of length ``n``; a 2-D tiling is the product of a row plan and a column
plan. A :class:`Window` says which input pixels the network sees (``start``, ``size``; pixels
outside ``[0, n)`` are read from the mirror extension), which part of the network's output is kept
(``crop``, ``keep``) and where that part goes in the image (``out``).

* ``valid``: a valid-padding network. Output tiles of size ``keep`` cover the axis exactly once
  (the last one may run past the end; the excess is dropped when stitching); each input window is
  the output tile plus the network margin on both sides, read from the mirror extension. A valid
  U-Net is translation-equivariant only for shifts by multiples of ``2**depth`` (the pooling
  grid), so the tile stride is one; since valid output sizes are 4 (mod ``2**depth``), each tile
  keeps all but ``4 % 2**depth`` of its output pixels. The stitched result therefore equals one
  pass over the whole mirror-extended image.
* ``margin``: a same-padding network whose windows carry ``context`` extra pixels per side that
  are discarded. The kept cores must be multiples of ``2**depth`` so that every window's pooling
  grid lines up with that of one pass over the whole mirror-extended image; a window size that
  breaks this is refused (:func:`check_margin_window`).
* ``blend``: a same-padding network with overlapping windows, later blended with a weight map.
  Windows never leave the image: every one starts on the image's ``2**depth`` pooling grid, the
  first at 0 and the last one ending exactly at ``n`` (it may be up to ``2**depth - 1`` pixels
  shorter than the others), so the windows at the image's borders see the zero padding there
  exactly as one pass over the whole image does. An axis no longer than the requested window is
  one window of exactly ``n`` pixels: one pass at the image's own size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import sizes

SCHEMES = ("valid", "margin", "blend")


@dataclass(frozen=True)
class Window:
    """One window on one axis.

    Attributes:
        start: first input pixel, in image coordinates (negative: in the mirror extension).
        size: input pixels the network sees.
        crop: offset, in the network's output, of the first kept pixel.
        keep: number of output pixels kept.
        out: image coordinate of the first kept pixel (kept pixels past the image are dropped).
        at_start: the window's first edge is the image's own first edge (no extension).
        at_end: the window's last edge is the image's own last edge (no extension).
    """

    start: int
    size: int
    crop: int
    keep: int
    out: int
    at_start: bool = False
    at_end: bool = False


@dataclass(frozen=True)
class AxisPlan:
    """The windows of one axis, in increasing ``start`` (and ``out``) order."""

    windows: tuple[Window, ...]

    @property
    def window(self) -> int:
        """The largest window size (what memory must be planned for)."""
        return max(w.size for w in self.windows)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The distinct window sizes, largest first."""
        return tuple(sorted({w.size for w in self.windows}, reverse=True))


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
    return AxisPlan(tuple(Window(k * core - m, out + 2 * m, 0, core, k * core)
                          for k in range(count)))


def margin_window_ok(window: int, depth: int, context: int) -> bool:
    """Whether ``blend="margin"`` windows of ``window`` pixels with ``context`` discarded per
    side keep a core that is a positive multiple of ``2**depth`` (the condition for exactness)."""
    core = window - 2 * context
    return core >= 2**depth and core % 2**depth == 0


def check_margin_window(window: int, depth: int, context: int) -> None:
    """Raise a one-line ValueError naming the nearest good sizes unless
    :func:`margin_window_ok`."""
    if margin_window_ok(window, depth, context):
        return
    step = 2**depth
    lo = 2 * context + step
    below = 2 * context + (window - 2 * context) // step * step
    above = max(below + step, lo)
    nearest = f"{below} or {above}" if below >= lo else f"{above}"
    raise ValueError(
        f"tile_size {window} cannot be exact with blend='margin': the kept core (tile_size - "
        f"2 x context {context}) must be a positive multiple of {step} (2**depth); nearest: "
        f"{nearest}")


def plan_margin_axis(n: int, window: int, depth: int, context: int) -> AxisPlan:
    """Cover ``n`` pixels with cores of windows that discard ``context`` pixels per side."""
    step = 2**depth
    check_margin_window(window, depth, context)
    core = min(window - 2 * context, _round_up(n, step))
    count = math.ceil(n / core)
    core = min(core, _round_up(math.ceil(n / count), step))
    win = core + 2 * context
    return AxisPlan(tuple(Window(k * core - context, win, context, core, k * core)
                          for k in range(count)))


def plan_blend_axis(n: int, window: int, depth: int, overlap: float) -> AxisPlan:
    """Windows of about ``window`` pixels on the ``2**depth`` grid, sharing about ``overlap``
    of their width, the first starting at 0 and the last ending at ``n`` (see module docs).

    An axis of at most ``window`` pixels is a single window of exactly ``n`` pixels; one
    shorter than ``2**depth`` (the network's minimum) is a single ``2**depth`` window reaching
    into the mirror extension.
    """
    step = 2**depth
    if n < step:
        return AxisPlan((Window(0, step, 0, n, 0, True, False),))
    if n <= window:
        return AxisPlan((Window(0, n, 0, n, 0, True, True),))
    win = max(window // step * step, step)
    stride = max(step, int(win * (1.0 - overlap)) // step * step)
    last = _round_up(n - win, step)  # the last window, ending at n, no longer than the others
    if n - last < step:
        last = (n - win) // step * step
    units, per = last // step, stride // step
    count = 1 + -(-units // per)
    # spread evenly on the grid; consecutive starts are at most `stride` apart
    starts = [k * units // (count - 1) * step for k in range(count)] if count > 1 else [0]
    return AxisPlan(tuple(
        Window(s, (n - s) if s == last else win, 0, (n - s) if s == last else win, s,
               s == 0, s == last)
        for s in starts))


def plan_axis(scheme: str, n: int, window: int, depth: int, context: int = 0,
              overlap: float = 0.0) -> AxisPlan:
    """Dispatch to the plan of ``scheme`` ("valid", "margin" or "blend")."""
    if scheme == "valid":
        return plan_valid_axis(n, window, depth)
    if scheme == "margin":
        return plan_margin_axis(n, window, depth, context)
    if scheme == "blend":
        return plan_blend_axis(n, window, depth, overlap)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def window_candidates(scheme: str, n_max: int, depth: int, context: int = 0) -> list[int]:
    """Window sizes worth trying for an image side of ``n_max``, largest first (for ``blend``
    the first one is ``n_max`` itself: one pass at the image's own size)."""
    step = 2**depth
    if scheme == "valid":
        lo = min_valid_window(depth)
        hi = sizes.input_size_for_output(n_max + _valid_phase(depth), depth)
        return list(range(hi, lo - 1, -step))
    if scheme == "margin":
        lo = 2 * context + step
        hi = _round_up(n_max, step) + 2 * context
        return list(range(hi, lo - 1, -step))
    below = [s for s in range((n_max - 1) // step * step, step - 1, -step)]
    return [max(n_max, step), *below]
