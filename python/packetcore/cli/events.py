"""``--events FILE``: the events of a fetch or a follow, one JSON object a line, as they happen.

Shared by ``packetcore-fetch`` and ``packetcore-fetch --follow``: the file is refused
where it would meet the packets (:func:`refuse_events_on_the_output`), and written by a
thread of its own (:class:`EventsFile`), so that the run waits on it only while it
lags far behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import UserError
from .output import same_path

__all__ = ["EventsFile", "refuse_events_on_the_output"]


def refuse_events_on_the_output(events: str, output: str) -> None:
    """The events may not be written where the packets go: one would destroy the other.

    The same path, through a symlink too (whether or not its target exists yet), a hard
    link, the output's ``.partial`` (where a failed or incomplete run saves it), or, with ``-o -``,
    the file stdout is.  A character device other than stdout (``/dev/null``) is no file
    of either.
    """
    if events == "-":
        return
    try:
        mode = os.stat(events).st_mode
    except OSError:
        mode = 0
    if output == "-":
        try:
            same = os.path.samestat(os.stat(events), os.fstat(1))
        except (OSError, ValueError):
            same = False
        if same:
            raise UserError(f"--events {events} is stdout, where -o - writes the packets", 2)
        return
    if stat.S_ISCHR(mode):
        return
    partial = os.path.realpath(output) + ".partial"  # as the sink names it
    if same_path(events, output) or same_path(events, partial):
        raise UserError(
            f"--events {events} is where the output goes ({output} or {output}.partial): "
            "give the events another file", 2,
        )  # fmt: skip


class EventsFile:
    """The events of a fetch or a follow, one JSON object a line, as they happen (``-``: stderr).

    Not atomic, on purpose: ``tail -f`` shows each gap as it is repaired.  The event loop
    only queues each event; a thread of its own formats and writes them, many lines a
    write, flushing at least every :data:`FLUSH_SECONDS`, so that a slow disk or a pipe
    whose reader lags never holds the fetch or follow up for long.  What is queued is
    bounded (:data:`BACKLOG` events): once that many wait, the loop waits too, for as
    long as the writer gets lines written (a slow disk, a burst of gaps: backpressure).
    A reader that takes nothing for :data:`STALL_SECONDS` while the backlog is full (or
    while the last events are written, at the end), or a write that fails (a full disk),
    ends the run as a failing output does, with one line; nothing is dropped silently.
    A FIFO with no reader is refused at once (opening it would wait for one).
    """

    FLUSH_SECONDS = 0.25
    BACKLOG = 200_000
    STALL_SECONDS = 5.0
    # Lines a write takes at most, and bytes a system call (each one is progress).
    LINES = 8192
    CHUNK = 1 << 16

    def __init__(self, path: str) -> None:
        self.path = path
        if path == "-":
            if sys.stderr is None:
                raise UserError("--events -: stderr is closed", 2)
            self.fd, self._owned = sys.stderr.fileno(), False
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                self.fd = os.open(path, flags, 0o644)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if exc.errno == errno.ENXIO:
                    why = "a FIFO that nobody reads"
                raise UserError(f"cannot write the events file {path}: {why}") from exc
            os.set_blocking(self.fd, True)  # the writer thread waits, the loop only for room
            self._owned = True
        self.error: str | None = None
        self._closed = False
        self.on_failure: Callable[[str], None] = lambda _: None
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        # Events queued (by the loop) and taken (by the writer): each counted by one thread.
        self._put = 0
        self._taken = 0
        self._progress = time.monotonic()  # when the writer last got bytes written
        self._waiting = False  # the loop waits for room in the backlog
        self._room = threading.Event()
        # A writer still stuck in a write when the file is closed closes it on its way
        # out: closed under it, the descriptor could be reused and another file written.
        self._lock = threading.Lock()
        self._written_all = False  # the writer has returned
        self._close_on_exit = False
        self._thread = threading.Thread(target=self._write, name="events", daemon=True)
        self._thread.start()

    def __call__(self, event: dict[str, Any]) -> None:
        """Queue ``event``; with :data:`BACKLOG` events waiting, wait for the writer first."""
        if self.error is not None:
            return
        if self._put - self._taken >= self.BACKLOG and not self._wait_for_room():
            return
        self._put += 1
        self._queue.put(event)

    def _wait_for_room(self) -> bool:
        """Wait while the backlog is full and the writer gets lines written; False: it stalled."""
        began = time.monotonic()
        self._room.clear()
        self._waiting = True
        try:
            while self._put - self._taken >= self.BACKLOG:
                if self.error is not None:
                    return False
                idle = time.monotonic() - max(self._progress, began)
                if idle >= self.STALL_SECONDS:
                    self.error = (
                        f"cannot write the events file {self.path}: {self.BACKLOG:,} events "
                        f"waiting, and nothing written for {self.STALL_SECONDS:g} s "
                        "(its reader stalled)"
                    )
                    self.on_failure(self.error)
                    return False
                self._room.wait(min(self.STALL_SECONDS - idle, 0.05))
                self._room.clear()
        finally:
            self._waiting = False
        return True

    def _write(self) -> None:
        try:
            self._write_all()
        finally:
            with self._lock:
                self._written_all = True
                close = self._close_on_exit
            if close:
                with contextlib.suppress(OSError):
                    os.close(self.fd)

    def _write_all(self) -> None:
        lines: list[str] = []
        flushed = time.monotonic()
        get, line = self._queue.get, _Lines().line
        low = self.BACKLOG - self.LINES  # the loop waits for the backlog to fall to it
        while True:
            timeout = max(flushed + self.FLUSH_SECONDS - time.monotonic(), 0.0)
            try:
                event = get(timeout=timeout)
            except queue.Empty:
                event = {}  # time to flush
            if event:
                lines.append(line(event))
                self._taken += 1
                if self._waiting and self._put - self._taken <= low:
                    self._room.set()
                if len(lines) < self.LINES and time.monotonic() - flushed < self.FLUSH_SECONDS:
                    continue
            if lines:
                if not self._flush(lines):
                    return
                lines = []
            flushed = time.monotonic()
            if event is None:
                return

    def _flush(self, lines: list[str]) -> bool:
        data = memoryview(("\n".join(lines) + "\n").encode())
        try:
            while data:
                if self.error is not None:  # the run gave up on the file (a stalled reader)
                    return False
                data = data[os.write(self.fd, data[: self.CHUNK]) :]
                self._progress = time.monotonic()
        except OSError as exc:
            if self.error is not None:
                return False
            self.error = f"cannot write the events file {self.path}: {exc.strerror or exc}"
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: close() says it
                self.on_failure(self.error)
            return False
        return True

    def close(self) -> str | None:
        """Write what is queued and close; return why the events are incomplete, or None.

        Waits for as long as the writer gets lines written, but no more than
        :data:`STALL_SECONDS` without.  Again after the first: only return the same.
        """
        if self._closed:
            return self.error
        self._closed = True
        self.on_failure = lambda _: None  # the run has ended: the error is returned
        self._queue.put(None)
        began = time.monotonic()
        while self.error is None and self._thread.is_alive():
            self._thread.join(0.05)
            idle = time.monotonic() - max(self._progress, began)
            if idle >= self.STALL_SECONDS and self._thread.is_alive() and self.error is None:
                self.error = (
                    f"cannot write the events file {self.path}: it took nothing for "
                    f"{self.STALL_SECONDS:g} s"
                )
        if self._owned:
            with self._lock:
                close = self._written_all
                self._close_on_exit = not close
            if close:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
        return self.error


class _Lines:
    """Events as JSON lines: a gap's (most of them) without json.dumps.

    A gap's times repeat (those found together were seen together, those repaired
    together were repaired at once), so their text is kept for the next lines.
    """

    def __init__(self) -> None:
        self._times: dict[float, str] = {}

    def line(self, event: dict[str, Any]) -> str:
        """Return ``event`` as one JSON line (no newline)."""
        if event.get("event") != "gap" or len(event) != 7:
            return json.dumps(event, separators=(",", ":"))
        time_ = self._time
        asked, repaired = event["asked"], event["repaired"]
        return (
            f'{{"event":"gap","first":{event["first"]},"last":{event["last"]},'
            f'"seen":{time_(event["seen"])},'
            f'"asked":{"null" if asked is None else time_(asked)},'
            f'"how":"{event["how"]}",'
            f'"repaired":{"null" if repaired is None else time_(repaired)}}}'
        )

    def _time(self, value: float) -> str:
        if type(value) is not float:  # 1 and 1.0 are one key, but not one text
            return repr(value)
        times = self._times
        text = times.get(value)
        if text is None:
            if len(times) >= 4096:
                times.clear()
            text = times[value] = repr(value)
        return text
