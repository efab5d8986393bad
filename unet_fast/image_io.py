"""Reading images into float tensors and writing masks, probabilities and overlays.

Reading (:func:`read_image`) returns a ``(C, H, W)`` float32 tensor:

* **PNG / JPEG / BMP** (Pillow): grayscale -> 1 channel, RGB -> 3, RGBA -> 4, gray+alpha -> 2,
  palette images -> RGB (RGBA if the palette has transparency), 1-bit -> 1 channel of 0/1.
  A 4-channel (or 2-channel) image given to a model that wants 3 (or 1) has its alpha dropped by
  :func:`match_channels`; no other channel conversion is done silently.
* **TIFF** (tifffile): 8/16-bit integer or floating point, 2-D ``(H, W)`` or 3-D. The file's
  own axes (``TiffFile.series[0].axes``) say where the channels are: samples last (``YXS``,
  interleaved RGB) or a first axis of samples, channels or pages (``SYX``, ``CYX``, ``QYX``).
* **.npy** (numpy, ``allow_pickle=False``): 2-D or 3-D. A bare array carries no layout, so it is
  guessed: channels-last ``(H, W, C)`` when its last axis has at most 4 entries and its first
  more than 4, otherwise channels-first ``(C, H, W)``. This guess is made for ``.npy`` only.

Size limit: an image with more than :data:`MAX_PIXELS` pixels is refused from its header, before
any pixel is decoded, whatever its format (Pillow guards PNG/JPEG/BMP this way; a 400 KB deflate
TIFF or a bare ``.npy`` header can declare gigabytes too). Pixels are height x width; channels
count only when there are more than 4 of them (a stack rather than colours). The limit is
Pillow's own (2 x ``PIL.Image.MAX_IMAGE_PIXELS``); set :data:`MAX_PIXELS` (or pass
``max_pixels=``, or ``--max-pixels`` on the command line) to change it, None for no limit.

16-bit PNGs: grayscale ones are read at full depth; colour ones (RGB, RGBA, gray+alpha) are
refused, because Pillow can only read them reduced to 8 bits (save them as 16-bit TIFF).

Normalisation: ``uint8`` / 255, ``uint16`` / 65535 (16-bit gray PNGs too), ``bool`` -> 0/1, floating
point as-is (no rescaling: a float image is assumed to already be in the range the model was
trained on). Other integer types are rejected.

Writing is atomic (temporary file in the same folder, then rename), so a failed write leaves no
half-written file:

* :func:`write_mask`: class labels a person can look at: a binary PNG mask as 0/255, more
  classes as a palette PNG (pixel values = class indices, each class its own colour); TIFF and
  ``.npy`` keep the raw indices (uint8, uint16 beyond 256 classes); milesial's ``mask_values``
  are written as its ``predict.py`` writes them.
* :func:`write_probs`: ``(K, H, W)`` float32 as ``.npy`` or float TIFF.
* :func:`write_overlay`: the image with each non-background class tinted, as RGB PNG.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_path

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES

# distinct, colour-blind friendly tints for classes 1.. (class 0 is background, left untinted)
PALETTE = np.array([
    [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178],
    [213, 94, 0], [204, 121, 167], [255, 255, 255], [128, 128, 128], [170, 0, 0],
], dtype=np.float32)


#: Images with more pixels than this are refused before they are decoded (None: no limit). The
#: default is where Pillow refuses a PNG: 2 x PIL.Image.MAX_IMAGE_PIXELS, e.g. 13377 x 13377.
MAX_PIXELS: int | None = 2 * 89_478_485

# Pillow formats read (Image.open would otherwise decode anything it knows, EPS included);
# MPO is how Pillow names the multi-picture JPEGs cameras write
PIL_FORMATS = ("PNG", "JPEG", "MPO", "BMP")

_DEFAULT: Any = object()  # "use MAX_PIXELS" (None already means "no limit")
_PILLOW_LIMIT = threading.Lock()  # Pillow's limit is a global: lifted for one open at a time


class ImageError(ValueError):
    """An image that cannot be read or written; the message is one line naming the file."""


class TooManyPixelsError(ImageError):
    """An image larger than the pixel limit; ``pixels``, ``shape`` and ``limit`` say by how much.

    The message ends with how to raise the limit from Python; the command line words its own.
    """

    def __init__(self, name: str, pixels: int, shape: tuple[int, ...], limit: int) -> None:
        self.name, self.pixels, self.shape, self.limit = name, pixels, shape, limit
        super().__init__(f"{self.describe()}; if you mean it, raise unet_fast.image_io."
                         "MAX_PIXELS (None: no limit)")

    def describe(self) -> str:
        dims = " x ".join(str(n) for n in self.shape)
        return (f"{self.name} has {self.pixels:,} pixels ({dims}), more than the limit of "
                f"{self.limit:,} that guards against decompression bombs")


def _limit(max_pixels: Any) -> int | None:
    value = MAX_PIXELS if max_pixels is _DEFAULT else max_pixels
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"max_pixels must be a positive integer or None, got {value!r}")
    return value


def check_pixels(shape: Sequence[int], channels_last: bool | None, name: str,
                 limit: int | None) -> None:
    """Raise :class:`TooManyPixelsError` if an array of ``shape`` (laid out as
    :func:`to_chw` reads it) has more than ``limit`` pixels; see the module docstring."""
    if limit is None:
        return
    shape = tuple(int(n) for n in shape)
    total = math.prod(shape)
    shown = shape
    if len(shape) == 3:
        if channels_last is None:
            channels_last = shape[-1] <= 4 < shape[0]
        channels = shape[-1] if channels_last else shape[0]
        if 0 < channels <= 4:  # colours: not counted, as Pillow counts them
            total //= channels
            shown = shape[:-1] if channels_last else shape[1:]
    if total > limit:
        raise TooManyPixelsError(name, total, shown, limit)


def _require_regular(path: Path, name: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # open() reports it
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
        raise ImageError(f"{name} is {kind}, not a regular file")


@contextlib.contextmanager
def _pillow_limit(limit: int | None) -> Iterator[None]:
    """Lift Pillow's own bomb check while opening when :data:`MAX_PIXELS` allows more: the
    caller checks the size instead."""
    from PIL import Image

    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is None or (limit is not None and limit <= 2 * pillow):
        yield
        return
    with _PILLOW_LIMIT:
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = pillow


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _read_pil(path: Path, limit: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with _pillow_limit(limit):
            im = Image.open(path, formats=PIL_FORMATS)
    except Image.DecompressionBombError:
        # over Pillow's limit, hence over ours: open the header again only to say by how much
        with _pillow_limit(None):
            im = Image.open(path, formats=PIL_FORMATS)
    with im:
        check_pixels((im.height, im.width), True, f"image {str(path)!r}", limit)
        if im.format == "PNG" and im.mode not in ("I", "I;16", "I;16B") and any(
                ";16" in str(tile.args) for tile in im.tile):
            raise ImageError(
                f"image {str(path)!r} is a 16-bit colour PNG, which Pillow reads only at 8 bits; "
                "save it as a 16-bit TIFF (or .npy) to keep its depth, or as an 8-bit PNG")
        im.load()
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "1":
            return np.asarray(im, dtype=bool)
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        a = np.asarray(im)
    if a.dtype == np.int32 or mode.startswith("I;16"):
        # Pillow reads 16-bit grayscale PNGs as mode "I" (int32) or "I;16"
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"image {str(path)!r}: 32-bit integer pixels are not supported")
        a = a.astype(np.uint16)
    return a


def _read_tiff(path: Path, limit: int | None) -> tuple[np.ndarray, bool]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:  # tifffile only logs a warning for garbage
            raise ValueError("no image data found")
        series = tif.series[0]
        shape, axes = tuple(series.shape), series.axes
        if len(shape) > 3:
            raise ImageError(f"image {str(path)!r} has {len(shape)} axes ({axes}, shape "
                             f"{shape}); expected one 2-D image, with or without channels")
        # from the header alone: tifffile decodes nothing until asarray()
        check_pixels(shape, axes.endswith("S"), f"image {str(path)!r}", limit)
        a = series.asarray()
    if a.size == 0:
        raise ValueError("no image data found")
    return a, axes.endswith("S")


def _read_npy(path: Path, limit: int | None) -> np.ndarray:
    """The array of a ``.npy`` file, after checking its header: the shape against ``limit`` and
    the data it declares against the file's size (numpy would allocate first)."""
    fmt = np.lib.format
    name = f"image {str(path)!r}"
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0 only differs for structured dtypes with non-ASCII field names
            raise ImageError(f"{name}: .npy format version {version[0]}.{version[1]} is not "
                             "read; save it with numpy.save as a plain numeric array")
        if dtype.hasobject:
            raise ImageError(f"cannot read {name}: corrupt or not a numeric .npy array")
        check_pixels(shape, None, name, limit)
        declared = math.prod(shape) * dtype.itemsize
        held = os.fstat(f.fileno()).st_size - f.tell()
        if declared > held:
            raise ImageError(f"{name} is truncated: its header declares {declared} bytes of "
                             f"pixels, the file holds {held}")
        f.seek(0)
        return fmt.read_array(f, allow_pickle=False)


