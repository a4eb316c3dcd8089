"""``--progress``: a one-line status on stderr every few seconds, for a log, not a terminal.

On a terminal the fetch draws a tqdm bar; a stderr that is a file or a pipe gets these
lines instead, when asked for: ``PROGRAM: progress: N packets in order of M (P%), R/s,
T s``.  A thread of their own writes them, so a stalled fetch still says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..client.session import Progress

__all__ = ["DEFAULT_INTERVAL", "process_age", "progress_bar", "status_lines"]

#: Seconds between two lines when ``--progress`` names none.
DEFAULT_INTERVAL = 5.0


class _Status:
    """The latest count a fetch reported, and the line that says it."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.started = time.monotonic()
        self.written = 0
        self.expected: int | None = None

    def update(self, written: int, expected: int | None) -> None:
        # From the event loop; read by the ticker: two plain assignments, no lock needed.
        self.written, self.expected = written, expected

    def line(self) -> str:
        seconds = time.monotonic() - self.started
        written, expected = self.written, self.expected
        text = f"{self.program}: progress: {written:,} packets in order"
        if expected:
            text += f" of {expected:,} ({100.0 * written / expected:.1f}%)"
        rate = written / seconds if seconds > 0 else 0.0
        return f"{text}, {rate:,.0f}/s, {seconds:.1f} s"


@contextlib.contextmanager
def status_lines(program: str, interval: float) -> Iterator[Progress]:
    """Yield a progress callback; write its latest count every ``interval`` seconds."""
    status = _Status(program)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(OSError, ValueError):  # a closed stderr: say nothing
                print(status.line(), file=sys.stderr, flush=True)

    ticker = threading.Thread(target=tick, name="packetcore-progress", daemon=True)
    ticker.start()
    try:
        yield status.update
    finally:
        stop.set()
        ticker.join()


@contextlib.contextmanager
def progress_bar(
    verbosity: int, every: float | None = None, program: str = "packetcore-fetch"
) -> Iterator[Progress | None]:
    """Yield a progress callback drawing a tqdm bar, or None when stderr is no terminal.

    ``every`` (``--progress``): where stderr is no terminal, a status line every
    ``every`` seconds instead (even with -q: it was asked for).
    """
    if every is not None and not sys.stderr.isatty():
        with status_lines(program, every) as lines:
            yield lines
        return
    if verbosity < 0 or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # type: ignore[import-untyped]
    from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

    bar: Any = tqdm(total=None, unit="pkt", unit_scale=True, leave=False, file=sys.stderr)

    def progress(written: int, expected: int | None) -> None:
        if expected is not None and bar.total != expected:
            bar.total = expected
        bar.update(written - bar.n)

    try:
        with logging_redirect_tqdm():  # log lines above the bar, never across it
            yield progress
    finally:
        bar.close()


def process_age() -> float:
    """Return how long this process has run, as far as the platform tells (Linux)."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            # Field 22, after the parenthesised command name, is the start in clock ticks.
            start = int(stat.read().rsplit(b")", 1)[1].split()[19])
            up = float(uptime.read().split()[0])
        return max(up - start / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0
