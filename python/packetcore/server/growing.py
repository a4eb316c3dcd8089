"""A live feed that grows as a JetStream stream does: ``--feed nats://... --live RATE``.

Where a :class:`~packetcore.server.live.LiveFeed` publishes by its clock, this one
publishes each block when the stream stores it (a follow capturing into the stream, on
this host or another): a :class:`~packetcore.io.nats.StreamTail` hands the blocks over
on its thread, and the publisher, waking every :data:`~packetcore.server.live.TICK`,
writes subscribers what arrived.  ``rate`` is the rate the stream is expected to grow
at: it sizes the subscribers' lag bound, as it does for a clocked feed.  There is no
clock to publish, so a subscription that asks for one gets none (as from a server
without clocks).  The feed ends at ``until``, or if the tail must stop (a stream that
starts holding something else): at what it holds then.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time

from ..engine import MAX_SEQUENCE, PACKET_SIZE
from ..io import hide_credentials
from ..io.nats import StreamTail
from .live import LiveFeed

__all__ = ["GrowingFeed"]

log = logging.getLogger("packetcore.server")


class GrowingFeed(LiveFeed):
    """The packets a stream holds, growing as it does (see the module)."""

    #: No clock: a subscription that asks for one gets none.
    clocked = False

    def __init__(self, url: str, rate: float, *, until: int | None = None) -> None:
        super().__init__(rate, until=until)
        self.url = url
        self._first_sequence = 0  # the first block's, once it arrived
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # the row of each chunk's first packet
        self._held = 0  # rows held (set after the chunk is in: readers never see less)
        self._lock = threading.Lock()
        self._tail = StreamTail(url, self._arrived, self._stopped)
        self._tail.start()  # the stream's blocks so far, or a NatsError
        first = self._first_sequence
        self.first = first
        final = MAX_SEQUENCE if until is None else until
        if final < first:
            self._tail.stop()
            raise ValueError(f"until must be {first} or above (the first), not {until}")
        self.final = final
        self.total = final - first + 1
        self.endless = until is None

    def _arrived(self, first: int, data: bytes) -> None:
        """A block the stream stored (on the tail's thread)."""
        with self._lock:
            if not self._chunks:
                self._first_sequence = first
            self._starts.append(self._held)
            self._chunks.append(data)
            self._held += len(data) // PACKET_SIZE

    def _stopped(self, reason: str) -> None:
        """The tail stopped: the feed ends at what it holds."""
        log.error("%s; the feed ends at what it holds", reason)  # the reason names the stream
        with self._lock:
            self.total = min(self.total, self._held)
            self.final = self.first + self.total - 1

    def published_rows(self, now: float | None = None) -> int:
        """Return how many packets are published: those the stream stored, once started."""
        if self.t0 is None:
            return 0
        return min(self._held, self.total)

    def due(self, row: int) -> float:
        """Return when row ``row`` is, or is expected to be, published (at ``rate``)."""
        now = time.monotonic()
        held = self._held
        return now if row < held else now + (row - held + 1) / self.rate

    def describe(self) -> str:
        """Return what it is, for the server's start-up line."""
        final = "(endless)" if self.endless else str(self.final)
        return (
            f"live from {hide_credentials(self.url)} as it grows (sequences {self.first}..{final}; "
            f"{self._held} held now)"
        )

    def prepare(self, row: int) -> None:
        """Nothing is built ahead: the stream's blocks arrive built."""

    def rows(self, lo: int, hi: int) -> memoryview:
        """Return the wire bytes of rows ``lo:hi`` (held: callers clamp)."""
        hi = min(hi, self._held)
        if lo >= hi:
            return memoryview(b"")
        starts, chunks = self._starts, self._chunks
        at = bisect.bisect_right(starts, lo) - 1
        parts: list[memoryview] = []
        while lo < hi:
            base = starts[at]
            chunk = memoryview(chunks[at])
            end = min(hi, base + len(chunk) // PACKET_SIZE)
            parts.append(chunk[(lo - base) * PACKET_SIZE : (end - base) * PACKET_SIZE])
            lo = end
            at += 1
        if len(parts) == 1:
            return parts[0]
        return memoryview(b"".join(parts))

    def close(self) -> None:
        """Stop following the stream."""
        self._tail.stop()

    def __repr__(self) -> str:
        return f"<GrowingFeed {self.url} at ~{self.rate:g}/s, {self.first}..{self.final}>"
