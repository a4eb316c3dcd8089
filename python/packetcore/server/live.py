"""Live feeds: packets published by a clock, and the subscriptions that follow them.

A :class:`LiveFeed` publishes at ``rate`` packets a second from a start time ``t0``:
the packet of row k (sequence ``first + k``) is published at ``t0 + k / rate``.  What
is published is a pure function of the clock, so server processes forked after ``t0``
is chosen all publish the same packets at the same moments.  It answers the requests a
:class:`~packetcore.server.wire_index.WireIndex` answers, clamped to what is published.

Without a source, the feed is synthetic and endless (or ends at ``until``): packets are
generated in blocks of :data:`BLOCK` from ``(seed, block number)``, so an old block a
resend asks for is generated again rather than kept.  The block after the one being
published is built ahead, a column at each of the publisher's wake-ups
(:meth:`LiveFeed.prepare`), so that no wake-up stalls for a whole block.  With a source (any feed a
WireIndex holds, a mapped ``.bin`` included) the feed is replayed at that pace and ends
after its last packet.

A :class:`Publisher` wakes every few milliseconds on the server's loop and writes each
subscriber's share of the batch just published as one write, never waiting for it: a
subscriber whose unsent bytes pass its bound is disconnected, and the others never slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from .. import engine
from ..engine import MAX_SEQUENCE, PACKET_SIZE, decode, gather
from ..errors import FeedError
from ..io.feeds import SYMBOLS
from ..packets import Packets
from ..protocol import FeedClock, FeedInfo, encode_clock, encode_info
from ..seeds import Kind, Streams
from .loss import LossModel
from .source import FeedSource

if TYPE_CHECKING:
    from .connection import Connection
    from .stats import ServerStats

__all__ = [
    "BLOCK",
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MAX_LAG",
    "TICK",
    "LiveFeed",
    "Publisher",
    "Subscription",
    "shortest_wait",
]

log = logging.getLogger("packetcore.server")

#: Packets generated (synthetic feed) and selected (loss masks) per block.
BLOCK = 1 << 16
#: Seconds between the publisher's wake-ups while anyone subscribes.
TICK = 0.0005
#: Seconds of packets a subscriber may fall behind before it is disconnected.
DEFAULT_MAX_LAG = 2.0
#: The smallest bound on a subscriber's unsent bytes, whatever the rate.
MIN_LAG_BYTES = 1 << 20
#: The default bound on the unsent bytes of all subscribers together.
DEFAULT_MAX_BUFFER = 256 << 20
#: Bytes written per wake-up at most: the rest wait for the next one (soon), so that the
#: loop answers a hello in milliseconds however many subscribers there are.
_TICK_BYTES = 2 << 20
#: A subscriber is written at most this many wake-ups' packets in one.
_TICKS_PER_WRITE = 8
#: A subscriber catching up hands over to the publisher with fewer packets than this left.
_CATCH_UP = 4096
#: Synthetic blocks kept in memory (about 1.1 MB each); older ones are generated again.
_CACHED_BLOCKS = 8

_WIRE = np.dtype(
    [("symbol", "S4"), ("side", "S1"), ("quantity", ">i4"), ("price", ">i4"), ("sequence", ">i4")]
)
assert _WIRE.itemsize == PACKET_SIZE
_SYMBOL_ARRAY = np.array(SYMBOLS, dtype="S4")
_SIDE_ARRAY = np.array(["B", "S"], dtype="S1")


class LiveFeed:
    """A feed published at ``rate`` packets a second: a :class:`~.source.FeedSource` that grows."""

    #: Whether publication follows the clock (a subscription may ask for its frame).
    clocked = True

    def __init__(
        self,
        rate: float,
        source: FeedSource | None = None,
        *,
        seed: int | None = None,
        until: int | None = None,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"a live rate must be above 0 packets a second, not {rate}")
        self.rate = float(rate)
        self.source = source
        if source is None:
            self.first = 1
            final = MAX_SEQUENCE
        else:
            if source.count != source.last - source.first + 1:
                raise ValueError("a live replay needs a feed whose sequences run contiguously")
            self.first = source.first
            final = source.last
        if until is not None:
            if until < self.first:
                raise ValueError(f"until must be {self.first} or above (the first), not {until}")
            final = min(final, until)
        self.until = until
        #: The last sequence this feed will ever publish.
        self.final = final
        #: Whether the feed goes on for ever (in practice: to sequence 2**31 - 1).
        self.endless = source is None and until is None
        #: How many packets it publishes in all.
        self.total = final - self.first + 1
        self.streams = Streams(seed)
        self.t0: float | None = None
        #: ``t0`` in nanoseconds since the Unix epoch (the clock frame's time).
        self.epoch_ns: int | None = None
        self._blocks: OrderedDict[int, memoryview] = OrderedDict()
        #: The block built ahead, a step at a time: its number and its steps.
        self._ahead: tuple[int, Generator[None, None, memoryview]] | None = None
        self._ahead_lock = threading.Lock()

    def start(self, t0: float | None = None) -> None:
        """Start the clock (at ``t0``, a :func:`time.monotonic` time, or now); idempotent."""
        if self.t0 is None:
            now, wall = time.monotonic(), time.time_ns()
            self.t0 = now if t0 is None else t0
            # The same moment on the wall clock, which other processes and hosts share.
            self.epoch_ns = wall - round((now - self.t0) * 1e9)

    def published_rows(self, now: float | None = None) -> int:
        """Return how many packets are published at ``now`` (default: the present)."""
        if self.t0 is None:
            return 0
        at = time.monotonic() if now is None else now
        if at < self.t0:
            return 0
        return min(math.floor((at - self.t0) * self.rate) + 1, self.total)

    def due(self, row: int) -> float:
        """Return the monotonic time at which row ``row`` is published."""
        assert self.t0 is not None, "the live feed is not started"
        return self.t0 + row / self.rate

    @property
    def clock(self) -> FeedClock:
        """Return when each sequence is published, as a clock frame says it."""
        assert self.epoch_ns is not None, "the live feed is not started"
        return FeedClock(self.first, self.final, self.epoch_ns, self.rate)

    @property
    def clock_frame(self) -> bytes:
        """Return the clock frame on the wire."""
        return encode_clock(self.clock)

    @property
    def ended(self) -> bool:
        """Return whether the final packet is published."""
        return self.published_rows() >= self.total

    def describe(self) -> str:
        """Return what it is, for the server's start-up line."""
        what = "synthetic" if self.source is None else "replay"
        final = "(endless)" if self.endless else str(self.final)
        return f"live at {self.rate:g} packets/s ({what}, sequences {self.first}..{final})"

    # -- what a WireIndex answers, clamped to what is published ---------------------------

    @property
    def count(self) -> int:
        """Return how many packets are published now."""
        return self.published_rows()

    @property
    def last(self) -> int:
        """Return the highest sequence published now (``first - 1`` before the first)."""
        return self.first + self.published_rows() - 1

    @property
    def mapped(self) -> bool:
        """Return whether the replayed feed is a mapped file."""
        return self.source is not None and self.source.mapped

    @property
    def info(self) -> FeedInfo:
        """Return what a hello is answered with now."""
        return FeedInfo(self.first, self.last)

    @property
    def info_frame(self) -> bytes:
        """Return the hello's answer on the wire now."""
        return encode_info(self.info)

    @property
    def packets(self) -> Packets:
        """Return the packets published so far (decoded whole: small feeds only)."""
        return decode(self.rows(0, self.published_rows()))

    def locate(self, start: int, stop: int) -> tuple[int, int]:
        """Return the row span of the published sequences ``start <= seq < stop``."""
        size = self.published_rows()
        return (
            min(max(start - self.first, 0), size),
            min(max(stop - self.first, 0), size),
        )

    def locate_many(
        self, starts: npt.NDArray[np.int64], stops: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return the row spans of many sequence spans at once, as :meth:`locate` does."""
        size = self.published_rows()
        return np.clip(starts - self.first, 0, size), np.clip(stops - self.first, 0, size)

    def rows(self, lo: int, hi: int) -> memoryview:
        """Return the wire bytes of rows ``lo:hi`` (published or not: callers clamp)."""
        if self.source is not None:
            return self.source.rows(lo, hi)
        hi = min(hi, self.total)
        parts: list[memoryview] = []
        while lo < hi:
            number = lo // BLOCK
            base = number * BLOCK
            end = min(hi, base + BLOCK)
            parts.append(
                self._block(number)[(lo - base) * PACKET_SIZE : (end - base) * PACKET_SIZE]
            )
            lo = end
        if len(parts) == 1:
            return parts[0]
        return memoryview(b"".join(parts))

    def prepare(self, row: int) -> None:
        """Take one step of building the synthetic block after row ``row``'s, if not built."""
        number = row // BLOCK + 1
        if self.source is not None or number * BLOCK >= self.total or number in self._blocks:
            return
        if not self._ahead_lock.acquire(blocking=False):
            return  # another thread steps it
        try:
            if self._ahead is None or self._ahead[0] != number:
                self._ahead = (number, self._build(number))
            try:
                next(self._ahead[1])
            except StopIteration as built:
                self._ahead = None
                self._keep(number, built.value)
        finally:
            self._ahead_lock.release()

    def _block(self, number: int) -> memoryview:
        blocks = self._blocks
        block = blocks.get(number)
        # KeyError: servers in other threads may share this feed and its cache.
        if block is not None:
            with contextlib.suppress(KeyError):
                blocks.move_to_end(number)
            return block
        with self._ahead_lock:
            ahead, steps = self._ahead or (None, None)
            if ahead == number and steps is not None:
                self._ahead = None  # wanted now: its remaining steps at once
                data = _finish(steps)
            else:
                data = self._generate(number)
        self._keep(number, data)
        return data

    def _keep(self, number: int, block: memoryview) -> None:
        blocks = self._blocks
        blocks[number] = block
        while len(blocks) > _CACHED_BLOCKS:
            with contextlib.suppress(KeyError):
                blocks.popitem(last=False)

    def _generate(self, number: int) -> memoryview:
        """Return the wire bytes of synthetic block ``number``, drawn from (seed, number)."""
        return _finish(self._build(number))

    def _build(self, number: int) -> Generator[None, None, memoryview]:
        """Build synthetic block ``number`` a column a step; return its wire bytes (uncopied)."""
        lo = number * BLOCK
        # Every block is drawn whole, the last of a feed with an end too, then cut: the
        # same seed publishes the same packets whether the feed ends or not.
        size = BLOCK
        rng = self.streams.for_(Kind.FEED_BLOCKS, number)
        records = np.empty(size, dtype=_WIRE)
        # Whole columns, as feeds.synthetic draws them: no Python work per packet.
        symbols = rng.integers(0, len(SYMBOLS), size, dtype=np.uint8)
        yield
        records["symbol"] = _SYMBOL_ARRAY[symbols]
        yield
        records["side"] = _SIDE_ARRAY[rng.integers(0, 2, size, dtype=np.int8)]
        yield
        records["quantity"] = rng.integers(1, 10_000, size, dtype=np.int32, endpoint=True)
        records["price"] = rng.integers(1, 1_000_000, size, dtype=np.int32, endpoint=True)
        yield
        start = self.first + lo
        records["sequence"] = np.arange(start, start + size, dtype=np.int64)
        return records[: min(BLOCK, self.total - lo)].view(np.uint8).data

    def __repr__(self) -> str:
        what = "synthetic" if self.source is None else "replay"
        return f"<LiveFeed {what} at {self.rate:g}/s, {self.first}..{self.final}>"


def _finish(steps: Generator[None, None, memoryview]) -> memoryview:
    """Run the remaining ``steps`` of a block's building; return its bytes."""
    while True:
        try:
            next(steps)
        except StopIteration as built:
            block: memoryview = built.value
            return block


class Subscription:
    """One subscriber: the rows it still needs, its keep masks, its connection."""

    def __init__(
        self,
        feed: FeedSource,
        loss: LossModel,
        number: int,
        start: int,
        connection: Connection,
        count: Callable[..., None],
    ) -> None:
        """``start`` is the first sequence asked for; ``count(...)`` tallies what is sent."""
        self.feed = feed
        self.number = number
        #: The subscriber's connection: all its bytes are written, and counted, there.
        self.connection = connection
        self.peer = connection.peer
        #: The next row to write.
        self.next = min(max(start - feed.first, 0), feed.total)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: ``count(sent=, dropped=)`` tallies the packets sent and dropped.
        self.count = count
        self._drop = loss.drop
        self._keep_last = loss.keep_last
        self._rng = loss.subscription_rng(number)
        self._chunk = -1
        self._mask: npt.NDArray[np.bool_] = np.ones(0, dtype=bool)
        #: Whether the server cut the connection (a reset): the conversation closes nothing.
        self.cut = False

    def keep(self, lo: int, hi: int) -> npt.NDArray[np.bool_] | None:
        """Return the keep flags of rows ``lo:hi``; None when nothing drops.

        Row r's flag depends on r alone, as in a stream-all from the first row: a mask
        is drawn per block of :data:`BLOCK` rows, the generator jumped to its block.
        """
        rng = self._rng
        if rng is None:
            return None
        parts: list[npt.NDArray[np.bool_]] = []
        at = lo
        while at < hi:
            chunk = at // BLOCK
            if chunk != self._chunk:
                # keep_mask takes BLOCK / 4 raw draws per block: skip the blocks between.
                skipped = chunk - self._chunk - 1
                if skipped > 0:
                    cast(np.random.PCG64, rng.bit_generator).advance(skipped * BLOCK // 4)
                elif skipped < 0:
                    raise AssertionError("a subscription never goes back")
                self._mask = LossModel.keep_mask(rng, BLOCK, self._drop)
                self._chunk = chunk
            base = chunk * BLOCK
            end = min(hi, base + BLOCK)
            parts.append(self._mask[at - base : end - base])
            at = end
        flags = parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
        if self._keep_last and hi == self.feed.total and len(flags) and not self.feed.endless:
            flags[-1] = True
        return flags

    def select(self, lo: int, hi: int, rows: memoryview) -> tuple[bytes | memoryview, int]:
        """Return the kept wire bytes of rows ``lo:hi`` (``rows``) and how many were kept."""
        flags = self.keep(lo, hi)
        if flags is None:
            return rows, hi - lo
        kept = int(np.count_nonzero(flags))
        if engine.implementation == "cython":
            return gather(rows, flags), kept  # a tenth of numpy's time for a batch
        # The twin's gather works per packet: numpy's boolean index does it in C.
        packets = np.frombuffer(rows, dtype=np.uint8).reshape(-1, PACKET_SIZE)
        return packets[flags].tobytes(), kept

    async def backlog(self, *, every: bool = False) -> None:
        """Write what is published already, a block at a time, waiting for each to drain.

        Returns with a few packets left to catch up, if any (the publisher writes them),
        unless ``every`` asks for all of them.
        """
        feed = self.feed
        catch_up = 1 if every else _CATCH_UP
        while True:
            published = feed.count
            left = published - self.next
            # A feed still publishing: the last bit is the publisher's, in its next batch.
            if left <= 0 or (left < catch_up and not feed.ended):
                return
            lo = self.next
            # To the end of lo's block: a synthetic block's bytes are then sent uncopied.
            hi = min(published, (lo // BLOCK + 1) * BLOCK)
            data, kept = self.select(lo, hi, feed.rows(lo, hi))
            self.next = hi
            self.count(sent=kept, dropped=hi - lo - kept)
            if kept:
                await self.connection.write(data)

    def send(self, hi: int, data: bytes | memoryview, kept: int) -> None:
        """Write rows ``next:hi``, of which ``data`` (from :meth:`select`) is what is kept."""
        lo = self.next
        self.next = hi
        self.count(sent=kept, dropped=hi - lo - kept)
        if kept:
            self.connection.push(data)  # never waited for: the publisher bounds the unsent

    @property
    def unsent(self) -> int:
        """Return the bytes written to the connection that its socket has not taken yet."""
        return self.connection.unsent

    def end(self) -> None:
        """Let the subscriber's conversation go on to close the connection."""
        if not self.done.done():
            self.done.set_result(None)

    def reset(self) -> None:
        """Cut the connection with a reset and end; take back the count of what was unsent.

        Never an end of file, which says the feed ended.
        """
        if not self.cut:
            self.cut = True
            # Whole kept packets never handed to the kernel: the client never gets them.
            unsent = self.connection.reset()
            self.count(sent=-(unsent // PACKET_SIZE))
        self.end()


def shortest_wait(loop: asyncio.AbstractEventLoop) -> float:
    """Return the shortest wait between wake-ups on ``loop``: :data:`TICK`, or a whole
    millisecond on a loop that is not asyncio's own.

    asyncio's loop rounds a timer up to its clock's resolution; uvloop (libuv) rounds it
    down to whole milliseconds, so that a TICK of half of one would be no wait at all,
    and the publisher would spin a core.
    """
    return TICK if isinstance(loop, asyncio.BaseEventLoop) else max(TICK, 0.001)


class Publisher:
    """Write what a :class:`LiveFeed` publishes to its subscribers, on a timer."""

    def __init__(
        self,
        feed: LiveFeed,
        stats: ServerStats,
        max_lag: float = DEFAULT_MAX_LAG,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if not max_lag > 0:
            raise ValueError(f"max_lag must be above 0 seconds, not {max_lag}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be 1 byte or more, not {max_buffer}")
        self.feed = feed
        self.max_lag = max_lag
        #: Unsent bytes past which a subscriber is disconnected.
        self.bound = max(MIN_LAG_BYTES, int(feed.rate * max_lag) * PACKET_SIZE)
        #: Unsent bytes of all subscribers together past which the furthest behind go.
        self.max_buffer = max_buffer
        self._stats = stats
        # A dict, not a set: its order is the round the wake-ups share out.
        self._subscriptions: dict[Subscription, None] = {}
        self._timer: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_wait = TICK  # the loop's shortest wait (see shortest_wait)
        self._turn = 0  # where the next wake-up starts its round
        self._unsent = 0  # all subscribers' unsent bytes, kept up to date within a wake-up
        # Rows written to one subscriber at one wake-up at most.
        self._batch = max(_CATCH_UP, math.ceil(feed.rate * TICK * _TICKS_PER_WRITE))

    def add(self, subscription: Subscription) -> None:
        """Follow ``subscription`` from its next row; wake at once to write its catch-up."""
        self._subscriptions[subscription] = None
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._tick_wait = shortest_wait(self._loop)
            self._timer = self._loop.call_soon(self._tick)

    def discard(self, subscription: Subscription) -> None:
        """Stop following ``subscription``."""
        self._subscriptions.pop(subscription, None)

    def stop(self) -> None:
        """Stop the timer and let every subscription end."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for subscription in list(self._subscriptions):
            # The server stops, the feed does not end: the subscriber must reconnect.
            subscription.reset()
        self._subscriptions.clear()

    def _tick(self) -> None:
        self._timer = None
        feed = self.feed
        published = feed.published_rows()
        feed.prepare(published)
        shared: dict[tuple[int, int], memoryview] = {}
        order = list(self._subscriptions)
        self._unsent = sum(subscription.unsent for subscription in order)
        start = self._turn % len(order) if order else 0
        budget = _TICK_BYTES
        served = 0
        # A round from where the last wake-up stopped: under load, each gets its turn.
        for subscription in order[start:] + order[:start]:
            if budget <= 0:
                break
            served += 1
            if subscription not in self._subscriptions:
                continue  # disconnected in this round, to make room
            try:
                budget -= self._serve(subscription, published, shared)
            except FeedError as exc:
                # The replayed file shrank under the server: this subscriber cannot go on.
                log.error("cannot serve %s: %s", subscription.peer, exc)
                self._drop(subscription)
            except Exception:
                # A bug must cost one subscriber, never the publisher and the others.
                log.exception("internal error serving %s", subscription.peer)
                self._drop(subscription)
        self._turn = start + served
        if not self._subscriptions or self._loop is None:
            return
        if served < len(order):
            self._timer = self._loop.call_soon(self._tick)  # the rest, once the loop breathes
            return
        now = time.monotonic()
        wait = self._tick_wait
        delay = max(wait, feed.due(published) - now) if published < feed.total else wait
        self._timer = self._loop.call_later(delay, self._tick)

    def _serve(
        self,
        subscription: Subscription,
        published: int,
        shared: dict[tuple[int, int], memoryview],
    ) -> int:
        """Write ``subscription`` its rows up to ``published``; end it if the feed did.

        Returns the bytes written.  The bounds are checked before writing: a write that
        would put the subscriber past its own bound, or all of them past ``max_buffer``,
        disconnects it, or those further behind, first.
        """
        feed = self.feed
        if subscription.connection.closing:
            # The subscriber went away: its conversation logs it as it ends.
            self._subscriptions.pop(subscription, None)
            subscription.end()
            return 0
        lo = subscription.next
        written = 0
        if lo < published:
            hi = min(published, lo + self._batch)
            rows = shared.get((lo, hi))
            if rows is None:
                # Subscribers at one row (all but the newest, usually) share the bytes.
                rows = shared[lo, hi] = feed.rows(lo, hi)
            data, kept = subscription.select(lo, hi, rows)
            size = kept * PACKET_SIZE
            before = subscription.unsent
            if before + size > self.bound:
                self._too_slow(subscription)
                return 0
            while self._unsent + size > self.max_buffer:
                # The furthest behind: the most bytes its reader has not taken.
                furthest = max(self._subscriptions, key=lambda other: other.unsent)
                self._unsent -= furthest.unsent
                self._too_slow(furthest, crowded=True)
                if furthest is subscription:
                    return 0
            subscription.send(hi, data, kept)
            self._unsent += subscription.unsent - before
            written = size
        if published >= feed.total and subscription.next >= feed.total:
            self._subscriptions.pop(subscription, None)
            subscription.end()
        return written

    async def backlog(self, subscription: Subscription, *, every: bool = False) -> None:
        """Write ``subscription`` what is published already, paced by its reader.

        Never timed out for idling: a reader that falls ``max_lag`` further behind the
        published edge than it joined is disconnected (reset) instead, also while it
        holds a write.  Returns with a few packets left for the publisher (all written
        if ``every``), or cut (``subscription.cut``).
        """
        feed = self.feed
        # The lag it joined with, and max_lag more: past that it reads slower than the feed.
        allowed = max(feed.published_rows() - subscription.next, 0) + self.bound // PACKET_SIZE
        catch_up = 1 if every else _CATCH_UP
        loop = asyncio.get_running_loop()
        while not subscription.cut:
            published = feed.published_rows()
            lo = subscription.next
            left = published - lo
            if left <= 0 or (left < catch_up and not feed.ended):
                return
            if left > allowed:
                self._too_slow(subscription, lag=left)
                return
            hi = min(published, (lo // BLOCK + 1) * BLOCK)
            data, kept = subscription.select(lo, hi, feed.rows(lo, hi))
            subscription.next = hi
            subscription.count(sent=kept, dropped=hi - lo - kept)
            if not kept:
                continue
            # Should nothing of this block be read, the edge passes lo + allowed at that time.
            timer = loop.call_later(
                feed.due(lo + allowed) - time.monotonic(), self._too_slow, subscription
            )
            try:
                await subscription.connection.write(data, timed=False)
            except ConnectionError:
                if not subscription.cut:
                    raise
            finally:
                timer.cancel()

    async def follow(self, subscription: Subscription) -> None:
        """Write ``subscription`` what is published, until the feed ends.

        For a subscription whose answers pass through faults (latency, bandwidth, ...):
        its own task, woken by the clock, waits on every write, and is disconnected like
        any subscriber once it falls ``max_lag`` behind.
        """
        feed = self.feed
        behind = self.bound // PACKET_SIZE
        wait = shortest_wait(asyncio.get_running_loop())
        while True:
            await self.backlog(subscription, every=True)
            if subscription.cut:
                return
            if subscription.next >= feed.total:
                # An end of file says the feed ended: from beyond its end, wait for that.
                await asyncio.sleep(max(0.0, feed.due(feed.total - 1) - time.monotonic()))
                return
            if feed.count - subscription.next > behind:
                self._too_slow(subscription)
                return
            await asyncio.sleep(max(wait, feed.due(subscription.next) - time.monotonic()))

    def _drop(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription, None)
        subscription.reset()

    def _too_slow(
        self, subscription: Subscription, lag: int | None = None, *, crowded: bool = False
    ) -> None:
        """Reset ``subscription``, ``lag`` rows behind (default: behind the published edge)."""
        self._subscriptions.pop(subscription, None)
        if subscription.cut:
            return
        self._stats.slow_disconnects += 1
        if lag is None:
            # Rows not published to it yet, and those it holds unsent (about: drops aside).
            lag = self.feed.published_rows() - subscription.next
            lag += subscription.unsent // PACKET_SIZE
        why = (
            f"the furthest behind when all subscribers' unsent bytes reached --max-buffer "
            f"{self.max_buffer}"
            if crowded
            else f"more than --max-lag {self.max_lag:g}s of packets, {self.bound} bytes"
        )
        log.warning(
            "disconnected %s: too slow, %d bytes unsent, %d packets behind (%s), at sequence %d",
            subscription.peer, subscription.unsent, max(lag, 0), why,
            self.feed.first + subscription.next - 1,
        )  # fmt: skip
        subscription.reset()
