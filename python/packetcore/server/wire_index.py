"""The wire bytes of a served feed and the index from sequences to their rows.

Every answer of the server is a slice of these bytes or a selection from them.  A feed
of :class:`~packetcore.Packets` is encoded once; a :class:`~packetcore.io.feeds.MappedFeed`
is the file itself, mapped, and is never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
import numpy.typing as npt

from ..engine import PACKET_SIZE, decode, encode
from ..io.feeds import MappedFeed
from ..packets import Packets
from ..protocol import FeedInfo, encode_info

__all__ = ["WireIndex", "gather_spans"]


class WireIndex:
    """Hold a feed's wire bytes in sequence order and find the rows of sequence spans.

    A finished :class:`~packetcore.server.source.FeedSource`: all of it is there.
    """

    #: A finished feed publishes nothing.
    rate: None = None
    #: Nor does it go on for ever.
    endless = False
    #: Every packet it will ever have is there.
    ended = True

    def __init__(self, feed: Packets | MappedFeed) -> None:
        self._packets: Packets | None = None
        self._mapped: MappedFeed | None = None
        # The sequences of a feed with gaps; None when they run contiguously, as every
        # mapped feed's do, so that a span is located by arithmetic alone.
        self._sequences: npt.NDArray[np.int32] | None = None
        if isinstance(feed, MappedFeed):
            self._mapped = feed
            self.wire = feed.wire
            self.count = len(feed)
            self.first, self.last = feed.first, feed.last
            return
        if len(feed) == 0:
            raise ValueError("cannot serve an empty feed")
        # Checked with a byte a packet, sorted only when out of order: an argsort to
        # compare with arange costs two 8-byte indexes a packet (160 MB for 10 million).
        sequence = feed.sequence
        if not bool((sequence[1:] >= sequence[:-1]).all()):
            feed = feed[np.argsort(sequence, kind="stable")]
            sequence = feed.sequence
        if int(sequence[0]) < 1:
            raise ValueError(f"feed sequences start at 1 or above, not {int(sequence[0])}")
        self.wire = memoryview(encode(feed))
        self.count = len(feed)
        self.first, self.last = int(sequence[0]), int(sequence[-1])
        # The columns are not kept (the wire bytes are the feed: ``packets`` decodes them
        # if asked); a feed with gaps keeps its sequences, to locate spans.
        contiguous = self.last - self.first == self.count - 1
        if not (contiguous and bool((sequence[1:] > sequence[:-1]).all())):
            self._sequences = sequence

    @property
    def total(self) -> int:
        """Return how many packets it has: all it will ever have."""
        return self.count

    @property
    def final(self) -> int:
        """Return the last sequence."""
        return self.last

    def start(self) -> None:
        """Do nothing: a finished feed does not publish."""

    def describe(self) -> str:
        """Return what it is, for the server's start-up line."""
        mapped = ", mapped" if self.mapped else ""
        return f"{self.count} packets (sequences {self.first}..{self.last}{mapped})"

    @property
    def info(self) -> FeedInfo:
        """Return what a hello is answered with."""
        return FeedInfo(self.first, self.last)

    @cached_property
    def info_frame(self) -> bytes:
        """Return the hello's answer on the wire."""
        return encode_info(self.info)

    @property
    def packets(self) -> Packets:
        """Return the feed as packets (a mapped feed is decoded whole: small feeds only)."""
        if self._packets is None:
            self._packets = decode(self.wire)
        return self._packets

    @property
    def mapped(self) -> bool:
        """Return whether the bytes are a mapped file rather than encoded packets."""
        return self._mapped is not None

    def locate(self, start: int, stop: int) -> tuple[int, int]:
        """Return the row span of the sequences ``start <= seq < stop`` the feed has."""
        if self._sequences is None:
            size = self.count
            return (
                min(max(start - self.first, 0), size),
                min(max(stop - self.first, 0), size),
            )
        lo, hi = np.searchsorted(self._sequences, (start, stop), side="left")
        return int(lo), int(hi)

    def locate_many(
        self, starts: npt.NDArray[np.int64], stops: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return the row spans of many sequence spans at once, as :meth:`locate` does."""
        if self._sequences is None:
            return (
                np.clip(starts - self.first, 0, self.count),
                np.clip(stops - self.first, 0, self.count),
            )
        lo = np.searchsorted(self._sequences, starts, side="left").astype(np.int64)
        hi = np.searchsorted(self._sequences, stops, side="left").astype(np.int64)
        return lo, hi

    def rows(self, lo: int, hi: int) -> memoryview:
        """Return the wire bytes of rows ``lo:hi``, without copying.

        A mapped file is checked first (FeedError if it shrank): reading pages a
        truncation took away would kill the server.
        """
        if self._mapped is not None:
            self._mapped.check()
        return self.wire[lo * PACKET_SIZE : hi * PACKET_SIZE]


def gather_spans(
    rows: Callable[[int, int], memoryview],
    lo: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
) -> memoryview:
    """Return the wire bytes of the row spans ``lo[i]:hi[i]`` end to end, read by ``rows``.

    ``rows(lo, hi)`` is a feed's reader of one span (:meth:`WireIndex.rows`, or a live
    feed's).  Spans close together are cut out of one read of the rows around them; spans
    spread far apart are read one by one.
    """
    sizes = np.maximum(hi - lo, 0)
    total = int(sizes.sum())
    if total == 0:
        return memoryview(b"")
    low, high = int(lo[sizes > 0].min()), int(hi[sizes > 0].max())
    if high - low > 4 * total + 1024:
        spans = zip(lo.tolist(), hi.tolist(), strict=True)
        return memoryview(b"".join([rows(a, b) for a, b in spans if b > a]))
    # Row numbers of every span, end to end, relative to the window read.
    starts_at = np.cumsum(sizes) - sizes
    picks = np.arange(total, dtype=np.int64) + np.repeat(lo - low - starts_at, sizes)
    table = np.frombuffer(rows(low, high), dtype=np.uint8).reshape(-1, PACKET_SIZE)
    return memoryview(table[picks].reshape(-1))