def _read_raw(path: Path, max_pixels: Any = _DEFAULT) -> tuple[np.ndarray, bool | None]:
    """The pixel array and whether its channels are last (None: unknown, guess)."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"unsupported file type {path.name!r}; supported: {', '.join(IMAGE_SUFFIXES)}")
    limit = _limit(max_pixels)
    _require_regular(path, f"image {str(path)!r}")
    if suffix in NPY_SUFFIXES:
        return _read_npy(path, limit), None
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, limit)
    return _read_pil(path, limit), True  # Pillow: always rows x columns (x channels)


def read_array(path: str | os.PathLike[str], *, max_pixels: Any = _DEFAULT) -> np.ndarray:
    """The raw pixel array of an image or mask file (no normalisation, no layout change).

    ``max_pixels``: the size limit (default :data:`MAX_PIXELS`; None: no limit).
    """
    return _read_raw(Path(path), max_pixels)[0]


def read_chw(path: str | os.PathLike[str], *, max_pixels: Any = _DEFAULT) -> np.ndarray:
    """The pixels of an image file as a ``(C, H, W)`` array of the file's dtype (not normalised).

    Pillow images have their channels last, TIFFs where their axes say; only ``.npy`` arrays have
    their layout guessed (see the module docstring). ``max_pixels`` as for :func:`read_array`.
    """
    path = Path(path)
    a, channels_last = _read_raw(path, max_pixels)
    return to_chw(np.asarray(a), f"image {str(path)!r}", channels_last)


def to_chw(a: np.ndarray, name: str = "image", channels_last: bool | None = None) -> np.ndarray:
    """``a`` as a ``(C, H, W)`` array: a 2-D array gets one channel; a 3-D one is moved from
    ``(H, W, C)`` if ``channels_last``, kept if False, and guessed if None (the ``.npy`` rule of
    the module docstring)."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        if channels_last is None:
            channels_last = a.shape[-1] <= 4 < a.shape[0]
        return np.moveaxis(a, -1, 0) if channels_last else a
    raise ImageError(
        f"{name} has shape {a.shape}; expected 2-D (H, W) or 3-D (H, W, C) / (C, H, W)")


