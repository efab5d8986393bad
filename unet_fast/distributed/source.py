"""Inputs of the large-image engine: a zarr array (OME-Zarr level 0 of a group), a TIFF/BigTIFF
read lazily through tifffile's zarr view, or an in-memory numpy / dask array; and where its
rows, columns and channels are (:class:`Layout`).

Store-backed inputs are described by small picklable objects that each worker opens itself (once
per process), so pixel data never travels through the scheduler: a task reads only its region.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")


class InputError(ValueError):
    """A bad input, output or option of the distributed engine; the message is one line."""


def first_line(e: BaseException) -> str:
    """An exception's first line (at most 200 characters), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@dataclass(frozen=True)
class Layout:
    """Which axes of an array are rows, columns and channels; any other axis has length 1.

    ``channels`` is how many channels are used from the front of the channel axis (an alpha
    channel is dropped when the model wants one channel fewer, as ``unet-fast segment`` does).
    """

    shape: tuple[int, ...]
    y_axis: int
    x_axis: int
    channel_axis: int | None
    channels: int

    @property
    def height(self) -> int:
        return self.shape[self.y_axis]

    @property
    def width(self) -> int:
        return self.shape[self.x_axis]

    def index(self, ys: slice, xs: slice) -> tuple[Any, ...]:
        """The index selecting rows ``ys`` and columns ``xs`` (all used channels)."""
        idx: list[Any] = []
        for axis in range(len(self.shape)):
            if axis == self.y_axis:
                idx.append(ys)
            elif axis == self.x_axis:
                idx.append(xs)
            elif axis == self.channel_axis:
                idx.append(slice(0, self.channels))
            else:
                idx.append(0)
        return tuple(idx)

    def to_chw(self, block: np.ndarray) -> np.ndarray:
        """An array read with :meth:`index` as ``(C, h, w)``."""
        kept = [a for a in range(len(self.shape)) if a in (self.y_axis, self.x_axis, self.channel_axis)]
        block = np.asarray(block)
        if self.channel_axis is None:
            block = block[None]
            kept = [-1, *kept]
        order = [kept.index(a) for a in (self.channel_axis if self.channel_axis is not None else -1,
                                        self.y_axis, self.x_axis)]
        return np.transpose(block, order)


def infer_layout(shape: tuple[int, ...], name: str, in_channels: int, axes: str | None = None,
                 channel_axis: int | None = None) -> Layout:
    """The :class:`Layout` of an array of ``shape``.

    ``axes`` (letters such as tifffile's ``YXS`` / ``CYX`` or OME-Zarr's ``tczyx``) say where
    everything is; without them a 2-D array is ``(H, W)``, a 3-D one ``(C, H, W)`` unless its last
    axis has at most 4 entries and its first more (``(H, W, C)``, the ``.npy`` rule of
    ``unet-fast segment``), and leading axes of length 1 are ignored. ``channel_axis`` overrides
    the guess.
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if axes is not None and channel_axis is None:
        axes = axes.upper()
        if len(axes) != nd or "Y" not in axes or "X" not in axes:
            raise InputError(f"{name} has axes {axes!r} for shape {shape}; expected Y and X axes")
        y, x = axes.rindex("Y"), axes.rindex("X")
        chans = [i for i, a in enumerate(axes) if a in "CS" and i not in (y, x)]
        c = chans[-1] if chans else None
        others = [i for i in range(nd) if i not in (y, x, c)]
    else:
        if channel_axis is not None:
            if isinstance(channel_axis, bool) or not isinstance(channel_axis, int) \
                    or not -nd <= channel_axis < nd:
                raise InputError(f"channel_axis {channel_axis!r} is not an axis of {name} "
                                 f"(shape {shape})")
            c = channel_axis % nd
            rest = [i for i in range(nd) if i != c]
            if len(rest) < 2:
                raise InputError(f"{name} has shape {shape}: no rows and columns besides the "
                                 f"channel axis {channel_axis}")
            y, x = rest[-2], rest[-1]
            others = rest[:-2]
        else:
            core = list(range(nd))
            while len(core) > 3 and shape[core[0]] == 1:
                core.pop(0)
            if len(core) == 2:
                c, (y, x) = None, core
            elif len(core) == 3:
                a, b, d = core
                if shape[d] <= 4 < shape[a]:
                    y, x, c = a, b, d
                else:
                    c, y, x = a, b, d
            else:
                raise InputError(f"{name} has shape {shape}; expected 2-D (H, W) or 3-D "
                                 "(C, H, W) / (H, W, C) (axes of length 1 in front are ignored)")
            others = [i for i in range(nd) if i not in core]
    extra = [i for i in others if shape[i] != 1]
    if extra:
        what = f"axes {axes!r}" if axes else f"shape {shape}"
        raise InputError(f"{name} ({what}) has more than one plane along axis {extra[0]} "
                         f"({shape[extra[0]]} entries); give one 2-D image (with channels)")
    if shape[y] < 1 or shape[x] < 1:
        raise InputError(f"{name} is empty (shape {shape})")
    have = 1 if c is None else shape[c]
    if have == in_channels:
        use = have
    elif (have, in_channels) in ((4, 3), (2, 1)):
        use = in_channels  # alpha dropped
    else:
        raise InputError(f"{name} has {have} channel(s) (shape {shape}) but the model expects "
                         f"{in_channels}")
    return Layout(shape, y, x, c, use)


# ---------------------------------------------------------------------------------------------
# store-backed inputs, opened once per process


_OPEN: dict[Any, Any] = {}


@dataclass(frozen=True)
class ZarrSource:
    """A zarr array given by its store and the array's path inside it."""

    store: str
    path: str

    def open(self) -> Any:
        import zarr

        # not cached: opening reads one small metadata file, and a cached array would outlive
        # its store being rewritten
        return zarr.open_array(store=self.store, path=self.path or None, mode="r")


