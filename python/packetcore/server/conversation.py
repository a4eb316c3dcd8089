"""One connection's conversation: frame its requests, answer them in order, count it all.

A conversation waits for every chunk to be taken before the next, so a slow reader
holds at most a chunk of the stream in memory.  It reads and writes through its
:class:`~packetcore.server.connection.Connection`, which counts the bytes and closes a
client that idles for ``idle_timeout``.  Every packet it sends, resends or drops is
counted once, by :meth:`Conversation._count`, into its own tally and the server's stats.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..engine import MAX_SEQUENCE
from ..errors import FeedError
from ..protocol import (
    HELLO,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    SUBSCRIBE,
    SUBSCRIBE_CLOCK,
    Request,
    RequestFramer,
)
from .connection import Connection
from .live import Publisher, Subscription
from .loss import LossModel
from .source import FeedSource
from .stats import ServerStats
from .wire_index import gather_spans

__all__ = ["STREAM_CHUNK", "Conversation", "ServerStats"]

log = logging.getLogger("packetcore.server")

#: Packets selected and written per step of a stream: about 1.1 MB of wire bytes.
STREAM_CHUNK = 1 << 16
#: Request bytes read per step; with the framer's tail, all a connection buffers.
READ_SIZE = 1 << 16
#: Answers to small requests are gathered up to this size before one write.
_FLUSH_SIZE = 1 << 16
#: How many resent sequences one log line names before it summarizes.
_LOG_EACH = 8


@dataclass
class _Tally:
    """What one connection was sent, resent and denied."""

    sent: int = 0
    resent: int = 0
    dropped: int = 0
    resent_log: list[int] = field(default_factory=list)


class Conversation:
    """Answer one connection's requests in order, counting what it sends and drops."""

    def __init__(
        self,
        number: int,
        connection: Connection,
        index: FeedSource,
        loss: LossModel,
        stats: ServerStats,
        publisher: Publisher | None = None,
    ) -> None:
        self.number = number
        self.connection = connection
        self.peer = connection.peer
        #: Whether the server reset the connection (a subscriber dropped): nothing to close.
        self.cut = False
        self._index = index
        self._loss = loss
        self._stats = stats
        self._tally = _Tally()
        self._resend_rng = loss.resend_rng(number)
        self._publisher = publisher
        self._requests = 0  # requests framed so far

    @property
    def timed_out(self) -> bool:
        """Return whether the connection was closed for idling."""
        return self.connection.timed_out

    async def run(self) -> None:
        """Converse until the client is done or gone, then close; never raise."""
        stats = self._stats
        stats.connections += 1
        stats.active += 1
        log.info("client connected: %s", self.peer)
        try:
            await self._converse()
            await self._close()
        except asyncio.CancelledError:
            # stop() cancelled it.  Not re-raised: Python 3.11's streams log a cancelled
            # handler task as an error, and stop() only waits for the task to end.
            # A reset: an end of file would say that the answer (the feed) ended.
            self.connection.reset()
        except OSError as exc:
            # ConnectionError, or what a socket says when the faults' delivery writes to
            # it after the peer left (ENOTCONN on the end of file, ...): the peer is gone.
            if not self.timed_out:
                log.info("connection to %s lost: %s", self.peer, exc)
            self.connection.abort()
        except FeedError as exc:
            # The mapped feed file shrank under the server: this answer cannot be given.
            log.error("cannot serve %s: %s", self.peer, exc)
            self.connection.reset()
        except Exception:
            # A bug must cost one connection, never the server.
            log.exception("internal error serving %s", self.peer)
            self.connection.reset()
        finally:
            self.connection.cancel()
            stats.active -= 1
            if self.timed_out:
                stats.timeouts += 1
                log.warning("closed %s: idle for %gs", self.peer, self.connection.idle_timeout)
            tally = self._tally
            log.info(
                "client disconnected: %s (%d packets sent, %d resent, %d dropped)",
                self.peer, tally.sent, tally.resent, tally.dropped,
            )  # fmt: skip

    def _count(self, *, sent: int = 0, resent: int = 0, dropped: int = 0) -> None:
        """Count packets into the connection's tally and the server's stats."""
        tally, stats = self._tally, self._stats
        tally.sent += sent
        tally.resent += resent
        tally.dropped += dropped
        stats.packets_sent += sent
        stats.packets_resent += resent
        stats.packets_dropped += dropped

    async def _converse(self) -> None:
        framer = RequestFramer()
        while True:
            data = await self.connection.read(READ_SIZE)
            if not data:
                # Half-close: everything received has been answered; close our side.
                if framer.pending and not self.timed_out:
                    log.info("%s closed with an incomplete request pending", self.peer)
                return
            if not await self._answer(framer.feed(data)):
                return

    async def _close(self) -> None:
        if self.timed_out or self.cut:
            return
        await self.connection.close()

    async def _flush(self, out: bytearray) -> None:
        if out:
            data = bytes(out)
            out.clear()
            await self.connection.write(data)

    # -- requests -----------------------------------------------------------------------------

    async def _answer(self, requests: list[Request]) -> bool:
        """Answer ``requests`` in order; return False when the connection must close."""
        out = bytearray()
        # Pipelined range requests (a client repairing many small gaps sends thousands at
        # once) are answered together, in order, before the next request of another kind.
        ranges: list[Request] = []
        try:
            for request in requests:
                self._requests += 1
                kind = request.call_type
                if not self.connection.request(request):
                    # The faults close the connection at this request: what was
                    # answered before it goes out first, nothing after.
                    if ranges:
                        await self._resend_ranges(ranges, out)
                    await self._flush(out)
                    log.info(
                        "closing %s at request %d, as its faults say", self.peer, self._requests
                    )
                    return False
                if kind == RESEND_RANGE:
                    ranges.append(request)
                    continue
                if ranges:
                    await self._resend_ranges(ranges, out)
                if kind == RESEND:
                    self._resend(request.start, out)
                elif kind == HELLO:
                    out += self._index.info_frame
                    log.debug("hello from %s", self.peer)
                elif kind == STREAM_ALL:
                    await self._flush(out)
                    await self._stream_all()
                    return False
                elif kind == SUBSCRIBE:
                    # The connection is a subscription from now on: later requests unread.
                    await self._flush(out)
                    if request.start > MAX_SEQUENCE:
                        # No packet can carry such a sequence: the subscription would wait
                        # for ever, silent.  A bad request; the connection closes (nothing
                        # will ever come from there).
                        self._stats.bad_requests += 1
                        log.warning(
                            "%s subscribed from %d, beyond any sequence (%d): closed",
                            self.peer, request.start, MAX_SEQUENCE,
                        )  # fmt: skip
                        return False
                    await self._subscribe(
                        request.start, clock=bool(request.flags & SUBSCRIBE_CLOCK)
                    )
                    return False
                else:
                    # The reference exchange ignores an unknown callType and reads on.
                    self._stats.bad_requests += 1
                    log.debug("ignored unknown callType %d from %s", kind, self.peer)
                if len(out) >= _FLUSH_SIZE:
                    await self._flush(out)
            if ranges:
                await self._resend_ranges(ranges, out)
            await self._flush(out)
            return True
        finally:
            self._log_resends()

    def _log_resends(self) -> None:
        sequences = self._tally.resent_log
        if not sequences:
            return
        if len(sequences) <= _LOG_EACH:
            for sequence in sequences:
                log.info("packet resent: %d to %s", sequence, self.peer)
        else:
            log.info(
                "packets resent: %d (%d..%d) to %s",
                len(sequences), min(sequences), max(sequences), self.peer,
            )  # fmt: skip
        sequences.clear()

    async def _stream_all(self) -> None:
        loss, index = self._loss, self._index
        rng = loss.stream_rng(self._stats.streams)
        self._stats.streams += 1
        total = index.count
        sent = 0
        for lo in range(0, total, STREAM_CHUNK):
            hi = min(lo + STREAM_CHUNK, total)
            chunk, kept = loss.select(
                index.rows(lo, hi), rng, loss.drop, loss.keep_last and hi == total
            )
            if kept:
                await self.connection.write(chunk)
            sent += kept
            self._count(sent=kept, dropped=hi - lo - kept)
        log.info("packets sent: %d of %d to %s (%d dropped)", sent, total, self.peer, total - sent)

    async def _subscribe(self, start: int, *, clock: bool = False) -> None:
        """Write every packet from ``start`` as it is published; return once the feed ends.

        ``clock``: the subscriber asked for the live feed's clock frame first.
        """
        number = self._stats.subscriptions
        self._stats.subscriptions += 1
        subscription = Subscription(
            self._index, self._loss, number, start, self.connection, self._count
        )
        log.info("subscription %d from sequence %d: %s", number, start, self.peer)
        publisher = self._publisher
        try:
            if clock and publisher is not None and publisher.feed.clocked:
                await self.connection.write(publisher.feed.clock_frame)
            if publisher is None:
                # A finished feed is all backlog, paced by the reader.
                await subscription.backlog()
                return
            if self.connection.delivery is not None:
                # Faults shape this connection's bytes: it is written on its own clock.
                await publisher.follow(subscription)
                return
            # Backlog first, paced by the reader, then the publisher's batches.
            await publisher.backlog(subscription)
            feed = publisher.feed
            if subscription.cut or (subscription.next >= feed.total and feed.ended):
                return
            # From beyond the final packet too: the end of file waits for the feed's end.
            publisher.add(subscription)
            await subscription.done
        except asyncio.CancelledError:
            subscription.reset()  # the server stops: never an end of file, "the feed ended"
            raise
        finally:
            self.cut = subscription.cut
            if publisher is not None:
                publisher.discard(subscription)

    def _resend(self, sequence: int, out: bytearray) -> None:
        index = self._index
        lo, hi = index.locate(sequence, sequence + 1)
        if lo == hi:
            self._stats.bad_requests += 1
            log.warning(
                "%s asked for packet %d, which the feed (%d..%d) lacks: nothing sent",
                self.peer, sequence, index.first, index.last,
            )  # fmt: skip
            return
        rng = self._resend_rng
        if rng is not None and rng.random() < self._loss.drop_resends:
            self._count(dropped=1)
            log.debug("resend of packet %d to %s dropped", sequence, self.peer)
            return
        out += index.rows(lo, hi)
        self._count(resent=1)
        self._tally.resent_log.append(sequence)

    async def _resend_ranges(self, requests: list[Request], out: bytearray) -> None:
        """Answer a run of range requests in order, then empty ``requests``.

        Small ranges are gathered together, a batch of up to STREAM_CHUNK packets at a
        time (one index lookup, one loss draw, one count for thousands of requests); a
        range larger than that is answered on its own, chunk by chunk.
        """
        count = len(requests)
        starts = np.fromiter((r.start for r in requests), dtype=np.int64, count=count)
        stops = starts + np.fromiter((r.count for r in requests), dtype=np.int64, count=count)
        requests.clear()
        lo, hi = self._index.locate_many(starts, stops)
        sizes = hi - lo
        packets = np.cumsum(sizes)  # packets in the spans up to and including each
        # Batches end where the packets so far pass STREAM_CHUNK, and around a large range.
        at = 0
        while at < count:
            if sizes[at] > STREAM_CHUNK:
                await self._resend_range(int(starts[at]), int(stops[at] - starts[at]), out)
                at += 1
                continue
            before = int(packets[at] - sizes[at])
            end = int(np.searchsorted(packets, before + STREAM_CHUNK, side="right"))
            self._resend_batch(starts[at:end], stops[at:end], lo[at:end], hi[at:end], out)
            if len(out) >= _FLUSH_SIZE:
                await self._flush(out)
            at = end

    def _resend_batch(
        self,
        starts: npt.NDArray[np.int64],
        stops: npt.NDArray[np.int64],
        lo: npt.NDArray[np.int64],
        hi: npt.NDArray[np.int64],
        out: bytearray,
    ) -> None:
        loss = self._loss
        rows = gather_spans(self._index.rows, lo, hi)
        chunk, kept = loss.select(rows, self._resend_rng, loss.drop_resends)
        out += chunk
        total = int((hi - lo).sum())
        self._count(resent=kept, dropped=total - kept)
        if len(starts) == 1:
            log.info(
                "packets resent: %d of range %d+%d to %s (%d in the feed)",
                kept, int(starts[0]), int(stops[0] - starts[0]), self.peer, total,
            )  # fmt: skip
        else:
            log.info(
                "packets resent: %d of %d ranges within %d..%d to %s (%d in the feed)",
                kept, len(starts), int(starts[0]), int(stops.max()) - 1, self.peer, total,
            )  # fmt: skip

    async def _resend_range(self, start: int, count: int, out: bytearray) -> None:
        loss, index = self._loss, self._index
        lo, hi = index.locate(start, start + count)
        sent = 0
        for at in range(lo, hi, STREAM_CHUNK):
            end = min(at + STREAM_CHUNK, hi)
            chunk, kept = loss.select(index.rows(at, end), self._resend_rng, loss.drop_resends)
            if len(out) + chunk.nbytes <= _FLUSH_SIZE:
                out += chunk
            else:
                await self._flush(out)
                await self.connection.write(chunk)
            sent += kept
            self._count(resent=kept, dropped=end - at - kept)
        log.info(
            "packets resent: %d of range %d+%d to %s (%d in the feed)",
            sent, start, count, self.peer, hi - lo,
        )  # fmt: skip