def normalise(a: np.ndarray, name: str = "image") -> np.ndarray:
    """float32 pixels: uint8 / 255, uint16 / 65535, bool -> 0/1, floating point as-is."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32)
    raise ImageError(
        f"{name} has pixel type {a.dtype}; supported: uint8, uint16, bool, float16/32/64")


def read_image(path: str | os.PathLike[str], *, max_pixels: Any = _DEFAULT) -> torch.Tensor:
    """The image at ``path`` as a normalised ``(C, H, W)`` float32 tensor (see module docs).

    ``max_pixels``: refuse images with more pixels, checked before decoding (default
    :data:`MAX_PIXELS`, Pillow's limit; None: no limit).

    Raises :class:`ImageError` with one line naming ``path`` if it is missing, unreadable, of an
    unsupported type or shape, or over the pixel limit (:class:`TooManyPixelsError`).
    """
    path = Path(path)
    name = f"image {str(path)!r}"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(
            f"{name} has an unsupported extension; supported: {', '.join(IMAGE_SUFFIXES)}")
    if not path.exists():
        raise ImageError(f"{name} does not exist")
    if path.is_dir():
        raise ImageError(f"{name} is a folder, expected a file")
    try:
        a = read_chw(path, max_pixels=max_pixels)
    except ImageError:
        raise
    except PermissionError as e:
        raise ImageError(f"cannot read {name}: permission denied") from e
    except MemoryError as e:
        raise ImageError(f"{name} is too large to fit in memory") from e
    except Exception as e:
        if type(e).__name__ == "DecompressionBombError":
            raise ImageError(f"{name} has more pixels than Pillow's safety limit "
                             "(PIL.Image.MAX_IMAGE_PIXELS)") from e
        if path.suffix.lower() in NPY_SUFFIXES:
            # numpy falls back to unpickling anything without its header and then advises
            # allow_pickle=True, which would run whatever the file holds: never quote it
            raise ImageError(f"cannot read {name}: corrupt or not a numeric .npy array") from e
        raise ImageError(f"cannot read {name}: corrupt or not a valid {path.suffix[1:].upper()} "
                         f"file ({_first_line(e)})") from e
    a = normalise(a, name)
    if a.shape[1] == 0 or a.shape[2] == 0:
        raise ImageError(f"{name} is empty (shape {a.shape})")
    return torch.from_numpy(np.ascontiguousarray(a))


def match_channels(x: torch.Tensor, channels: int, name: str = "image") -> torch.Tensor:
    """``x`` ``(C, H, W)`` with ``channels`` channels: drops an alpha channel (RGBA -> RGB,
    gray+alpha -> gray) if that is what it takes, otherwise raises :class:`ImageError`."""
    c = x.shape[0]
    if c == channels:
        return x
    if (c, channels) in ((4, 3), (2, 1)):
        return x[:channels]
    hint = {(1, 3): "; convert it to RGB first", (3, 1): "; convert it to grayscale first",
            (2, 3): "; convert it to RGB first", (4, 1): "; convert it to grayscale first"}
    raise ImageError(f"{name} has {c} channel(s) but the model expects {channels}"
                     + hint.get((c, channels), ""))


def _label_array(labels: Any) -> np.ndarray:
    a = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] in (3, 4)):
        raise ValueError(f"labels must be (H, W) (or (H, W, 3|4) colours), got shape {a.shape}")
    return a


def _value_table(values: Sequence[Any]) -> np.ndarray:
    """``mask_values`` as a uint8/uint16 lookup table (gray) or uint8 ``(K, 3|4)`` (colours);
    a ValueError names the first value that no mask file can hold."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"mask_values must be a non-empty list of ints or colours, got "
                         f"{values!r:.80}")
    colours = isinstance(values[0], (list, tuple))
    limit = 255 if colours else 65535
    for i, v in enumerate(values):
        if colours != isinstance(v, (list, tuple)) or (colours and len(v) not in (3, 4)):
            raise ValueError(f"mask_values must all be ints or all colours of 3 or 4 ints; "
                             f"entry {i} is {v!r:.40}")
        for x in v if colours else (v,):
            if not isinstance(x, (int, np.integer)) or not 0 <= int(x) <= limit:
                raise ValueError(
                    f"mask value {v!r:.40} (class {i}) is not an integer in 0..{limit}, "
                    f"which a mask {'colour' if colours else 'pixel'} must be")
    if colours and len({len(v) for v in values}) != 1:
        raise ValueError("mask_values colours must all have the same number of channels")
    table = np.asarray([list(v) for v in values] if colours else [int(v) for v in values])
    return table.astype(np.uint8 if colours or table.max() <= 255 else np.uint16)


