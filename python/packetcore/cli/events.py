"""``--events FILE``: the events of a fetch or a follow, one JSON object a line, as they happen.

Shared by ``packetcore-fetch`` and ``packetcore-fetch --follow``: the file is refused
where it would meet the packets (:func:`refuse_events_on_the_output`), and written by a
thread of its own (:class:`EventsFile`) so that the run never waits on it.
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

# Seconds the end of a run waits for the events' reader to take the rest.
_DRAIN = 2.0


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
    only queues each event; a thread of its own formats and writes them, flushing at
    least every :data:`FLUSH_SECONDS`, so that a slow disk or a pipe whose reader stalls
    never holds the fetch or follow up.  What is queued is bounded (:data:`BACKLOG`
    events): a reader that stalls for longer, or a write that fails (a full disk), ends
    the run as a failing output does, with one line; nothing is dropped silently.  A
    FIFO with no reader is refused at once (opening it would wait for one).
    """

    FLUSH_SECONDS = 0.25
    BACKLOG = 200_000

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
            os.set_blocking(self.fd, True)  # the writer thread may wait; the loop never does
            self._owned = True
        self.error: str | None = None
        self._closed = False
        self.on_failure: Callable[[str], None] = lambda _: None
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._queued = 0  # events put and not yet written (an estimate across threads)
        self._thread = threading.Thread(target=self._write, name="events", daemon=True)
        self._thread.start()

    def __call__(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (on the loop: never blocks)."""
        if self.error is not None:
            return
        self._queued += 1
        if self._queued > self.BACKLOG:
            self.error = (
                f"cannot write the events file {self.path}: {self.BACKLOG:,} events waiting "
                "(its reader stalled)"
            )
            self.on_failure(self.error)
            return
        self._queue.put(event)

    def _write(self) -> None:
        lines: list[str] = []
        flushed = time.monotonic()
        while True:
            timeout = max(flushed + self.FLUSH_SECONDS - time.monotonic(), 0.0)
            try:
                event = self._queue.get(timeout=timeout)
            except queue.Empty:
                event = {}  # time to flush
            if event:
                lines.append(_line(event))
                self._queued -= 1
                if len(lines) < 4096 and time.monotonic() - flushed < self.FLUSH_SECONDS:
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
                data = data[os.write(self.fd, data) :]
        except OSError as exc:
            self.error = f"cannot write the events file {self.path}: {exc.strerror or exc}"
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: close() says it
                self.on_failure(self.error)
            return False
        return True

    def close(self) -> str | None:
        """Write what is queued and close; return why the events are incomplete, or None.

        Again after the first: only return the same.
        """
        if self._closed:
            return self.error
        self._closed = True
        self.on_failure = lambda _: None  # the run has ended: the error is returned
        self._queue.put(None)
        self._thread.join(_DRAIN if self.error is None else 0.1)
        if self._thread.is_alive() and self.error is None:
            self.error = (
                f"cannot write the events file {self.path}: it took nothing for {_DRAIN:g} s"
            )
        if self._owned:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        return self.error


def _line(event: dict[str, Any]) -> str:
    """Return ``event`` as one JSON line; a gap's (most of them) without json.dumps."""
    if event.get("event") == "gap" and len(event) == 7:
        asked = event["asked"]
        return (
            f'{{"event":"gap","first":{event["first"]},"last":{event["last"]},'
            f'"seen":{event["seen"]!r},"asked":{"null" if asked is None else repr(asked)},'
            f'"how":"{event["how"]}","repaired":{_number(event["repaired"])}}}'
        )
    return json.dumps(event, separators=(",", ":"))


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)
