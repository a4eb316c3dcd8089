"""``--progress``: a one-line status on stderr every few seconds, for a log, not a terminal.

On a terminal the fetch draws a tqdm bar; a stderr that is a file or a pipe gets these
lines instead, when asked for: ``PROGRAM: progress: N packets in order of M (P%), R/s,
T s``.  A thread of their own writes them, so a stalled fetch still says so.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client.session import Progress

__all__ = ["DEFAULT_INTERVAL", "status_lines"]

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
