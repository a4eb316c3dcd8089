"""The fetch's output: packets formatted and written on a thread of their own, as they come.

Beside the network, so that formatting never holds the fetch back; into an
:class:`~packetcore.io.output.AtomicFile`, or straight to stdout.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol, cast

from ..errors import OutputError
from ..packets import Packets
from .formats import FormatWriter, open_writer
from .output import STDOUT, AtomicFile, partial_path

__all__ = ["ABORT_WAIT", "Output", "Sink"]

#: How long :meth:`Output.abort` waits for the writer to leave the batch it writes.
ABORT_WAIT = 5.0
# On stdout the writer may be blocked on a reader that stopped reading: not long.
_ABORT_WAIT_STDOUT = 0.2


class _Descriptor(io.RawIOBase):
    """Unbuffered writes straight to a file descriptor: every byte, or an error.

    For stdout: nothing ever waits in a buffer, so nothing must be flushed (and block on
    a reader that stopped reading, or fail after it left) when a fetch is abandoned or
    the interpreter exits, and no buffer lock is held by a writer blocked on the pipe.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        os.fstat(fd)  # OSError if it is closed
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        return done


def _stdout() -> BinaryIO:
    # Python leaves sys.stdout None when descriptor 1 was closed at start; packetcore's
    # commands then put /dev/null there (so that no socket takes it): still closed.
    if sys.stdout is None:
        raise OutputError("cannot write to stdout: it is closed")
    try:
        return cast(BinaryIO, _Descriptor(1))
    except OSError:
        raise OutputError("cannot write to stdout: it is closed") from None


def _check_target(path: str) -> None:
    # What would only fail at the end, after the whole fetch: fail now instead.
    if not path:
        raise OutputError("the output path is empty")
    if path.endswith(os.sep) or os.path.isdir(path):
        raise OutputError(f"the output {path} names a directory, not a file")
    partial = partial_path(os.path.realpath(path))
    with contextlib.suppress(OSError):  # a name too long for ".partial" fails only if used
        if partial.is_dir():
            raise OutputError(f"{partial}, where an incomplete fetch is saved, is a directory")


class Sink(Protocol):
    """What a fetch or a follow writes into: a file or stdout (:class:`Output`), or a
    JetStream stream (:class:`~packetcore.io.nats.NatsOutput`)."""

    name: str
    written: int
    error: BaseException | None
    #: The last sequence the output held before this fetch (a stream resumes after it);
    #: None for a file, which is written whole.
    resume_after: int | None

    @property
    def backlog(self) -> int: ...
    def on_failure(self, callback: Callable[[str], None]) -> None: ...
    def put(self, packets: Packets) -> None: ...
    def describe(self, exc: BaseException) -> str: ...
    def finish(self, timeout: float | None = None) -> None: ...
    def place(self, complete: bool) -> str: ...
    def close(self, complete: bool, timeout: float | None = None) -> str: ...
    def abort(self) -> None: ...