def check_mask_values(values: Sequence[Any], num_classes: int) -> None:
    """Raise a one-line ValueError unless ``values`` (milesial's ``mask_values``) can be written
    for a model of ``num_classes`` classes (a one-class model has two: background and object)."""
    table = _value_table(values)
    need = max(num_classes, 2)
    if len(table) < need:
        raise ValueError(f"mask_values has {len(table)} entries but the model has {need} "
                         f"classes{' (background and object)' if num_classes == 1 else ''}")


def apply_mask_values(labels: torch.Tensor | np.ndarray, values: Sequence[Any]) -> np.ndarray:
    """Labels mapped to per-class pixel values (milesial's ``mask_values``: ints or colours), as
    its ``predict.py`` maps them: class ``i`` becomes ``values[i]``. Gray values are uint8 (uint16
    beyond 255), colours uint8 ``(H, W, 3|4)``. Values no mask file can hold (negative, not
    integers, beyond 65535 or beyond 255 for colours) are refused with a ValueError."""
    table = _value_table(values)
    lab = _label_array(labels)
    if lab.size and (lab.min() < 0 or lab.max() >= len(table)):
        bad = int(lab.max()) if lab.max() >= len(table) else int(lab.min())
        raise ValueError(f"label {bad} has no entry in the {len(table)} mask values")
    return table[lab]


def _is_zero_one(values: Sequence[Any]) -> bool:
    # predict.py's own test (mask_values == [0, 1]): such masks are saved as 1-bit images
    return len(values) == 2 and not isinstance(values[0], (list, tuple)) and \
        [int(v) for v in values] == [0, 1]


