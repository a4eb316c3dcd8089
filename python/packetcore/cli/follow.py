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
import os
import sys
import time
from typing import TYPE_CHECKING

from ..io import hide_credentials, is_nats
from . import UserError, signals
from .events import EventsFile, refuse_events_on_the_output
from .options import say_metrics
from .output import given_up, open_output, resumed
from .progress import progress_bar

if TYPE_CHECKING:
    from ..client.follow import FollowStats
    from ..client.session import FetchOptions, Progress
    from ..io.sink import Sink
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
        refuse_events_on_the_output(events, output)
    out = open_output(output, form, options)  # checks what can be checked before connecting
    later = resumed(options, out, program=_PROGRAM, doing="following", verbosity=verbosity)
    if later is None:
        return 0  # a stream that holds everything asked for
    options = later
    to_stdout = output == "-"
    try:
        journal = EventsFile(events) if events is not None else None
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
            shown = hide_credentials(output)
            if not stats.published:  # stopped (a signal, the deadline) before it connected
                raise UserError(
                    f"{reason}: no connection to {options.host}:{options.port} was made; "
                    f"{shown} left as it was"
                )
            where = f"nothing ({shown} left as it was)"
        else:
            signalled = stats.reason.startswith("stopped by ")
            wait = None  # a stop request bounds the wait for what cannot be written
            if signalled:
                wait = _DRAIN if to_stdout else 2 * options.timeout if is_nats(output) else None
            try:
                out.finish(wait)
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
    shown = "stdout" if to_stdout else out.name if is_nats(output) else output
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
    out: Sink,
    progress: Progress | None,
    events: EventsFile | None,
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
