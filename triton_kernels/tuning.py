"""Which tile a 3x3-convolution launch uses: recorded, tuned, or a shape-aware default.

A first call must never spend minutes compiling and timing a dozen candidates per layer without
being asked to (issue 15). So, per launch key (channels, output size, batch-size bucket,
epilogue, precision), in this order:

1. a tile pinned with :func:`pinned` (the GPU tests launch every candidate this way);
2. a tile recorded by an earlier tuning on this device (``$UNET_FAST_CACHE_DIR/conv3x3-tuning.json``,
   default ``~/.cache/unet_fast``; kept in memory for the process);
3. if tuning is asked for (``UNET_FAST_AUTOTUNE=1`` or :func:`unet_fast.launch_hints.autotune`)
   and the process's tuning budget (``UNET_FAST_TUNE_BUDGET`` seconds, default 120) is not
   spent: Triton's autotuner over :func:`~.conv3x3.gpu_configs`, its result recorded and
   logged in one line (logger ``unet_fast.tuning``);
4. otherwise :func:`default_config`, a rule on M = pixels, N = C_out, K = 9 * C_in and the dtype
   that picks one of the same candidates: no tuning, one compile per layer shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
import triton

from unet_fast import launch_hints

ENV_AUTOTUNE = "UNET_FAST_AUTOTUNE"
ENV_BUDGET = "UNET_FAST_TUNE_BUDGET"
ENV_CACHE_DIR = "UNET_FAST_CACHE_DIR"
DEFAULT_BUDGET_S = 120.0
# H100/H200 multiprocessor count: the rule's fallback when no CUDA device is there to ask
DEFAULT_SMS = 132

log = logging.getLogger("unet_fast.tuning")
_PINNED: contextvars.ContextVar[triton.Config | None] = contextvars.ContextVar(
    "unet_fast_pinned_tile", default=None)
_ALL: contextvars.ContextVar[bool] = contextvars.ContextVar("unet_fast_all_tiles", default=False)


@dataclass(frozen=True)
class ConvKey:
    """Everything a 3x3-convolution launch's best tile may depend on."""

    c1: int
    c2: int
    c_out: int
    h_out: int
    w_out: int
    bucket: int
    pad: int
    pool: bool
    head: bool
    precision: str
    dtype: str

    def text(self) -> str:
        """A stable string form (the record file's key)."""
        return ",".join(f"{k}={v}" for k, v in asdict(self).items())

    def describe(self) -> str:
        """One readable phrase for the log line."""
        c_in = f"{self.c1}+{self.c2}" if self.c2 else f"{self.c1}"
        extra = "".join(f", {e}" for e, on in (("pool", self.pool), ("head", self.head)) if on)
        precision = "tf32" if self.precision == "tf32" else self.dtype
        return (f"conv3x3 {c_in}->{self.c_out} ch, {self.h_out}x{self.w_out}, batch<={self.bucket}"
                f"{extra}, {precision}")


def config_meta(c: triton.Config) -> dict:
    """A config as launch keyword arguments."""
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


def _from_meta(meta: dict) -> triton.Config:
    meta = dict(meta)
    warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# ------------------------------------------------------------------------------ the default rule


def default_config(dtype: torch.dtype, allow_tf32: bool, c_in: int, c_out: int, head: bool,
                   pixels: int, sms: int = DEFAULT_SMS) -> triton.Config:
    """The tile a launch uses without tuning: one of :func:`~.conv3x3.gpu_configs`.

    ``pixels`` is M (the batch bucket x output pixels), ``c_in`` the channels per K source. The
    rule: the 8x16-pixel, 32-deep tile with 128-wide N (the first candidate) by default; a
    16-deep K step for narrow inputs (fewer masked-out channels); for >= 256 output channels
    and at least four waves of work, the 256-wide tile (most FLOPs at a throughput batch); and
    when the default would not fill the GPU twice (2 CTAs per SM), 64-wide N tiles and then
    64-pixel tiles, for more CTAs (the bottom layers at batch 1). The fused head and IEEE fp32
    (FMA units) keep their first candidate.
    """
    from .conv3x3 import _key, gpu_configs, uses_fma

    configs = gpu_configs(dtype, allow_tf32, c_out, head)
    if head or uses_fma(dtype, allow_tf32):
        return configs[0]
    by_key = {_key(c): c for c in configs}

    def find(bh, bw, bk, warps, stages, bn):
        want = {"BLOCK_H": bh, "BLOCK_W": bw, "BLOCK_K": bk, "BLOCK_N": bn}
        return by_key.get((tuple(sorted(want.items())), warps, stages))

    def ctas(c: triton.Config) -> int:
        m = c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"]
        return math.ceil(pixels / m) * math.ceil(c_out / c.kwargs["BLOCK_N"])

    base = configs[0]
    bn = base.kwargs["BLOCK_N"]
    if c_out >= 256:
        for big in (find(8, 16, 64, 8, 3, 256), find(8, 16, 32, 8, 4, 256)):
            if big is not None and ctas(big) >= 4 * sms:
                return big
    if c_in <= 16:
        narrow_k = find(4, 16, 16, 4, 3, bn)
        if narrow_k is not None:
            base = narrow_k
    if ctas(base) >= 2 * sms:
        return base
    for more in (find(8, 16, 32, 4, 3, 64), find(8, 8, 32, 4, 4, 64), find(8, 8, 32, 4, 4, bn)):
        if more is not None and ctas(more) > ctas(base):
            base = more
            if ctas(base) >= 2 * sms:
                break
    return base


# ----------------------------------------------------------------------------- records, budget


