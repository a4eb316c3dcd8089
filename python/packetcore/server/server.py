"""The exchange server: the base protocol byte-exact, the extension, and a loss simulation.

:class:`Server` binds, accepts and stops as every :class:`~packetcore.net.service.Service`
does, and hands each connection, written through its own
:class:`~packetcore.server.connection.Connection`, to a
:class:`~packetcore.server.conversation.Conversation`, which answers from the feed's
source (:mod:`.source`: the wire bytes of a finished feed, a
:class:`~packetcore.server.wire_index.WireIndex`, or a live one) with the drops that the
:class:`~packetcore.server.loss.LossModel` decides.  A feed is :class:`~packetcore.Packets`,
encoded once, or a :class:`~packetcore.io.feeds.MappedFeed`, a ``.bin`` file served from
its mapping without a copy; :func:`feed_source` chooses its source, once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ..faults.model import FaultPlan
from ..faults.shaper import Shaper
from ..io.feeds import MappedFeed
from ..net.listener import peer_name
from ..net.service import Service
from ..packets import Packets
from ..protocol import DEFAULT_PORT, FeedInfo
from .connection import Connection
from .conversation import READ_SIZE, STREAM_CHUNK, Conversation
from .live import DEFAULT_MAX_BUFFER, DEFAULT_MAX_LAG, LiveFeed, Publisher
from .loss import LossModel
from .source import FeedSource
from .stats import ServerStats
from .wire_index import WireIndex

__all__ = ["STREAM_CHUNK", "Server", "ServerStats", "feed_source"]

log = logging.getLogger("packetcore.server")


def feed_source(
    feed: Packets | MappedFeed | FeedSource | None,
    *,
    live: float | None = None,
    until: int | None = None,
    seed: int | None = None,
) -> tuple[FeedSource, LiveFeed | None]:
    """Return what a server serves ``feed`` as, and the same as a live feed if it publishes.

    A source (a :class:`WireIndex`, a :class:`LiveFeed`) is served as it is, shared with
    other servers (the workers of one port: one encoding, one clock).  Packets or a mapped
    file are indexed; ``live`` (above 0) publishes them, or with no feed an endless
    synthetic one, at that rate up to ``until``.  No feed, not live: the reference book.
    """
    if live is not None and not (live >= 0 and live < float("inf")):
        raise ValueError(f"live must be a rate of 0 or more packets a second, not {live}")
    if isinstance(feed, LiveFeed):
        return feed, feed
    if until is not None and not live:
        raise ValueError("until needs a live feed (live above 0)")
    if feed is None and not live:
        from ..io.feeds import book

        feed = book()
    source = WireIndex(feed) if isinstance(feed, Packets | MappedFeed) else feed
    if not live:
        assert source is not None
        return source, None
    clock = LiveFeed(live, source, seed=seed, until=until)
    return clock, clock


class Server(Service):
    """Serve one feed over the base protocol and its extension.

    ``feed`` may be a :class:`~packetcore.server.wire_index.WireIndex` already built, shared
    with other servers (the workers of one port) without encoding the feed again.

    ``live=RATE`` (packets a second; None or 0: a finished feed) publishes the feed at
    that pace from the start (:mod:`.live`): with no feed, an endless synthetic one
    drawn from ``seed``; ``until`` is the last sequence published.  A
    :class:`~packetcore.server.live.LiveFeed` given as ``feed`` is served as it is, its clock
    shared (the workers of one port).  A subscriber more than ``max_lag`` seconds of
    packets behind (at least 1 MiB unsent) is disconnected, and so are the furthest
    behind while all subscribers' unsent bytes together would pass ``max_buffer``.
    """

    kind = "server"
    read_limit = READ_SIZE

    def __init__(
        self,
        feed: Packets | MappedFeed | FeedSource | None = None,
        *,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        drop: float = 0.25,
        drop_resends: float = 0.0,
        keep_last: bool = False,
        seed: int | None = None,
        idle_timeout: float = 30.0,
        max_connections: int = 1024,
        reuse_port: bool = False,
        live: float | None = None,
        until: int | None = None,
        max_lag: float = DEFAULT_MAX_LAG,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        faults: FaultPlan | None = None,
    ) -> None:
        source, clock = feed_source(feed, live=live, until=until, seed=seed)
        self.loss = LossModel(drop, drop_resends, keep_last, seed)
        super().__init__(host, port, backlog=max(128, max_connections), reuse_port=reuse_port)
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        #: What the conversations answer from.
        self.index = source
        self.drop = self.loss.drop
        self.drop_resends = self.loss.drop_resends
        self.keep_last = keep_last
        self.seed = seed
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.stats = ServerStats()
        #: Writes a live feed to its subscribers; None for a finished feed.
        self.publisher = (
            None if clock is None else Publisher(clock, self.stats, max_lag, max_buffer)
        )
        #: What a hostile network does to each connection's answers (None: nothing).
        self.faults = faults
        self._accepted = 0

    @property
    def feed(self) -> Packets:
        """Return the feed as packets (a mapped feed is decoded whole: small feeds only)."""
        return self.index.packets

    @property
    def published(self) -> int:
        """Return the highest sequence published so far (a finished feed's last)."""
        return self.index.last

    @property
    def live(self) -> LiveFeed | None:
        """Return the live feed served, None for a finished one."""
        return None if self.publisher is None else self.publisher.feed

    @property
    def info(self) -> FeedInfo:
        """Return what a hello is answered with."""
        return self.index.info

    # -- lifecycle ----------------------------------------------------------------------

    def _listening(self) -> None:
        index = self.index
        log.debug("loss seed entropy %d", self.loss.entropy)
        index.start()
        log.info(
            "serving %s on %s port %d (%s); drop %g, resends %g%s",
            index.describe(), self.host, self.port,
            ", ".join(str(address[0]) for address in self._bound),
            self.drop, self.drop_resends, ", last packet kept" if self.keep_last else "",
        )  # fmt: skip
        if self.publisher is None and index.first != 1:
            # Served anyway: extended clients learn the first sequence from the hello.
            log.warning(
                "the feed starts at sequence %d, not 1: base-protocol clients expect "
                "sequences from 1 and cannot fetch it whole; only extended (packetcore) "
                "clients can",
                index.first,
            )

    def _closing(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()

    def _closed(self) -> None:
        log.debug("stopped: %s", self.stats.summary())

    def thread_name(self) -> str:
        """Return the name of the thread that :meth:`start` runs it in."""
        return f"packetcore-serve:{self.port}"

    def __repr__(self) -> str:
        return f"<Server {self.host} port {self.port}, {self.index.count} packets>"

    # -- connections ----------------------------------------------------------------------

    def _faults(self, number: int) -> tuple[Shaper | None, np.random.Generator | None]:
        """Return how connection ``number``'s answers are shaped by the faults, if at all."""
        if self.faults is None:
            return None, None
        faults = self.faults.faults_for(number, time.monotonic() - self._started_at)
        if not faults.active:
            return None, None
        rng = self.faults.rng(number)
        return Shaper(faults, rng, self.stats.faults, self.faults.ledger), rng

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        if not self._stopping and len(self._tasks) < self.max_connections:
            return True
        self.stats.refused += 1
        log.warning(
            "refused %s: %d connections open (max_connections %d)",
            peer_name(writer), len(self._tasks), self.max_connections,
        )  # fmt: skip
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._accepted
        self._accepted += 1
        shaper, rng = self._faults(number)
        connection = Connection(reader, writer, self.stats, self.idle_timeout, shaper, rng)
        await Conversation(
            number, connection, self.index, self.loss, self.stats, self.publisher
        ).run()