class Output:
    """Where a fetch's packets go, in order: formatted and written on a thread of its own.

    ``path`` is a file (written atomically, see :class:`AtomicFile`) or ``-`` for
    stdout, flushed after every batch so a reader sees records at once.  :meth:`put`
    hands a batch over without waiting; :meth:`close` finishes the document
    (:meth:`finish`) and puts it in place (:meth:`place`); :meth:`abort` drops it.  A
    write that fails stops the writer and is reported through the callback given to
    :meth:`on_failure`, from the writer thread.  Nothing reaches stdout before the first
    packet (or the end of an empty feed): a fetch that cannot connect writes nothing.
    """

    def __init__(self, path: str, form: str) -> None:
        self.form = form
        self.resume_after: int | None = None  # a file is written whole
        self._file: AtomicFile | None = None
        self._aborted = threading.Event()
        self._writer: FormatWriter | None = None
        if os.fspath(path) == STDOUT:
            self.name = "stdout"
            self._stream = _stdout()
            # Opened on the first packet (a format's header is bytes on the pipe): here
            # only what would fail then is tried (a format without its library).
            open_writer(io.BytesIO(), form).abandon()
        else:
            self.name = os.fspath(path)
            _check_target(self.name)
            self._file = AtomicFile(path)
            self._stream = self._file.stream
            try:
                self._writer = open_writer(self._stream, form)
            except BaseException:
                self.abort()
                raise
        self._queue: queue.SimpleQueue[Packets | None] = queue.SimpleQueue()
        self.queued = 0
        self.written = 0
        self.error: BaseException | None = None
        self._failed: Callable[[str], None] = lambda reason: None
        self._thread = threading.Thread(target=self._run, name="packetcore-output", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Return how many packets wait to be written (none once the output failed)."""
        return 0 if self.error is not None else self.queued - self.written

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` from the writer thread if a write fails."""
        self._failed = callback

    def put(self, packets: Packets) -> None:
        """Hand a batch over to be written after the ones before it."""
        if self.error is not None:
            raise OutputError(self.describe(self.error))
        self.queued += len(packets)
        self._queue.put(packets)

    def describe(self, exc: BaseException) -> str:
        """Return a failed write as one line."""
        if isinstance(exc, BrokenPipeError):
            return f"{self.name}: broken pipe (the reader left before the end)"
        if isinstance(exc, OSError):
            return f"cannot write {self.name}: {exc.strerror or exc}"
        return f"cannot write {self.name}: {exc}"

    def _opened(self) -> Any:
        if self._writer is None:
            self._writer = open_writer(self._stream, self.form)
        return self._writer

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self.error is not None or self._aborted.is_set():
                continue  # failed or dropped already: drain what was handed over
            if not len(batch):
                continue
            try:
                self._opened().write(batch)
            except Exception as exc:
                if self._aborted.is_set():
                    continue  # the file went away under it on purpose
                self.error = exc
                with contextlib.suppress(Exception):  # the fetch may be gone already
                    self._failed(self.describe(exc))
                continue
            self.written += len(batch)

    def _join(self, timeout: float | None) -> bool:
        """Wait for the writer thread (at most ``timeout``); return whether it ended.

        In short slices: the main thread runs a signal's handler between them, even when
        the signal woke another thread.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                break
            self._thread.join(left)
        return not self._thread.is_alive()

    def finish(self, timeout: float | None = None) -> None:
        """Write what was handed over and end the document; make it durable, not yet in place.

        ``timeout`` bounds the wait for the writer (a reader that stopped reading); past
        it, OutputError.
        """
        self._queue.put(None)
        if not self._join(timeout):
            self.abort()
            why = (
                "a reader that stopped reading?" if self._file is None else "the writer fell behind"
            )
            raise OutputError(
                f"{self.name} took nothing for long past the deadline ({why}); gave up"
            )
        try:
            if self.error is not None:
                raise self.error
            self._opened().close()
            self._stream.flush()
            if self._file is not None:
                self._file.sync()
        except Exception as exc:
            self.abort()
            raise OutputError(self.describe(exc)) from exc

    def place(self, complete: bool) -> str:
        """Put the finished document in place; return where it went.

        Complete: at the target, and a stale ``.partial`` beside it goes.  Incomplete:
        at ``<target>.partial``, the target left as it was.
        """
        if self._file is None:
            with contextlib.suppress(OSError):
                self._stream.close()
            return "stdout"
        partial = partial_path(self._file.target)
        try:
            where = self._file.commit(None if complete else partial)
        except OSError as exc:
            raise OutputError(self.describe(exc)) from exc
        if complete:
            with contextlib.suppress(OSError):
                partial.unlink()  # superseded by the complete output
        return os.fspath(where)

    def close(self, complete: bool, timeout: float | None = None) -> str:
        """:meth:`finish`, then :meth:`place`; return where the output went."""
        self.finish(timeout)
        return self.place(complete)

    def abort(self) -> None:
        """Drop the output: the target stays as it was, no temporary file is left.

        The writer thread is given :data:`ABORT_WAIT` seconds (0.2 s on stdout, where a
        reader may have stopped reading) to leave the batch it is writing: the format's
        library must not be used from two threads at once, nor left running at exit.
        Whatever it still writes goes to a file already removed, or to stdout.
        """
        self._aborted.set()
        queued = getattr(self, "_queue", None)
        if queued is not None:
            queued.put(None)
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            self._join(ABORT_WAIT if self._file is not None else _ABORT_WAIT_STDOUT)
        writer = self._writer
        if writer is not None:
            writer.abandon()
        if self._file is not None:
            self._file.discard()
