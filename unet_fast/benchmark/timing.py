"""Timing: host clock with warm-up and repeats on the CPU; CUDA events around each call with an
L2 flush between calls on the GPU (the method of ``triton.testing.do_bench``), median and
20th/80th percentiles. Inputs rotate among several sets so no call reuses the last one's cache.
On the CPU the rows of one case are timed interleaved (:func:`time_interleaved`): a round calls
every row once, in an order rotated by one each round, so a slow minute of a shared or throttled
machine lands on every row alike instead of on whichever row ran then."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current GPU's L2 cache


def summarize(times_ms: Sequence[float], warmup: int) -> dict:
    """Median, p20/p80, min/max of per-call times in milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    p20, p50, p80 = np.percentile(t, [20, 50, 80])
    return {
        "median_ms": float(p50), "p20_ms": float(p20), "p80_ms": float(p80),
        "min_ms": float(t.min()), "max_ms": float(t.max()),
        "repeats": len(t), "warmup": warmup, "times_ms": [round(float(v), 4) for v in t],
    }


def time_cpu(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor],
             repeats: int, warmup: int) -> dict:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed with perf_counter."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times, warmup)


SETTLE_S = 0.01  # idle pause before each interleaved call (see time_interleaved)


def time_interleaved(calls: Sequence[Callable[[torch.Tensor], object]],
                     inputs: Sequence[torch.Tensor], repeats: int, warmup: int,
                     settle_s: float = SETTLE_S) -> list[dict | Exception]:
    """Time several callables in rounds: ``warmup`` untimed rounds, then ``repeats`` timed ones;
    round ``r`` calls ``calls[(r + j) % n]`` for ``j = 0..n-1``, so every callable runs in every
    position equally often (when ``repeats`` is a multiple of ``n``; nearly so otherwise).

    Consecutive calls take consecutive input sets, so no call starts with its input left in the
    cache by the call before. Before each call the host sleeps ``settle_s`` untimed: libraries
    keep their own thread pools (OpenMP, ONNX Runtime's, OpenVINO's TBB) whose workers spin for
    a while after a call, and would otherwise compete with the next library's threads.
    Returns, per callable, its statistics (:func:`summarize`, plus ``interleaved``) or the
    exception its call raised (it is then left out of later rounds)."""
    n = len(calls)
    times: list[list[float]] = [[] for _ in range(n)]
    failed: dict[int, Exception] = {}
    k = 0
    for rnd in range(warmup + repeats):
        for j in range(n):
            i = (rnd + j) % n
            if i in failed:
                continue
            x = inputs[k % len(inputs)]
            k += 1
            if settle_s:
                time.sleep(settle_s)
            try:
                t0 = time.perf_counter()
                calls[i](x)
                elapsed = time.perf_counter() - t0
            except Exception as e:
                failed[i] = e
                continue
            if rnd >= warmup:
                times[i].append(elapsed * 1e3)
    method = {"rows": n, "rounds": repeats, "warmup_rounds": warmup,
              "settle_ms": settle_s * 1e3, "order": "rotated by one each round"}
    return [failed[i] if i in failed else dict(summarize(times[i], warmup), interleaved=method)
            for i in range(n)]


def time_cuda(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor],
              repeats: int | None, warmup: int | None, target_ms: float = 1000.0,
              max_repeats: int = 500) -> dict:
    """CUDA-event timing of each call; ``repeats=None`` picks enough calls to fill ``target_ms``
    (at least 10, at most ``max_repeats``); ``warmup=None`` warms for >= 3 calls and 100 ms."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n_warm = 0
    while True:
        fn(inputs[n_warm % len(inputs)])
        n_warm += 1
        if warmup is not None and n_warm >= warmup:
            break
        if warmup is None and n_warm >= 3:
            torch.cuda.synchronize()
            if time.perf_counter() - t0 > 0.1:
                break
    torch.cuda.synchronize()
    est_ms = (time.perf_counter() - t0) * 1e3 / max(n_warm, 1)
    if repeats is None:
        repeats = int(min(max_repeats, max(10, math.ceil(target_ms / max(est_ms, 1e-3)))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        flush.zero_()
        starts[i].record()
        fn(inputs[i % len(inputs)])
        ends[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    del flush
    return summarize(times, n_warm)


class CompileTimeout(Exception):
    """A row's first call (compilation) ran past its time limit."""


class Limit:
    """What :func:`time_limit` yields: ``fired`` turns True when the alarm went off, so a caller
    can tell a timeout even where a library swallowed or re-raised its exception."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False


@contextlib.contextmanager
def time_limit(seconds: float | None, repeat: float = 1.0) -> Iterator[Limit]:
    """Raise :class:`CompileTimeout` if the block runs longer than ``seconds`` (SIGALRM, main
    thread of a POSIX process only; elsewhere the block runs unbounded), and again every
    ``repeat`` seconds until the block ends: a raise that lands in a library's ``except
    Exception`` (torch compilation has such fallbacks) is swallowed, the next one gets through."""
    limit = Limit(seconds)
    usable = (seconds is not None and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield limit
        return

    def on_alarm(signum, frame):
        limit.fired = True
        raise CompileTimeout(f"took longer than {seconds:.4g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, repeat)
    try:
        yield limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
