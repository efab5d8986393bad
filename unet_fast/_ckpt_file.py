"""Checks made on a checkpoint file before torch reads a byte of it as weights.

``torch.save`` writes a zip archive of uncompressed entries. torch's reader checks none of the
archive's CRC-32s (a flipped bit in a weight loads silently) and inflates a compressed entry
whatever size it declares (a zip bomb). So a file is only handed to ``torch.load`` once it is a
regular file (a named pipe would block the open forever), a zip archive of stored entries only,
and every byte is as written:

* files written by :func:`unet_fast.save` end with a SHA-256 digest of every byte before it,
  stored as the archive's comment (``torch.save`` writes no comment; zip readers, torch's
  included, skip it), so any changed byte anywhere is caught;
* other torch files (and those of earlier unet_fast versions) are checked entry by entry against
  the CRC-32 the archive records for each.

The checks read the file once, in 1 MiB chunks, and allocate nothing in proportion to what the
file declares.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

DIGEST_PREFIX = b"unet_fast-sha256:"
COMMENT = len(DIGEST_PREFIX) + 64  # bytes of the comment save() appends
_EOCD = b"PK\x05\x06"  # end of central directory record, 22 bytes plus the comment
_EOCD_SIZE = 22
_LOCAL = b"PK\x03\x04"
_CHUNK = 1 << 20
# pickle protocol 2 followed by the magic number torch's pre-1.6 format starts with
_LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no named pipes in the file system
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class FileCheckError(Exception):
    """What is wrong with the file, worded to follow ``checkpoint 'PATH'``; one line."""


def _require_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise FileCheckError("is a folder, expected a file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise FileCheckError(f"is {kind}, not a regular file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, after making sure it is a regular file (never blocks)."""
    try:
        _require_regular(os.stat(path).st_mode)
        # O_NONBLOCK: had the path become a named pipe since the stat, open() would not wait
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileCheckError("does not exist") from None
    except PermissionError:
        raise FileCheckError("cannot be read: permission denied") from None
    except OSError as e:
        raise FileCheckError(f"cannot be read: {e.strerror or e}") from e
    try:
        _require_regular(os.fstat(fd).st_mode)
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def add_digest(path: str | os.PathLike[str]) -> None:
    """Append the SHA-256 comment to the zip archive ``torch.save`` wrote at ``path``."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - _EOCD_SIZE)
        end = f.read(_EOCD_SIZE)
        if size < _EOCD_SIZE or end[:4] != _EOCD or end[20:] != b"\0\0":
            raise RuntimeError(f"{str(path)!r} is not the zip archive torch.save writes")
        digest = _sha256(f, size - 2)
        f.seek(size - 2)
        f.write(struct.pack("<H", COMMENT) + DIGEST_PREFIX + digest.encode("ascii"))


def _sha256(f: BinaryIO, length: int) -> str:
    h = hashlib.sha256()
    f.seek(0)
    left = length
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise FileCheckError("is corrupt or truncated (it ended while being read)")
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def verify(f: BinaryIO) -> None:
    """Raise :class:`FileCheckError` unless ``f`` is an intact archive of stored entries.

    Leaves ``f`` at an unspecified position.
    """
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise FileCheckError("is empty")
    f.seek(0)
    head = f.read(len(_LEGACY))
    if not head.startswith(_LOCAL):
        if head == _LEGACY:
            raise FileCheckError(
                "uses PyTorch's legacy format (before 1.6), which carries no checksums and is "
                "not read; load it with torch.load and save it again with torch.save")
        raise FileCheckError("is corrupt or not a PyTorch weights file (not a zip archive)")
    digest = _stored_digest(f, size)
    if digest is not None:
        if _sha256(f, size - COMMENT - 2) != digest:
            raise FileCheckError("is corrupt: its bytes do not match the SHA-256 digest written "
                                 "with it (damaged or modified since it was saved)")
    try:
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            struct.error) as e:
        raise FileCheckError(f"is corrupt or truncated ({_first_line(e)})") from e
    if not infos:
        raise FileCheckError("is corrupt (an empty zip archive)")
    for info in infos:
        if info.flag_bits & 0x1:
            raise FileCheckError(f"is corrupt (entry {info.filename!r} is marked encrypted)")
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.save never compresses: a compressed entry is corruption or a zip bomb
            raise FileCheckError(
                f"holds a compressed entry {info.filename!r} ({_size_text(info.file_size)} "
                "unpacked), which torch.save never writes; refusing to unpack it")
        if info.header_offset + info.compress_size > size or info.file_size != info.compress_size:
            raise FileCheckError(f"is corrupt or truncated (entry {info.filename!r} does not "
                                 "fit in the file)")
    if digest is None:
        _check_crcs(archive, infos)


def _stored_digest(f: BinaryIO, size: int) -> str | None:
    """The digest of the comment :func:`add_digest` appends, or None for an archive without a
    comment (plain ``torch.save``). Anything else at the end is corruption: a flipped byte in
    the digest or in the comment's length must not pass for "no digest"."""
    tail_len = min(size, _EOCD_SIZE + COMMENT)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    if (tail_len == _EOCD_SIZE + COMMENT and tail[:4] == _EOCD
            and tail[20:22] == struct.pack("<H", COMMENT)
            and tail[_EOCD_SIZE:].startswith(DIGEST_PREFIX)):
        return tail[_EOCD_SIZE + len(DIGEST_PREFIX):].decode("ascii", "replace")
    if tail[-_EOCD_SIZE:-_EOCD_SIZE + 4] == _EOCD and tail[-2:] == b"\0\0":
        return None
    raise FileCheckError("is corrupt or truncated (its zip end record is not at its end)")


def _check_crcs(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    for info in infos:
        try:
            with archive.open(info) as entry:
                while entry.read(_CHUNK):
                    pass  # zipfile compares the CRC-32 once the entry is read to its end
        except zipfile.BadZipFile as e:
            if "CRC" in str(e):
                raise FileCheckError(
                    f"is corrupt: entry {info.filename!r} fails its CRC-32 check") from e
            raise FileCheckError(f"is corrupt ({_first_line(e)})") from e
        except (OSError, ValueError, EOFError, struct.error, NotImplementedError) as e:
            raise FileCheckError(f"is corrupt or truncated ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def check_file(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened and verified (see the module docstring), positioned at its start."""
    f = open_regular(Path(path))
    try:
        verify(f)
        f.seek(0)
        return f
    except BaseException:
        f.close()
        raise