def cache_dir() -> Path:
    """Where tuning results are recorded."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "unet_fast")


class TuningRecord:
    """Tuned tiles per (device name, Triton version, launch key), in memory and on disk."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._data: dict[str, dict[str, dict]] | None = None
        # choose()'s recorded and default answers per (launch key, device): one dict lookup per
        # launch instead of the key's text and the rule; dropped whenever a tile is recorded
        self.chosen: dict[tuple, Choice] = {}

    def _file(self) -> Path:
        return self.path if self.path is not None else cache_dir() / "conv3x3-tuning.json"

    def _load(self) -> dict[str, dict[str, dict]]:
        if self._data is None:
            try:
                self._data = json.loads(self._file().read_text())
            except (OSError, ValueError):
                self._data = {}
        return self._data

    @staticmethod
    def _scope(device: str) -> str:
        return f"{device}|triton {triton.__version__}"

    def get(self, device: str, key: ConvKey) -> triton.Config | None:
        meta = self._load().get(self._scope(device), {}).get(key.text())
        return _from_meta(meta) if meta is not None else None

    def put(self, device: str, key: ConvKey, config: triton.Config) -> None:
        data = self._load()
        data.setdefault(self._scope(device), {})[key.text()] = config_meta(config)
        self.chosen.clear()
        from unet_fast._atomic import atomic_path

        path = self._file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        except OSError as e:  # a read-only home must not fail inference
            log.warning("unet_fast: could not record tuning results in %s: %s", path, e)


RECORD = TuningRecord()
_spent = 0.0


def tuning_requested() -> bool:
    """Whether a launch without a recorded tile may tune (see the module docstring)."""
    override = launch_hints.autotune_override()
    if override is not None:
        return override
    return os.environ.get(ENV_AUTOTUNE, "0") == "1"


def budget_left() -> float:
    """Seconds of tuning this process may still spend."""
    try:
        budget = float(os.environ.get(ENV_BUDGET, DEFAULT_BUDGET_S))
    except ValueError:
        budget = DEFAULT_BUDGET_S
    return budget - _spent


@contextlib.contextmanager
def pinned(config: triton.Config) -> Iterator[None]:
    """Every 3x3-convolution launch in the block uses ``config`` (no tuning, no record)."""
    token = _PINNED.set(config)
    try:
        yield
    finally:
        _PINNED.reset(token)


@contextlib.contextmanager
def all_candidates() -> Iterator[None]:
    """Every launch in the block goes through the autotuner, records and rule ignored (the
    compile report uses this to compile every candidate)."""
    token = _ALL.set(True)
    try:
        yield
    finally:
        _ALL.reset(token)


@cache
def device_info(device: torch.device) -> tuple[str, int]:
    """(name, multiprocessor count) of a CUDA device; a stand-in elsewhere."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.name, props.multi_processor_count
    return str(device.type), DEFAULT_SMS


@dataclass(frozen=True)
class Choice:
    """A launch's tile (None: let the autotuner pick, then record it) and where it came from."""

    config: triton.Config | None
    source: str  # "pinned", "recorded", "tune" or "default"


def choose(key: ConvKey, dtype: torch.dtype, allow_tf32: bool, device: torch.device) -> Choice:
    """The tile for one launch (module docstring: pinned, recorded, tuned, default)."""
    pin = _PINNED.get()
    if pin is not None:
        return Choice(pin, "pinned")
    if _ALL.get():
        return Choice(None, "tune")
    record = RECORD
    memo = (key, device)
    known = record.chosen.get(memo)  # (a recorded tile drops every memo: see put)
    if known is None:
        known = _recorded(record, key, device)
    if known is not None and known.source == "recorded":
        return known
    if tuning_requested() and budget_left() > 0:
        return Choice(None, "tune")
    if known is None:
        _, sms = device_info(device)
        c_in = min(key.c1, key.c2) if key.c2 else key.c1
        pixels = key.bucket * key.h_out * key.w_out
        known = Choice(_default(dtype, allow_tf32, c_in, key.c_out, key.head, pixels, sms),
                       "default")
        record.chosen[memo] = known
    return known


def _recorded(record: TuningRecord, key: ConvKey, device: torch.device) -> Choice | None:
    name, _ = device_info(device)
    config = record.get(name, key)
    if config is None:
        return None
    choice = record.chosen[key, device] = Choice(config, "recorded")
    return choice


@cache
def _default(dtype, allow_tf32, c_in, c_out, head, pixels, sms) -> triton.Config:
    return default_config(dtype, allow_tf32, c_in, c_out, head, pixels, sms)


def _show_log() -> None:
    """Tuning was asked for: make its one line per layer visible unless logging is configured."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


@contextlib.contextmanager
def tuning(key: ConvKey, device: torch.device, autotuner) -> Iterator[None]:
    """Around a launch through ``autotuner`` for a :func:`choose` result of "tune": charge the
    time to the budget, record the winner and log one line. A wrapper that launched nothing
    (a compile-only report, a tracer) leaves ``best_config`` unset and nothing is recorded."""
    global _spent
    _show_log()
    autotuner.best_config = None
    start = time.perf_counter()
    yield
    best = getattr(autotuner, "best_config", None)
    if best is None:
        return
    took = time.perf_counter() - start
    _spent += took
    name, _ = device_info(device)
    RECORD.put(name, key, best)
    tile = (f"{best.kwargs['BLOCK_H']}x{best.kwargs['BLOCK_W']}x{best.kwargs['BLOCK_K']} "
            f"N{best.kwargs['BLOCK_N']} w{best.num_warps} s{best.num_stages}")
    log.info("unet_fast: tuned %s: %s in %.1f s (tuning budget left %.0f s)", key.describe(),
             tile, took, max(0.0, budget_left()))
