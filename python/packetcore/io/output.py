"""Write an output atomically, so it is never half-written.

The records go to a temporary file in the target's directory as they come; at the end
it is flushed to disk and renamed over the target (``os.replace`` is atomic within one
file system).  An incomplete fetch renames it to ``<output>.partial`` instead and
leaves ``<output>`` alone; a failed or interrupted one removes it.  The fetch's
streaming writer on top of it is :class:`packetcore.io.sink.Output`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import OutputError  # defined there, re-exported here as before

__all__ = [
    "PARTIAL_SUFFIX",
    "STDOUT",
    "AtomicFile",
    "OutputError",
    "check_writable",
    "partial_path",
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


class AtomicFile:
    """A file that replaces ``path`` all at once when committed, and never before.

    The bytes go to a temporary file beside the target; :meth:`commit` flushes it to
    disk and renames it over the target (or over another name in the same directory,
    such as the ``.partial`` file), :meth:`discard` removes it.  A symbolic link is
    followed, so the file it names is replaced and the link kept.  A target that exists
    and is no regular file (a FIFO, a device such as ``/dev/null``) is written straight
    into: a rename would put a plain file in its place.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: The path as the caller named it: what an error names, never the temporary.
        self.path = os.fspath(path)
        self.target = Path(os.path.realpath(path))
        self._temp: Path | None = None
        self._synced = False
        special = False
        with contextlib.suppress(FileNotFoundError):
            special = not stat.S_ISREG(self.target.stat().st_mode)
        if special:
            self.stream: BinaryIO = open(self.target, "wb")  # noqa: SIM115 (closed by commit)
            return
        # The name's head only: a temporary beside a 255-byte name must still fit.
        try:
            fd, temp = tempfile.mkstemp(
                prefix=f".{self.target.name[:200]}.", suffix=".tmp", dir=self.target.parent
            )
        except OSError as exc:
            raise self._named(exc) from exc
        self._temp = Path(temp)
        try:
            os.fchmod(fd, _new_file_mode(self.target))
            self.stream = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._temp.unlink()
            raise

    def _named(self, exc: OSError) -> OSError:
        """Return ``exc`` naming the caller's path instead of the temporary file."""
        if exc.errno is None:
            return exc
        return OSError(exc.errno, exc.strerror, self.path)

    @contextlib.contextmanager
    def _discarded_on_failure(self) -> Iterator[None]:
        """Discard the temporary file if the block fails; an OSError names the target."""
        try:
            yield
        except OSError as exc:
            self.discard()
            raise self._named(exc) from exc
        except BaseException:
            self.discard()
            raise

    @property
    def temporary(self) -> Path | None:
        """Return the temporary file's path (``None`` when writing into a special file)."""
        return self._temp

    def sync(self) -> None:
        """Make the bytes written durable (flush, fsync, close), not yet in place."""
        if self._temp is None or self._synced:
            return
        with self._discarded_on_failure():
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
        self._synced = True

    def commit(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Make the bytes written durable and put them at ``path`` (default: the target)."""
        if self._temp is None:
            self.stream.close()
            return self.target
        destination = self.target if path is None else Path(path)
        self.sync()
        with self._discarded_on_failure():
            os.replace(self._temp, destination)
        self._temp = None
        _fsync_directory(destination.parent)
        return destination

    def discard(self) -> None:
        """Drop what was written: the target stays as it was."""
        with contextlib.suppress(OSError):
            self.stream.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                self._temp.unlink()
            self._temp = None

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform or file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
