"""Write a file under a temporary name in its folder, then rename it into place.

A crash, a full disk or an exception half-way leaves the old file (or nothing), never a
truncated one: ``os.replace`` is atomic within one file system.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it.

    ``suffix`` (default: the one of ``path``) lets writers that pick the format from the file
    name see the right extension.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.",
                               suffix=path.suffix if suffix is None else suffix, dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give the result the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
