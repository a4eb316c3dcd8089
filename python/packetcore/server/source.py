"""What a server asks of the feed it serves: a finished one, or one published live.

:class:`FeedSource` is what a conversation, a subscription and the server's start-up
use of a feed; :class:`~packetcore.server.wire_index.WireIndex` (a finished feed: all of
it is there) and :class:`~packetcore.server.live.LiveFeed` (published by a clock) are
its two kinds.  The server chooses one once, in
:func:`~packetcore.server.server.feed_source`; nothing else asks which kind it has.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..packets import Packets
from ..protocol import FeedInfo

__all__ = ["FeedSource"]


class FeedSource(Protocol):
    """A feed's wire bytes by row, and the index from its sequences to their rows.

    Row k holds sequence ``first + k`` (a finished feed with gaps excepted: ``locate``
    knows).  What is answerable now (``count``, ``last``) may grow, up to ``total``.
    """

    @property
    def first(self) -> int:
        """The first sequence."""

    @property
    def count(self) -> int:
        """How many packets can be answered now."""

    @property
    def last(self) -> int:
        """The highest sequence answerable now (``first - 1`` before any)."""

    @property
    def total(self) -> int:
        """How many packets there will ever be."""

    @property
    def final(self) -> int:
        """The last sequence there will ever be."""

    @property
    def endless(self) -> bool:
        """Whether it goes on for ever (in practice: to sequence 2**31 - 1)."""

    @property
    def ended(self) -> bool:
        """Whether every packet it will ever have is answerable now."""

    @property
    def rate(self) -> float | None:
        """Packets published a second; None for a finished feed."""

    @property
    def mapped(self) -> bool:
        """Whether its bytes are a mapped file."""

    @property
    def info(self) -> FeedInfo:
        """What a hello is answered with now."""

    @property
    def info_frame(self) -> bytes:
        """The hello's answer on the wire now."""

    @property
    def packets(self) -> Packets:
        """The packets answerable now, decoded (small feeds only)."""

    def start(self) -> None:
        """Start publishing, if it publishes; idempotent."""

    def describe(self) -> str:
        """Return what it is, for the server's start-up line."""

    def locate(self, start: int, stop: int) -> tuple[int, int]:
        """Return the row span of the answerable sequences ``start <= seq < stop``."""

    def locate_many(
        self, starts: npt.NDArray[np.int64], stops: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return the row spans of many sequence spans at once, as :meth:`locate` does."""

    def rows(self, lo: int, hi: int) -> memoryview:
        """Return the wire bytes of rows ``lo:hi``, without copying where it can."""
