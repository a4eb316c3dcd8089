"""Write ``output.json``: atomically, so it is never half-written or clobbered by a failure.

A document goes to a temporary file in the target's directory, is flushed to disk, and
then renamed over the target (``os.replace`` is atomic within one file system).  An
incomplete fetch writes ``<output>.partial`` the same way and leaves ``<output>`` alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from .engine import to_json
from .packets import Packets

__all__ = [
    "PARTIAL_SUFFIX",
    "STDOUT",
    "check_writable",
    "partial_path",
    "write_atomic",
    "write_packets",
]

#: The ``--output`` value that means standard output.
STDOUT = "-"
#: Appended to the output path for the packets of an incomplete fetch.
PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Return where the packets of an incomplete fetch into ``path`` are saved."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise ``OSError`` now if ``path`` could not be written later (before a long fetch)."""
    if os.fspath(path) == STDOUT:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {os.fspath(path)!r} is a directory")
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory {os.fspath(directory)!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {os.fspath(directory)!r} is not writable")


def _new_file_mode(target: Path) -> int:
    # mkstemp creates 0600; give the file the mode the target has, or the one a plain
    # open() would give it under the process umask.
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: readers see the old or the new file only.

    A symbolic link is followed, so the file it names is replaced and the link kept.  A
    target that exists and is no regular file (a FIFO, a device such as ``/dev/null``)
    is written straight into: a rename would put a plain file in its place.
    """
    target = Path(os.path.realpath(path))
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(target.stat().st_mode):
            with open(target, "wb") as stream:
                stream.write(data)
            return
    directory = target.parent
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), _new_file_mode(target))
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform or file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_packets(path: str | os.PathLike[str], packets: Packets) -> None:
    """Write ``packets`` as an ``output.json`` document to ``path`` (``-``: stdout)."""
    document = to_json(packets)
    if os.fspath(path) == STDOUT:
        out = sys.stdout.buffer
        out.write(document)
        out.flush()
        return
    write_atomic(path, document)
