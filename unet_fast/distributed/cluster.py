"""The dask.distributed client a run uses: one given by the caller, one connected to a running
scheduler, or a LocalCluster of worker processes started (and stopped) for the run."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .source import InputError, first_line


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """One worker per GPU where there are GPUs, otherwise one per CPU core."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else usable_cores()


@contextlib.contextmanager
def client_for(client: Any = None, scheduler: str | None = None,
               workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: ``client`` itself, one connected to ``scheduler`` (an address
    such as ``tcp://host:8786``), or a new LocalCluster of ``workers`` processes (default:
    :func:`default_workers`), each with an equal share of the cores as threads."""
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            c = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as e:
            raise InputError(f"cannot reach the dask scheduler at {scheduler!r} "
                             f"({first_line(e)})") from None
        try:
            yield c
        finally:
            c.close()
        return
    n = default_workers() if workers is None else workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"workers must be a positive number of worker processes, got {workers!r}")
    threads = max(1, usable_cores() // n)
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()


def progress_bar(total: int, progress: bool, unit: str) -> Any:
    """A tqdm bar on stderr over ``total`` ``unit`` (disabled unless ``progress``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, desc=unit, unit=unit.rstrip("s"),
                file=sys.stderr)


def run_windowed(client: Any, submissions: Iterator[Callable[[], Any]], total: int, window: int,
                 progress: bool, unit: str) -> None:
    """Call each of ``submissions`` (each submits one task and returns its future), keeping at
    most ``window`` tasks in flight, and wait for them all; the first failing task's error is
    raised here after the rest are cancelled."""
    from distributed import as_completed

    def take(n: int) -> list[Callable[[], Any]]:
        out = []
        for submit in submissions:
            out.append(submit)
            if len(out) == n:
                break
        return out

    futures = as_completed()
    for submit in take(window):
        futures.add(submit())
    with progress_bar(total, progress, unit) as bar:
        try:
            for f in futures:
                f.result()
                bar.update()
                for submit in take(1):
                    futures.add(submit())
        except BaseException:
            client.cancel(list(futures.futures))
            raise
