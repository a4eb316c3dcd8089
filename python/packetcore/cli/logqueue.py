"""Logging that never blocks a server: records cross a bounded queue to a writer thread.

A stderr that nobody reads is a pipe that fills: a plain :class:`logging.StreamHandler`
then blocks the event loop in ``write()`` and every client, and SIGTERM with it.  Here
the loop only formats a record and puts it on a bounded queue (or counts it as dropped
when the queue is full); one daemon thread writes the queue to the descriptor with
``os.write``, holding no lock of Python's io or logging, so a write that blocks forever
blocks only that thread and the process still exits.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["QUEUE_RECORDS", "DroppingQueueHandler", "FdHandler", "queued_stderr"]

#: Records held for the writer thread before new ones are dropped.
QUEUE_RECORDS = 10_000
#: How long the end of a command waits for the writer to empty the queue.
DRAIN_SECONDS = 2.0


class _Drops:
    """A count of dropped records, shared by the queue's two ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self) -> None:
        with self._lock:
            self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
            return count


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Put records on a bounded queue; count, never wait for, those that do not fit."""

    def __init__(self, records: queue.Queue[logging.LogRecord], drops: _Drops) -> None:
        super().__init__(records)
        self.drops = drops

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record``, or count it dropped when the queue is full."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.drops.add()


class FdHandler(logging.Handler):
    """Write each record as one line to a file descriptor, saying first what was dropped."""

    def __init__(self, fd: int, drops: _Drops) -> None:
        super().__init__()
        self.fd = fd
        self.drops = drops

    def handle(self, record: logging.LogRecord) -> bool:
        """Emit ``record`` without taking the handler's lock."""
        # Only the listener thread calls this.  Without the lock, logging.shutdown() at
        # exit never waits on a write that a full pipe blocks forever.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record``; a failed write is lost, as a log line must not stop anything."""
        text = self.format(record) + "\n"
        dropped = self.drops.take()
        if dropped:
            text = f"packetcore: {dropped} log records dropped (the log was not read)\n" + text
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self.fd, data) :]


@contextlib.contextmanager
def queued_stderr(size: int = QUEUE_RECORDS) -> Iterator[Callable[[str], None]]:
    """Route the root logger's stderr handler through a queue; yield a non-blocking ``say``.

    ``say(line)`` writes one line to stderr the same way, whatever the log level.  On
    leaving, the queue is given :data:`DRAIN_SECONDS` to empty; a writer still blocked
    then is abandoned (a daemon thread) and later records keep being dropped, not waited on.
    """
    root = logging.getLogger()
    handler = next(
        (h for h in root.handlers if type(h) is logging.StreamHandler and h.stream is sys.stderr),
        None,
    )
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if handler is None or fd < 0:
        # Not logging to a real stderr (an embedding application, a test): leave it be.
        def say_directly(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        yield say_directly
        return

    sys.stderr.flush()
    drops = _Drops()
    records: queue.Queue[logging.LogRecord] = queue.Queue(size)
    queued = DroppingQueueHandler(records, drops)
    queued.setFormatter(handler.formatter)
    queued.setLevel(handler.level)
    writer = FdHandler(fd, drops)
    listener = _Listener(records, writer)

    def say(line: str) -> None:
        try:
            records.put_nowait(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        except queue.Full:
            drops.add()

    root.removeHandler(handler)
    root.addHandler(queued)
    listener.start()
    try:
        yield say
    finally:
        if listener.stop_within(DRAIN_SECONDS):
            root.removeHandler(queued)
            root.addHandler(handler)
        else:
            _detach(fd)


def _detach(fd: int) -> None:
    """Point ``fd`` at /dev/null: the log was not read, and nothing may wait on it now.

    The writer thread stays blocked in its write to the old pipe (a daemon, abandoned
    at exit); every later write to stderr (an error line, the interpreter's last flush)
    goes nowhere instead of blocking the exit for ever.
    """
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


class _Listener(logging.handlers.QueueListener):
    """A queue listener that gives up waiting for its thread after a while."""

    def __init__(self, records: queue.Queue[logging.LogRecord], handler: logging.Handler) -> None:
        super().__init__(records, handler)
        self.records = records

    def stop_within(self, timeout: float) -> bool:
        """Stop within ``timeout`` seconds; return whether the thread ended."""
        # QueueListener.stop() waits without a limit, on a queue that may never empty.
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            # QueueListener's sentinel is None.
            self.records.put(None, timeout=timeout)  # type: ignore[arg-type]
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        self._thread = None
        return True
