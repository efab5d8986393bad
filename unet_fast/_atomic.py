"""Write a file under a temporary name in its folder, then rename it into place.

A crash, a full disk or an exception half-way leaves the old file (or nothing), never a
truncated one: ``os.replace`` is atomic within one file system.

Temporary names say whose they are: ``.NAME.unet-fast-tmp.HOST.PID.RANDOM.SUFFIX``. A process
killed outright (SIGKILL, power loss) cannot remove its own, so :func:`remove_stale` lets a later
run remove those whose process is gone; files of live processes, or of other hosts sharing the
folder, are never touched. The same names mark an output folder as in use
(:func:`mark_in_use`), so that an interrupted run does not remove a folder it made while
another run is about to write into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

TAG = "unet-fast-tmp"
_NAME = re.compile(r"^\..*\." + re.escape(TAG) + r"\.([A-Za-z0-9-]+)\.(\d+)\.[0-9a-f]{8}(\.[^.]*)?$")
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits and dashes)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temp_name(target: str, suffix: str, pid: int | None = None) -> str:
    """A fresh temporary name for a file that becomes ``target`` (``pid``: the owner, default
    this process)."""
    owner = os.getpid() if pid is None else pid
    return f".{target}.{TAG}.{host_tag()}.{owner}.{secrets.token_hex(4)}{suffix}"


def _create(folder: Path, target: str, suffix: str) -> Path:
    while True:
        path = folder / temp_name(target, suffix)
        try:
            # 0o666: the permissions a plain open() gives, umask applied
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def remove_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and in-use marks in ``folder`` left by processes of this host
    that no longer run; returns what was removed. Errors are ignored (a best effort)."""
    removed: list[Path] = []
    host = host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m or m.group(1) != host or _alive(int(m.group(2))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def mark_in_use(folder: str | os.PathLike[str]) -> Path:
    """Put an empty mark in ``folder`` saying this process writes into it (a folder holding it
    is not empty, so another run's clean-up ``rmdir`` leaves it); remove it with
    :func:`unmark`. Raises FileNotFoundError if ``folder`` has gone."""
    return _create(Path(folder), "segment-run", "")


def unmark(mark: Path) -> None:
    """Remove a mark made by :func:`mark_in_use` (gone already is fine)."""
    with contextlib.suppress(OSError):
        mark.unlink()


def _explained(e: OSError, folder: Path, path: Path) -> OSError:
    """``e``, or an OSError with the errno it lost: numpy reports a short write as "N requested
    and M written" without one, which on a full disk is ENOSPC."""
    m = _SHORT_WRITE.search(str(e))
    if e.errno is not None or not m:
        return e
    requested, written = int(m.group(1)), int(m.group(2))
    try:
        st = os.statvfs(folder)
        full = st.f_bavail * st.f_frsize < requested - written
    except (OSError, AttributeError):
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"short write: {written} of {requested} bytes written "
                   "(disk full or over quota?)", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it.

    ``suffix`` (default: the one of ``path``) lets writers that pick the format from the file
    name see the right extension. An OSError without errno from a short write (numpy's) is
    raised again as ENOSPC when the disk is full.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp_path = _create(folder, path.name, path.suffix if suffix is None else suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError):
            explained = _explained(e, folder, path)
            if explained is not e:
                raise explained from e
        raise
