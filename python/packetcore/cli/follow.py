"""``packetcore-fetch --follow``: follow a live feed into any output format until stopped.

A follow ends normally at ``--until``, at the end of a finite feed, after
``--deadline`` seconds, or on SIGINT/SIGTERM: everything contiguous is written, the
output is finished (a closed JSON array, a complete Parquet file) and put in place, the
summary is printed and the exit status is 0.  Signals follow :mod:`packetcore.cli.signals`:
signals within 0.5 s of each other are one request (``timeout`` sends two); a separate,
later one while the follow finishes gives up (130 / 143, the output left as it was);
once the output is in place, signals are ignored.  A follow that fails (no server, connections
failing past ``--retries``) saves what it wrote to ``OUTPUT.partial`` and exits 1.

To stdout, a stop signal gives the reader :data:`_DRAIN` seconds to take what is still
to be written (past it: one line, exit 1); a reader that leaves (``| head``) is a normal
end, since a follow has no end of its own: exit 0, no error.
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
from typing import TYPE_CHECKING, Any

from . import UserError, signals
from .options import say_metrics
from .output import given_up, open_output, same_path
from .progress import progress_bar

if TYPE_CHECKING:
    from ..client.follow import FollowStats
    from ..client.session import FetchOptions, Progress
    from ..io.sink import Output
    from ..net.metrics import MetricsServer
    from ..packets import Packets

__all__ = ["follow_into"]

_PROGRAM = "packetcore-fetch"
# Packets waiting for the writer before the follow stops taking more from the store.
_BACKLOG = 1 << 20
# Seconds a stopped follow waits for a stdout reader to take the rest.
_DRAIN = 2.0


def follow_into(
    options: FetchOptions,
    output: str,
    form: str | None = None,
    *,
    verbosity: int = 0,
    started: float | None = None,
    progress: float | None = None,
    events: str | None = None,
    metrics: MetricsServer | None = None,
    running: list[FollowStats] | None = None,
) -> int:
    """Follow into ``output``, print the summary; return the exit status (or raise UserError).

    ``progress``: a status line every so many seconds where stderr is no terminal;
    ``events``: a file (``-``: stderr) to write each event of the follow to as it
    happens, one JSON object a line; ``metrics``: a bound metrics server, served while
    the follow runs (stopped at the end); ``running`` gets the follow's stats as soon as
    it starts (what the metrics read).
    """
    import asyncio

    from ..errors import OutputError

    if started is None:
        started = time.perf_counter()
    signals.graceful()  # a request to stop is a follow's normal end
    if events is not None:
        _refuse_events_on_the_output(events, output)
    out = open_output(output, form)  # checks what can be checked before connecting
    to_stdout = output == "-"
    try:
        journal = _EventsFile(events) if events is not None else None
    except BaseException:
        out.abort()
        raise
    try:
        with contextlib.ExitStack() as serving:
            if metrics is not None:
                serving.enter_context(metrics.start())
                say_metrics(_PROGRAM, metrics, lambda line: print(line, file=sys.stderr))
            with progress_bar(verbosity, progress) as report, signals.in_loop():
                stats, failure = asyncio.run(
                    _run(options, out, report, journal, [] if running is None else running)
                )
        if journal is not None:
            failure = journal.close() or failure
        reason = stats.reason  # what the summary says ended the follow
        if to_stdout and isinstance(out.error, BrokenPipeError):
            out.abort()  # the reader left (`| head`): a follow's normal end
            signals.settle()
            failure, where = None, "stdout"
            reason = "the reader closed stdout"
        elif not stats.packets and not to_stdout:
            out.abort()  # nothing came: the output stays as it was
            if failure is not None:
                raise UserError(failure)
            if not stats.published:  # stopped (a signal, the deadline) before it connected
                raise UserError(
                    f"{reason}: no connection to {options.host}:{options.port} was made; "
                    f"{output} left as it was"
                )
            where = f"nothing ({output} left as it was)"
        else:
            signalled = stats.reason.startswith("stopped by ")
            try:
                out.finish(_DRAIN if to_stdout and signalled else None)
                with signals.placing():  # in place: the follow has ended, signals are moot
                    where = out.place(failure is None)
            except OutputError as exc:
                if to_stdout and signalled and out.error is None and exc.__cause__ is None:
                    raise UserError(  # the reader took nothing
                        f"{stats.reason}; stdout took nothing for {_DRAIN:g} s: what was "
                        f"still to be written is dropped (what reached it is in order)"
                    ) from None
                if not (to_stdout and isinstance(exc.__cause__, BrokenPipeError)):
                    raise
                signals.settle()
                where = "stdout"  # the reader left while the rest was written: no matter
    except KeyboardInterrupt as exc:
        # A second request to stop, while the first one's end was being written.
        out.abort()
        if journal is not None:
            journal.close()
        raise given_up(exc, output, " while finishing") from None
    except BaseException:
        out.abort()
        if journal is not None:
            journal.close()
        raise
    shown = "stdout" if to_stdout else output
    if not stats.packets and not to_stdout:
        shown = where
    if failure is not None:
        saved = "written to stdout" if to_stdout else f"saved to {where}"
        raise UserError(f"{failure}; {stats.packets} packet(s) in order {saved}")
    if verbosity >= 0:
        shown = shown if not os.path.islink(output) else where
        waited = time.perf_counter() - started  # the wall time the user waited
        print(stats.summary(shown, seconds=waited, reason=reason), file=sys.stderr)
    return 0


async def _run(
    options: FetchOptions,
    out: Output,
    progress: Progress | None,
    events: _EventsFile | None,
    holder: list[FollowStats],
) -> tuple[FollowStats, str | None]:
    """Follow into ``out``; return the stats and, if it failed, why (``holder`` gets them)."""
    import asyncio

    from ..client.follow import FollowStats, run_follow
    from ..errors import FetchError, OutputError

    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    failed: list[str] = []

    def stop(reason: str) -> None:
        if not stopped.done():
            stopped.set_result(reason)

    def on_failure(reason: str) -> None:
        failed.append(reason)
        loop.call_soon_threadsafe(stop, reason)  # from the writer thread

    out.on_failure(on_failure)
    if events is not None:
        events.on_failure = on_failure

    def put(batch: Packets) -> None:
        # A failed output stops the follow (on_failure): what comes meanwhile goes
        # nowhere, and is no error of the connection that brought it.
        with contextlib.suppress(OutputError):
            out.put(batch)

    timer = None
    if options.deadline is not None:
        timer = loop.call_later(options.deadline, stop, f"{options.deadline:g} s passed")
    # The first request to stop ends the follow normally; a later one cancels this task
    # (signals.watch), raised as Interrupted once the loop has ended.
    with signals.watch(lambda signum: stop(f"stopped by {signals.name(signum)}")):
        try:
            stats = await run_follow(
                options, put, progress, stopped=stopped,
                flowing=lambda: out.backlog < _BACKLOG, stats=holder.append, events=events,
            )  # fmt: skip
        except FetchError as exc:
            return (holder[0] if holder else FollowStats()), str(exc)
        finally:
            if timer is not None:
                timer.cancel()
    return stats, (failed[0] if failed else None)


def _refuse_events_on_the_output(events: str, output: str) -> None:
    """The events may not be written where the packets go: one would destroy the other.

    The same path, through a symlink too (whether or not its target exists yet), a hard
    link, the output's ``.partial`` (where a failed follow saves it), or, with ``-o -``,
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


class _EventsFile:
    """The follow's events, one JSON object a line, written as they happen (``-``: stderr).

    Not atomic, on purpose: ``tail -f`` shows each gap as it is repaired.  The event loop
    only queues each event; a thread of its own formats and writes them, flushing at
    least every :data:`FLUSH_SECONDS`, so that a slow disk or a pipe whose reader stalls
    never holds the follow up.  What is queued is bounded (:data:`BACKLOG` events): a
    reader that stalls for longer, or a write that fails (a full disk), ends the follow
    as a failing output does, with one line; nothing is dropped silently.  A FIFO with
    no reader is refused at once (opening it would wait for one).
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
        """Write what is queued and close; return why the events are incomplete, or None."""
        self.on_failure = lambda _: None  # the follow has ended: the error is returned
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
