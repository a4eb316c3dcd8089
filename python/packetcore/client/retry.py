"""Retry with backoff, written once for every attempt a fetch or a follow repeats.

An attempt (connecting, a pass, a round of requests, a subscription...) that fails is
retried ``retries`` times in a row, pausing ``backoff`` seconds before the first retry
and twice as long before each next one, at most :data:`MAX_BACKOFF`; one more failure
in a row and :meth:`Retry.fail` says to give up.  A success starts the count afresh.
What giving up means (an error, or a reason to stop with what arrived) is the caller's.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["MAX_BACKOFF", "Retry", "backoff_delay"]

#: The longest pause between retries, whatever ``backoff`` says.
MAX_BACKOFF = 5.0


def backoff_delay(failures: int, base: float) -> float:
    """Return the pause before retry number ``failures`` (1, 2, ...): doubling, capped."""
    return float(min(base * 2.0 ** min(max(failures - 1, 0), 32), MAX_BACKOFF))


class Retry:
    """The failures in a row of one kind of attempt, and the pause before the next one.

    Use::

        retry = Retry(options.retries, options.backoff)
        while True:
            if attempt():
                retry.succeeded()
                ...
            elif not retry.fail():
                raise FetchError(f"... {retry.failures} times in a row")
            await retry.pause(log, logging.INFO, "attempt failed")  # "...; retrying in 0.10 s"
    """

    def __init__(self, retries: int, backoff: float) -> None:
        self.retries = retries
        self.backoff = backoff
        self._failures = 0

    def __repr__(self) -> str:
        return f"Retry({self.retries}, {self.backoff:g}; {self._failures} failure(s) in a row)"

    @property
    def failures(self) -> int:
        """Return the failures in a row so far."""
        return self._failures

    @property
    def exhausted(self) -> bool:
        """Return whether the failures in a row are past ``retries``: time to give up."""
        return self._failures > self.retries

    @property
    def delay(self) -> float:
        """Return the pause due before the next attempt (0 after no failure)."""
        return backoff_delay(self._failures, self.backoff) if self._failures else 0.0

    def succeeded(self) -> None:
        """An attempt succeeded: the next failure is the first in a row again."""
        self._failures = 0

    def fail(self) -> bool:
        """Count a failure; return whether it may be retried (False: give up)."""
        self._failures += 1
        return not self.exhausted

    async def pause(self, logger: logging.Logger | None = None, level: int = logging.INFO,
                    message: str = "", *args: object) -> None:  # fmt: skip
        """Sleep :attr:`delay` before the next attempt (not at all after no failure).

        With ``logger``, first log ``message % args`` and "; retrying in N s" at ``level``.
        """
        delay = self.delay
        if not self._failures:
            return
        if logger is not None:
            logger.log(level, message + "; retrying in %.2f s", *args, delay)
        await asyncio.sleep(delay)