def _mask_image(a: np.ndarray, num_classes: int, suffix: str, mask_values: Sequence[Any] | None,
                ) -> tuple[np.ndarray, str | None]:
    """The pixel array to write and, for PNG, a special mode ("1" or "P") or None."""
    if mask_values is not None:
        values = apply_mask_values(a, mask_values)
        if suffix == ".png" and _is_zero_one(mask_values):
            return values.astype(bool), "1"
        return values, None
    if a.ndim == 3:  # already colours (values applied by the caller)
        return a.astype(np.uint8), None
    if a.size and a.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(a.min())}")
    levels = max(num_classes, int(a.max()) + 1 if a.size else 0)
    a = a.astype(np.uint8 if levels <= 256 else np.uint16)
    if suffix != ".png":
        return a, None  # TIFF / .npy: the class indices as they are
    if levels <= 2:
        return a * np.uint8(255), None  # a binary mask a person can see: 0 / 255
    if levels <= 256:
        return a, "P"  # the class indices, shown through a palette
    return a, None


def _palette(levels: int) -> list[int]:
    """Flat RGB palette: black background, the overlay tints, then evenly spread hues."""
    import colorsys

    rgb = [(0, 0, 0)] + [tuple(int(c) for c in row) for row in PALETTE]
    for i in range(len(rgb), max(levels, len(rgb))):
        h = (i * 0.618033988749895) % 1.0  # golden-ratio hue steps stay distinct
        rgb.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95)))
    return [c for colour in rgb[:256] for c in colour]


def write_mask(path: str | os.PathLike[str], labels: Any, num_classes: int,
               mask_values: Sequence[Any] | None = None) -> None:
    """Write a label map ``(H, W)`` (class indices) as PNG, TIFF or ``.npy``.

    * With ``mask_values`` (milesial's): each class written as its value, as its ``predict.py``
      does (gray uint8/uint16, colours as RGB; ``[0, 1]`` as a 1-bit PNG like predict.py's).
    * PNG without them: a binary mask (``num_classes`` <= 2) as 0/255 gray; more classes as a
      palette PNG whose pixel values are the class indices, each class a distinct colour
      (uint16 gray indices beyond 256 classes).
    * TIFF / ``.npy`` without them: the raw class indices (uint8, uint16 beyond 256 classes).

    An ``(H, W, 3|4)`` array is taken as colours already mapped and written as RGB(A).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy", *TIFF_SUFFIXES):
        raise ImageError(f"mask {str(path)!r}: unsupported extension; use .png, .tif or .npy")
    a, mode = _mask_image(_label_array(labels), num_classes, suffix, mask_values)
    with atomic_path(path) as tmp:
        if suffix == ".png":
            from PIL import Image

            im = Image.fromarray(a)
            if mode == "P":
                im = Image.fromarray(a, mode="L").convert("P")  # keeps the indices
                im.putpalette(_palette(num_classes))
            im.save(tmp, format="PNG")
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, a, photometric="rgb" if a.ndim == 3 else "minisblack")
        else:
            with open(tmp, "wb") as f:
                np.save(f, a)


def write_probs(path: str | os.PathLike[str], probs: torch.Tensor) -> None:
    """Write ``(K, H, W)`` probabilities as float32 ``.npy`` or float TIFF."""
    path = Path(path)
    a = probs.detach().float().cpu().numpy()
    suffix = path.suffix.lower()
    if suffix not in NPY_SUFFIXES + TIFF_SUFFIXES:
        raise ImageError(f"probabilities {str(path)!r}: unsupported extension; use .npy or .tif")
    with atomic_path(path) as tmp:
        if suffix in NPY_SUFFIXES:
            with open(tmp, "wb") as f:
                np.save(f, a)
        else:
            import tifffile

            tifffile.imwrite(tmp, a, photometric="minisblack")


def _display_rgb(image: torch.Tensor) -> np.ndarray:
    a = image.detach().float().cpu().numpy()
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < 0.0 or hi > 1.0:  # out-of-range floats: stretch for display only
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.moveaxis(np.nan_to_num(a), 0, -1) * 255.0


def write_overlay(path: str | os.PathLike[str], image: torch.Tensor, labels: torch.Tensor,
                  alpha: float = 0.5) -> None:
    """Write ``image`` ``(C, H, W)`` as RGB PNG with every class > 0 tinted in its colour."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ImageError(f"overlay {str(path)!r}: unsupported extension; use .png")
    rgb = _display_rgb(image)
    lab = labels.detach().cpu().numpy()
    tint = PALETTE[(np.maximum(lab, 1) - 1) % len(PALETTE)]
    fg = (lab > 0)[..., None]
    out = np.where(fg, (1 - alpha) * rgb + alpha * tint, rgb)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
