"""``packetcore-fetch --follow``: follow a live feed into any output format until stopped.

A follow ends normally at ``--until``, at the end of a finite feed, after
``--deadline`` seconds, or on SIGINT/SIGTERM: everything contiguous is written, the
output is finished (a closed JSON array, a complete Parquet file) and put in place, the
summary is printed and the exit status is 0.  A second signal while it finishes aborts
(130 / 143, the output left as it was).  A follow that fails (no server, connections
failing past ``--retries``) saves what it wrote to ``OUTPUT.partial`` and exits 1.

To stdout, a stop signal gives the reader :data:`_DRAIN` seconds to take what is still
to be written (past it: one line, exit 1); a reader that leaves (``| head``) is a normal
end, since a follow has no end of its own: exit 0, no error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from . import Terminated, UserError
from .fetch import Interrupted, open_output, progress_bar

if TYPE_CHECKING:
    from ..following import FollowStats
    from ..output import Output
    from ..packets import Packets
    from ..session import FetchOptions, Progress

__all__ = ["follow_into"]

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
) -> int:
    """Follow into ``output``, print the summary; return the exit status (or raise UserError).

    ``progress``: a status line every so many seconds where stderr is no terminal.
    """
    import asyncio

    from ..errors import OutputError

    if started is None:
        started = time.perf_counter()
    out = open_output(output, form)  # checks what can be checked before connecting
    try:
        with progress_bar(verbosity, progress) as report:
            stats, failure = asyncio.run(_run(options, out, report))
        to_stdout = output == "-"
        if to_stdout and isinstance(out.error, BrokenPipeError):
            out.abort()  # the reader left (`| head`): a follow's normal end
            failure, where = None, "stdout"
            stats.reason = "the reader closed stdout"
        elif failure is not None and not stats.packets:
            out.abort()  # nothing came: the output stays as it was
            raise UserError(failure)
        else:
            signalled = stats.reason.startswith("stopped by ")
            try:
                where = out.close(failure is None, _DRAIN if to_stdout and signalled else None)
            except OutputError:
                if to_stdout and signalled and out.error is None:  # the reader took nothing
                    raise UserError(
                        f"{stats.reason}; stdout took nothing for {_DRAIN:g} s: what was "
                        f"still to be written is dropped (what reached it is in order)"
                    ) from None
                if not (to_stdout and isinstance(out.error, BrokenPipeError)):
                    raise
                where = "stdout"  # the reader left while the rest was written: no matter
    except (Interrupted, KeyboardInterrupt) as exc:
        out.abort()
        default = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        signum = getattr(exc, "signum", default)
        name = signal.Signals(signum).name
        fate = "stdout has what was written" if output == "-" else f"{output} left as it was"
        raise UserError(f"interrupted by {name} while finishing; {fate}", 128 + signum) from None
    except BaseException:
        out.abort()
        raise
    stats.seconds = time.perf_counter() - started
    shown = "stdout" if output == "-" else output
    if failure is not None:
        saved = "written to stdout" if output == "-" else f"saved to {where}"
        raise UserError(f"{failure}; {stats.packets} packet(s) in order {saved}")
    if verbosity >= 0:
        print(stats.summary(shown if not os.path.islink(output) else where), file=sys.stderr)
    return 0


async def _run(
    options: FetchOptions, out: Output, progress: Progress | None
) -> tuple[FollowStats, str | None]:
    """Follow into ``out``; return the stats and, if it failed, why."""
    import asyncio

    from ..errors import FetchError, OutputError
    from ..following import FollowStats, run_follow

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

    def put(batch: Packets) -> None:
        # A failed output stops the follow (on_failure): what comes meanwhile goes
        # nowhere, and is no error of the connection that brought it.
        with contextlib.suppress(OutputError):
            out.put(batch)

    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def interrupt(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            stop(f"stopped by {signal.Signals(signum).name}")  # a normal end
        else:
            task.cancel()  # the second signal: give up at once

    installed: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            continue  # ignored by whoever started it (a shell's `&`): it stays ignored
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, interrupt, signum)
            installed[signum] = previous
    timer = None
    if options.deadline is not None:
        timer = loop.call_later(options.deadline, stop, f"{options.deadline:g} s passed")
    holder: list[FollowStats] = []
    try:
        stats = await run_follow(
            options, put, progress, stopped=stopped,
            flowing=lambda: out.backlog < _BACKLOG, stats=holder.append,
        )  # fmt: skip
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[-1]) from None
        raise
    except FetchError as exc:
        return (holder[0] if holder else FollowStats()), str(exc)
    finally:
        if timer is not None:
            timer.cancel()
        for number, previous in installed.items():
            loop.remove_signal_handler(number)
            signal.signal(number, previous)
    return stats, (failed[0] if failed else None)