@dataclass(frozen=True)
class TiffSource:
    """Series ``series`` (level ``level``) of a TIFF file, read through tifffile's zarr view."""

    path: str
    series: int = 0
    level: int = 0

    def open(self) -> Any:
        st = os.stat(self.path)
        key = (self.path, self.series, self.level, st.st_size, st.st_mtime_ns)
        if key not in _OPEN:
            import tifffile
            import zarr

            store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
            _OPEN[key] = zarr.open_array(store=store, mode="r")
        return _OPEN[key]


@dataclass
class Input:
    """An opened input: ``source`` (a store to open in each worker) or ``array`` (numpy or dask,
    read through the cluster), its layout, its dtype and a description for the run's identity."""

    name: str
    layout: Layout
    dtype: np.dtype
    source: ZarrSource | TiffSource | None
    array: Any
    identity: dict[str, Any]


def split_zarr_path(text: str) -> tuple[str, str]:
    """``big.zarr/0`` -> (``big.zarr``, ``0``): the store is the last component ending in .zarr
    (or the whole path)."""
    parts = Path(text).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower().endswith(".zarr"):
            return str(Path(*parts[: i + 1])), "/".join(parts[i + 1:])
    return text, ""


def _ome_level0(attrs: dict[str, Any]) -> tuple[str, str] | None:
    """(path of the full-resolution level, axis letters) of an OME-Zarr image group."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return None
    first = ms[0]
    path = first["datasets"][0]["path"]
    letters = []
    for ax in first.get("axes", []):
        nm = ax["name"] if isinstance(ax, dict) else str(ax)
        kind = ax.get("type") if isinstance(ax, dict) else None
        letters.append("C" if kind == "channel" or nm.lower() == "c" else nm.upper()[:1])
    return path, "".join(letters) if letters else None  # type: ignore[return-value]


def open_zarr_input(text: str, in_channels: int, channel_axis: int | None) -> Input:
    import zarr

    root, inner = split_zarr_path(text)
    name = f"input {text!r}"
    if not os.path.exists(root) and "://" not in root:
        raise InputError(f"{name} does not exist")
    try:
        node = zarr.open(store=root, path=inner or None, mode="r")
    except Exception as e:  # zarr raises various types for a missing node or a non-zarr folder
        what = f"array {inner!r} in {root!r}" if inner else f"{root!r}"
        raise InputError(f"{name}: no zarr array or group at {what} "
                         f"({type(e).__name__}); give STORE.zarr or STORE.zarr/ARRAY") from None
    axes = None
    if isinstance(node, zarr.Group):
        ome = _ome_level0(dict(node.attrs))
        if ome is not None:
            sub, axes = ome
        else:
            arrays = sorted(k for k, _ in node.arrays())
            if len(arrays) != 1:
                listed = ", ".join(arrays[:5]) or "none"
                raise InputError(f"{name} is a zarr group with {len(arrays)} arrays ({listed}) "
                                 f"and no OME-Zarr multiscales; name one as {text}/ARRAY")
            sub = arrays[0]
        inner = f"{inner}/{sub}" if inner else sub
        try:
            node = zarr.open_array(store=root, path=inner, mode="r")
        except Exception:
            raise InputError(f"{name}: its OME-Zarr level {sub!r} is missing") from None
    else:
        attrs = dict(node.attrs)
        names = attrs.get("_ARRAY_DIMENSIONS") or getattr(node.metadata, "dimension_names", None)
        if names and all(isinstance(n, str) and n for n in names):
            letters = "".join("C" if n.lower() in ("c", "channel", "s") else n.upper()[0]
                              for n in names)
            if "Y" in letters and "X" in letters:
                axes = letters
    layout = infer_layout(node.shape, name, in_channels, axes, channel_axis)
    source = ZarrSource(root, inner)
    identity = {"kind": "zarr", "store": os.path.abspath(root) if "://" not in root else root,
                "path": inner, "shape": list(node.shape), "dtype": str(node.dtype)}
    return Input(name, layout, np.dtype(node.dtype), source, None, identity)


def open_tiff_input(text: str, in_channels: int, channel_axis: int | None) -> Input:
    import tifffile

    name = f"input {text!r}"
    if not os.path.exists(text):
        raise InputError(f"{name} does not exist")
    try:
        with tifffile.TiffFile(text) as tif:
            if not tif.series:
                raise ValueError("no image data found")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot read {name}: corrupt or not a TIFF file ({first_line(e)})"
                         ) from None
    layout = infer_layout(shape, name, in_channels, axes, channel_axis)
    st = os.stat(text)
    identity = {"kind": "tiff", "path": os.path.abspath(text), "shape": list(shape),
                "dtype": str(dtype), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return Input(name, layout, dtype, TiffSource(os.path.abspath(text)), None, identity)


def open_input(image: Any, in_channels: int, channel_axis: int | None = None) -> Input:
    """Open ``image`` (a path to a .zarr store/array or a TIFF, a zarr array, a numpy or dask
    array, or a torch tensor) for a model with ``in_channels`` input channels."""
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        if text.lower().endswith(TIFF_SUFFIXES):
            return open_tiff_input(text, in_channels, channel_axis)
        return open_zarr_input(text, in_channels, channel_axis)
    kind = type(image).__module__.split(".")[0]
    if kind == "zarr":
        store = getattr(image, "store", None)
        root = getattr(store, "root", None)
        if root is not None:
            return open_zarr_input(os.path.join(str(root), image.path), in_channels, channel_axis) \
                if image.path else open_zarr_input(str(root), in_channels, channel_axis)
        import dask.array as da

        image = da.from_zarr(image)
        kind = "dask"
    if kind == "torch":
        image = image.detach().cpu().numpy()
        kind = "numpy"
    if kind not in ("numpy", "dask"):
        raise InputError(f"image must be a path, a zarr, numpy or dask array or a torch tensor, "
                         f"got {type(image).__name__}")
    name = f"{kind} array"
    layout = infer_layout(image.shape, name, in_channels, None, channel_axis)
    from dask.base import tokenize

    identity = {"kind": kind, "shape": list(image.shape), "dtype": str(image.dtype),
                "token": tokenize(image)}
    return Input(name, layout, np.dtype(image.dtype), None, image, identity)


def take_region(block: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` ``block`` (the bounding box of ``iy`` x ``ix``) indexed by them."""
    y0, x0 = int(iy.min()), int(ix.min())
    if not (iy[-1] - iy[0] == len(iy) - 1 and np.all(np.diff(iy) == 1)):
        block = block[:, iy - y0]
    if not (ix[-1] - ix[0] == len(ix) - 1 and np.all(np.diff(ix) == 1)):
        block = block[:, :, ix - x0]
    return block


def bbox(indices: np.ndarray) -> slice:
    return slice(int(indices.min()), int(indices.max()) + 1)
