"""The machinery of a fetch: its options, its connections, and the store they fill.

Data flows one way: each connection is a :class:`Link`, an asyncio protocol whose
:class:`~packetcore.protocol.ResponseFramer` cuts info frames out of the byte stream
and whose own :class:`~packetcore.Decoder` turns the rest into packets on arrival;
they go straight into the :class:`Session`'s :class:`~packetcore.PacketStore`, and the
complete prefix leaves the store for the output as soon as it is settled
(:meth:`Session.advance`).  Nothing is buffered beyond one incomplete packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..engine import MAX_SEQUENCE, Decoder, PacketStore
from ..errors import FetchError, OutputError, PacketcoreError, PastTheEnd
from ..packets import Packets
from ..protocol import CLOCK_SIZE, DEFAULT_PORT, FeedClock, FeedInfo, ResponseFramer, hello_request
from .journal import Journal
from .judge import CopyCount, Judge
from .retry import MAX_BACKOFF, Retry

__all__ = [
    "MAX_BACKOFF",
    "MAX_CONFIDENCE",
    "MAX_DOUBTS",
    "FetchOptions",
    "Link",
    "Progress",
    "Protocol",
    "Session",
    "Wait",
]

log = logging.getLogger("packetcore.fetch")

Protocol = Literal["auto", "base", "extended"]
#: How a wait ended: what was awaited happened, the connection ended, or it went silent.
Wait = Literal["done", "lost", "idle"]
#: Called as packets reach the output with (packets written, packets expected or None).
Progress = Callable[[int, "int | None"], None]
#: Where the settled prefix goes, batch after batch in sequence order.
Sink = Callable[[Packets], None]

#: The loosest base-protocol confidence accepted: above it, truncated fetches are common.
MAX_CONFIDENCE = 0.01
#: Packets in doubt (out of order, or in copies that differ) beyond which a server is
#: taken for no feed at all: they are asked for again one by one, and held meanwhile.
MAX_DOUBTS = 100_000
# The settled prefix leaves the store in batches of at most this many packets, and at
# least this often while packets arrive (so that `-o -` readers see records early).
_BATCH = 1 << 18
_ADVANCE_EVERY = 0.02
# Warnings of invalid packets before the rest go to DEBUG.
_INVALID_WARNINGS = 10


@dataclass(frozen=True)
class FetchOptions:
    """How a fetch talks to its server; every default lives here.

    ``protocol`` is ``auto`` (probe for the extension, waiting ``hello_timeout``
    seconds), ``base`` or ``extended``.  ``timeout`` is how long a connection may stay
    silent while an answer is due; connecting and unanswered requests are retried
    ``retries`` times, pausing ``backoff`` seconds doubled each time (at most 5 s).
    Against a base server, passes go on until the chance that a later packet exists
    unseen is below ``confidence`` (at most 0.01), or ``max_passes`` were made.
    ``deadline`` bounds the whole fetch in seconds (``None``: no bound).  ``start`` and
    ``stop`` fetch only the sequences ``start..stop`` (inclusive; ``None``: the feed's
    own first and last).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    protocol: Protocol = "auto"
    hello_timeout: float = 0.2
    timeout: float = 5.0
    retries: int = 5
    backoff: float = 0.1
    confidence: float = 1e-6
    max_passes: int = 100
    deadline: float | None = None
    start: int | None = None
    stop: int | None = None

    def __post_init__(self) -> None:
        for name in ("port", "retries", "max_passes", "start", "stop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be a whole number, not {value!r}")
        for name in ("hello_timeout", "timeout", "backoff", "confidence", "deadline"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, (int, float)) or isinstance(value, bool)
            ):
                raise TypeError(f"{name} must be a number, not {value!r}")
        if not isinstance(self.host, str):
            raise TypeError(f"host must be a string, not {self.host!r}")
        if self.protocol not in ("auto", "base", "extended"):
            raise ValueError(f"protocol must be auto, base or extended, not {self.protocol!r}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        for name in ("hello_timeout", "timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        if not 0 <= self.backoff <= MAX_BACKOFF:
            raise ValueError(f"backoff must be in 0..{MAX_BACKOFF:g} seconds, not {self.backoff}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, not {self.retries}")
        if not 0 < self.confidence <= MAX_CONFIDENCE:
            raise ValueError(
                f"confidence must be above 0 and at most {MAX_CONFIDENCE:g} (the chance of "
                f"a truncated base-protocol fetch), not {self.confidence}"
            )
        if self.max_passes < 1:
            raise ValueError(f"max_passes must be at least 1, not {self.max_passes}")
        if self.deadline is not None and not (self.deadline > 0 and math.isfinite(self.deadline)):
            raise ValueError(f"deadline must be a positive number of seconds, not {self.deadline}")
        for name in ("start", "stop"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_SEQUENCE:
                raise ValueError(f"{name} must be a sequence in 1..{MAX_SEQUENCE}, not {value}")
        if self.start is not None and self.stop is not None and self.stop < self.start:
            raise ValueError(f"the slice {self.start}..{self.stop} is empty")

    @property
    def sliced(self) -> bool:
        """Whether only part of the feed is asked for."""
        return self.start is not None or self.stop is not None

    def retry(self) -> Retry:
        """Return a fresh count of failures in a row, retried as ``retries`` and ``backoff`` say."""
        return Retry(self.retries, self.backoff)


class Link(asyncio.Protocol):
    """One connection to the server: bytes in, packets into the session's store.

    The strategies talk to it through its methods only: :meth:`hello`, :meth:`ask`
    (requests, with what their answers may repeat), :meth:`wait` and friends.
    """

    def __init__(self, session: Session, number: int, *, recovering: bool,
                 sink: Callable[[Packets], None] | None = None) -> None:  # fmt: skip
        self.session = session
        self.number = number
        self.recovering = recovering
        #: Where decoded batches go instead of the session's store (checking copies).
        self._sink = sink
        self.framer = ResponseFramer()
        self.decoder = Decoder()
        #: The sequence of the last packet decoded: answers come in ascending order.
        self.last_sequence = 0
        self._last_payload: tuple[object, ...] | None = None
        #: Packets decoded on this connection, the new ones among them, the highest
        #: sequence among them, and the info frames received.
        self.packets = 0
        self.new = 0
        self.highest = 0
        self.infos: list[FeedInfo] = []
        #: The live server's clock frame, on a subscription that asked for it.
        self.clock: FeedClock | None = None
        #: Hellos sent on this connection (each is answered by one info frame, in order).
        self.hellos = 0
        # The info frames (by count) after which the answers start again from low
        # sequences: see hello(restart=True).
        self._restarts: deque[int] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.error: BaseException | None = None
        #: Whether the fetch dropped this connection because what it sent could not be
        #: handled (a malformed info frame, ...); ``error`` says why.
        self.broken = False
        self._asked: Callable[[Packets], int] | None = None
        self._skipped = 0
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return  # dropped already: nothing more from it is trusted
        try:
            framer = self.framer
            for item in framer.feed(data):
                if isinstance(item, FeedInfo):
                    self.session.note_info(item)  # first: a frame it refuses is not counted
                    self.infos.append(item)
                    self._skipped += 16
                    if self._restarts and self._restarts[0] <= len(self.infos):
                        self._restarts.popleft()
                        self.last_sequence = 0
                elif isinstance(item, FeedClock):
                    self.clock = item
                    self._skipped += CLOCK_SIZE
                else:
                    self._packets(item)
            if framer.clock_refused is not None and self.clock is None:
                log.warning("connection %d: %s: no publication latency", self.number,
                            framer.clock_refused)  # fmt: skip
                framer.clock_refused = None
                self._skipped += CLOCK_SIZE
        except Exception as exc:
            # Nothing may escape into asyncio (it would only log "Fatal error:
            # protocol.data_received() call failed" and leave the fetch waiting): a
            # malformed info frame, an info frame the store cannot take, or any other
            # failure drops this connection and is kept as the reason it ended.
            if isinstance(exc, FetchError):
                # The fetch ends with it, and says it then: once is enough.
                log.debug("connection %d: %s", self.number, exc)
            elif isinstance(exc, PacketcoreError):
                log.warning("connection %d: %s", self.number, exc)
            else:
                log.warning("connection %d: cannot handle what arrived: %r", self.number, exc)
                log.debug("connection %d: details", self.number, exc_info=True)
            self.error = exc
            self.broken = True
            self.close()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too: stream-all ends with the server's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    # the stream

    def _packets(self, chunk: memoryview) -> None:
        batch = self.decoder.feed(chunk)
        if len(batch.invalid):
            self.session.note_invalid(self.number, batch.invalid + self._skipped)
        if len(batch):
            self._check_order(batch)
            self.packets += len(batch)
            self.highest = max(self.highest, int(batch.sequence.max()))
            if self._sink is not None:
                self._sink(batch)
            else:
                asked = self._asked(batch) if self._asked is not None else 0
                self.new += self.session.add(batch, recovered=self.recovering, asked=asked)

    def _check_order(self, batch: Packets) -> None:
        # Every answer on one connection comes in ascending sequence order: a stream-all,
        # the ranges of a round (asked in order), pipelined resends (asked in order).  A
        # packet at or below its predecessor was duplicated or reordered on the way, or
        # one of the two has a corrupted sequence field: both are asked for again before
        # the fetch trusts them (Session.doubt).  An exact repeat of the packet before it
        # (duplicated on the way) says nothing against either.
        sequences = batch.sequence
        previous = np.empty_like(sequences)
        previous[0] = self.last_sequence
        previous[1:] = sequences[:-1]
        broken = sequences <= previous
        if broken.any():
            repeat = broken & (sequences == previous)
            if repeat.any():
                columns = (batch.symbol, batch.buysellindicator, batch.quantity, batch.price)
                same = np.ones(len(sequences), dtype=bool)
                for column in columns:
                    same[1:] &= column[1:] == column[:-1]
                same[0] = self._last_payload == tuple(column[0] for column in columns)
                broken &= ~(repeat & same)
            if broken.any():
                self.session.doubt(sequences[broken])
                self.session.doubt(previous[broken][previous[broken] > 0])
        self.last_sequence = int(sequences[-1])
        self._last_payload = (
            batch.symbol[-1],
            batch.buysellindicator[-1],
            batch.quantity[-1],
            batch.price[-1],
        )

    # control

    def hello(self, *, late: bool = False, restart: bool = False) -> None:
        """Send a hello; ``late``: a base server may ignore it, an answer may come first.

        ``restart``: the requests sent after it ask again for lower sequences than those
        before it, so the answers after its info frame start a new ascending run (the
        order of each run is checked, not the order across them).
        """
        if late:
            self.framer.expect_late()
        else:
            self.framer.expect()
        self.hellos += 1
        if restart:
            self._restarts.append(self.hellos)
        self.send(hello_request())

    def ask(self, request: bytes, *, repeats: Callable[[Packets], int] | None = None,
            restart: bool = False) -> None:  # fmt: skip
        """Send requests; ``repeats`` counts what their answers bring that was asked again.

        ``restart``: the answers start again from low sequences (a new round of ranges).
        """
        self._asked = repeats
        if restart:
            self.last_sequence = 0
        self.send(request)

    def send(self, request: bytes) -> None:
        """Queue request bytes for the server (asyncio writes them as the socket allows)."""
        if self.transport is not None and not self.lost:
            self.transport.write(request)

    def close(self) -> None:
        """Close the connection; what already arrived stays decoded."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent requests and all."""
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, done: Callable[[], bool], idle: float) -> Wait:
        """Wait until ``done()``, the connection ends, or ``idle`` seconds pass with no byte."""
        loop = asyncio.get_running_loop()
        while not done():
            if self.lost:
                return "done" if done() else "lost"
            waiter = self._waiter = loop.create_future()
            # A timer, not asyncio.wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that lands as the awaited future completes (a lost Ctrl-C).
            timer = loop.call_later(idle, _set_if_pending, waiter, False)
            try:
                woken = await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if woken is False:
                return "done" if done() else "idle"
        return "done"

    async def wait_closed(self, idle: float) -> Wait:
        """Wait for the server to close the connection (the end of a stream-all)."""
        state = await self.wait(lambda: self.lost, idle)
        if state == "done" and self.error is not None:
            return "lost"  # reset, not a clean end of stream
        return state

    async def wait_info(self, count: int, idle: float) -> Wait:
        """Wait until ``count`` info frames in all arrived on this connection."""
        return await self.wait(lambda: len(self.infos) >= count, idle)

    @property
    def clean_end(self) -> bool:
        """Whether the connection ended with EOF on a packet boundary, no error."""
        return self.lost and self.error is None and self.decoder.pending == 0

    def why(self) -> str:
        """Return why the connection ended, in a few words."""
        if self.error is not None:
            return str(self.error) or type(self.error).__name__
        if self.decoder.pending:
            return f"{self.decoder.pending} bytes into a packet"
        return "closed"


def _always() -> bool:
    return True


def _unbounded() -> int | None:
    return None


def _set_if_pending(future: asyncio.Future[bool | None], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class Session:
    """What one fetch has gathered so far, how it opens connections, where output goes.

    ``sink`` receives the settled prefix of the feed, batch after batch in sequence
    order, as it grows (see :meth:`advance`); while ``flowing()`` is false (the output
    is behind) the prefix is held back.  A strategy bounds the prefix with
    :meth:`limited`.
    """

    def __init__(self, options: FetchOptions, sink: Sink, progress: Progress | None = None,
                 *, flowing: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self.options = options
        self.progress = progress
        self._sink = sink
        self.store = PacketStore(options.start or 1, options.stop)
        self.info: FeedInfo | None = None
        self.received = 0
        self.recovered = 0
        self.asked_repeats = 0
        self.written = 0
        self.invalid_offsets: list[tuple[int, int]] = []
        #: Packets the decoders rejected, all told (the offsets above keep the first).
        self.invalid = 0
        self._invalid_warnings = 0
        self.connections = 0
        self.links: list[Link] = []
        #: Sequences whose held packet may be wrong (see Link._check_order).
        self.doubts: set[int] = set()
        self._first_doubt: int | None = None
        #: What a single copy is judged by (packetcore.client.judge), and how many had two.
        self.judge = Judge()
        self.copies = CopyCount()
        #: How many stream-all passes ended on each sequence (base protocol).
        self.pass_ends: Counter[int] = Counter()
        #: Set whenever packets arrive: what the repair of gaps waits on.
        self.arrived = asyncio.Event()
        self._advanced = 0.0
        self._flowing = flowing if flowing is not None else _always
        # The highest sequence the prefix may reach for now, or None for no bound: see
        # limited().
        self._ceiling: Callable[[], int | None] = _unbounded
        #: The highest last sequence any hello named: above the fetch's last, the feed
        #: grew while it ran (a live server).
        self.published: int | None = None
        #: What the fetch found missing and did about it (run_fetch gives it events).
        self.journal = Journal(self.store)
        #: Called after a batch brought new packets (None: nothing to call, the usual).
        self.on_new: Callable[[], None] | None = None

    def flowing(self) -> bool:
        """Return whether the output takes the prefix now (False: it is behind)."""
        return self._flowing()

    @contextlib.contextmanager
    def limited(self, ceiling: Callable[[], int | None]) -> Iterator[None]:
        """Keep the prefix at or below ``ceiling()`` while the block runs (None: no bound).

        What a strategy does while its word on the packets above is not in: a base
        fetch up to what two passes have shown, a round of ranges behind the packets it
        brings again, a follow's vote where the prefix stands.  The bound before the
        block is back after it.
        """
        previous, self._ceiling = self._ceiling, ceiling
        try:
            yield
        finally:
            self._ceiling = previous

    @property
    def expected(self) -> int | None:
        """How many packets the output will hold, once the server has said."""
        store = self.store
        if not store.last_known or store.last is None:
            return None
        return store.last - store.first + 1

    def note_info(self, info: FeedInfo) -> None:
        """Learn the feed's extent from an info frame (the first one counts).

        Later frames only tell whether the feed grew meanwhile (a live server).
        """
        self.published = max(self.published or 0, info.last)
        if self.info is not None:
            return
        options = self.options
        first = max(info.first, options.start or info.first)
        last = min(info.last, options.stop or info.last)
        if last < first:
            if options.start is not None and options.start > info.last:
                raise PastTheEnd(
                    f"the slice {options.start}..{options.stop or 'end'} starts past the "
                    f"feed's last sequence, {info.last} (if the feed is live, --follow "
                    "waits for it)",
                    info.last,
                )
            raise FetchError(
                f"the slice {options.start or 1}..{options.stop or 'end'} lies outside "
                f"the feed {info.first}..{info.last}"
            )
        if options.stop is not None and options.stop > info.last:
            log.warning(
                "--to %d is past the feed's last sequence, %d (for now, if it is live): "
                "the fetch ends there", options.stop, info.last,
            )  # fmt: skip
        # First: if the store cannot take the extent (ValueError), the feed stays unknown
        # and Link.data_received drops the connection.
        self.store.bound(first, last)
        self.info = info

    @property
    def duplicates(self) -> int:
        """Identical packets received again that the fetch did not ask for again."""
        return max(self.store.duplicates - self.asked_repeats, 0)

    def add(self, batch: Packets, *, recovered: bool, asked: int = 0) -> int:
        """Store a batch decoded on a connection, count it, pass the prefix on.

        Return how many of its sequences were new.
        """
        store = self.store
        duplicates, conflicts = store.duplicates, store.conflicts
        self.copies.see(batch.sequence, store.cursor, store.last if store.last_known else None)
        suspects = self.judge(batch)
        if len(suspects):
            self.doubt(suspects)
        new = store.add(batch)
        if store.conflicts > conflicts:
            self._doubt_conflicts(store.conflicts - conflicts)
        self.received += len(batch)
        if recovered:
            self.recovered += new
        repeats = store.duplicates - duplicates
        if repeats and asked:
            self.asked_repeats += min(repeats, asked)
        if new:
            self.arrived.set()
            now = time.monotonic()
            if (
                now - self._advanced >= _ADVANCE_EVERY
                or store.contiguous() - store.cursor >= _BATCH
            ):
                self._advanced = now
                self.advance()
            if self.on_new is not None:
                self.on_new()
        return new

    def _doubt_conflicts(self, count: int) -> None:
        # Copies that differ from the packet held: neither is trusted until a vote, so
        # the output's prefix stops before them.  The store keeps them, latest last: the
        # batch's are its last ``count`` (rather than comparing the whole batch with the
        # packets held, a cost per packet of the batch).
        self.doubt(self.store.conflicting().sequence[-count:])

    def doubt(self, sequences: npt.NDArray[np.int32]) -> None:
        """Mark ``sequences`` to be asked for again before their packets are trusted.

        Raise :class:`FetchError` past :data:`MAX_DOUBTS` and past a quarter of the
        packets received: a stream that far out of order is no feed (random bytes,
        scattered sequences), and the connection goes.  A fixed count alone would fail
        a long feed through a network that reorders a few packets in a hundred.
        """
        self.doubts.update(sequences.tolist())
        self._first_doubt = None
        limit = max(MAX_DOUBTS, self.received // 4)
        if len(self.doubts) > limit:
            raise FetchError(
                f"more than {limit} packets (and a quarter of those received) came out of "
                f"sequence order: the server does not send a feed in order"
            )

    def trust(self, sequences: list[int]) -> None:
        """Take ``sequences`` out of doubt (they were settled)."""
        self.doubts.difference_update(sequences)
        self._first_doubt = None

    def lowest_doubt(self) -> int | None:
        """Return the lowest sequence in doubt from the cursor on (where the prefix stops)."""
        return self._lowest_doubt()

    def _lowest_doubt(self) -> int | None:
        # Cached: recomputed only after the doubts changed, not at every advance.
        if self._first_doubt is None or 0 < self._first_doubt < self.store.cursor:
            cursor = self.store.cursor
            self._first_doubt = min((s for s in self.doubts if s >= cursor), default=0)
        return self._first_doubt or None

    def advance(self, *, behind: bool = False) -> None:
        """Pass the settled prefix of the feed on to the output.

        The prefix ends at the first sequence not held, in doubt, or above the bound
        (:meth:`limited`).  ``behind``: even if the output is behind (the end of a follow).
        """
        if not (behind or self._flowing()):
            return
        store = self.store
        stop = store.contiguous()
        doubted = self._lowest_doubt()
        if doubted is not None:
            stop = min(stop, doubted)
        ceiling = self._ceiling()
        if ceiling is not None:
            stop = min(stop, ceiling + 1)
        while store.cursor < stop:
            self._pass_on(store.take(min(stop, store.cursor + _BATCH)))

    async def flush(self, stop: int, give_up_at: float | None = None) -> None:
        """Pass every packet held below ``stop`` to the output, gaps and all.

        The end of a fetch.  It yields to the event loop between batches (a signal is
        acted on at once) and waits while the output is behind, but not past
        ``give_up_at`` (a monotonic time: the deadline and some grace); across sparse stretches
        (a few packets spread over a wide span) each step widens, so that even the
        protocol's whole sequence space takes a few dozen steps.
        """
        store = self.store
        span = _BATCH
        while store.cursor < stop:
            while not self._flowing():
                if give_up_at is not None and time.monotonic() > give_up_at:
                    raise OutputError(
                        "the output could not take what was received within the "
                        "deadline's grace (its writer fell behind, or a reader of stdout "
                        "stopped reading); gave up"
                    )
                await asyncio.sleep(0.005)
            batch = store.take(min(stop, store.cursor + span))
            self._pass_on(batch)
            if len(batch) < _BATCH // 2:
                span = min(span * 2, 1 << 31)
            elif len(batch) > 2 * _BATCH:
                span = max(span // 2, _BATCH)
            await asyncio.sleep(0)

    def _pass_on(self, batch: Packets) -> None:
        if len(batch):
            self._sink(batch)
            self.written += len(batch)
            if self.progress is not None:
                self.progress(self.written, self.expected)

    def note_invalid(self, connection: int, offsets: npt.NDArray[np.int64]) -> None:
        """Record packets the decoder rejected, by connection and byte offset."""
        listed = [(connection, int(offset)) for offset in offsets.tolist()]
        self.invalid += len(listed)
        self.invalid_offsets.extend(listed[: 10_000 - len(self.invalid_offsets)])
        shown = ", ".join(str(offset) for _, offset in listed[:10])
        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
        # A long run over a corrupting network rejects packets all along: the first few
        # are warned of, the rest logged at DEBUG (-v) and counted in the summary.
        self._invalid_warnings += 1
        level = logging.WARNING if self._invalid_warnings <= _INVALID_WARNINGS else logging.DEBUG
        log.log(
            level, "connection %d: %d invalid packet(s) at byte offset(s) %s%s; not kept",
            connection, len(listed), shown, more,
        )  # fmt: skip
        if self._invalid_warnings == _INVALID_WARNINGS:
            log.warning("more invalid packets are counted in the summary (-v shows each)")

    async def open_link(
        self, *, recovering: bool = False, sink: Callable[[Packets], None] | None = None,
        retry_level: int = logging.INFO,
    ) -> Link:  # fmt: skip
        """Connect to the server, retrying with exponential backoff; raise FetchError.

        ``sink`` receives the decoded batches instead of the session's store; each retry
        is logged at ``retry_level``.
        """
        options = self.options
        loop = asyncio.get_running_loop()
        retry = options.retry()
        while True:
            self.connections += 1
            number = self.connections

            def factory(number: int = number) -> Link:
                return Link(self, number, recovering=recovering, sink=sink)

            connecting = asyncio.ensure_future(
                loop.create_connection(factory, options.host, options.port)
            )
            try:
                # asyncio.wait, not wait_for: it never swallows a cancellation.
                done, _ = await asyncio.wait({connecting}, timeout=options.timeout)
            except asyncio.CancelledError:
                connecting.cancel()
                raise
            reason = "timed out"
            if connecting in done and connecting.exception() is None:
                _, link = connecting.result()
                self.links.append(link)
                log.debug("connection %d open to %s:%d", number, options.host, options.port)
                return link
            if connecting in done:
                exc = connecting.exception()
                assert exc is not None
                if not isinstance(exc, OSError):
                    raise exc
                reason = _describe(exc)
            else:
                connecting.cancel()
            if not retry.fail():
                attempts = retry.failures
                raise FetchError(
                    f"cannot connect to {options.host}:{options.port}: {reason} "
                    f"({attempts} attempt{'' if attempts == 1 else 's'})"
                )
            await retry.pause(log, retry_level, "connecting to %s:%d: %s",
                              options.host, options.port, reason)  # fmt: skip

    async def collect(
        self, request: bytes, due: int | None, *, marked: bool = False
    ) -> list[Packets]:
        """Send ``request`` on a new connection; return ``due`` packets' batches (None: all).

        Fresh copies for a vote (:mod:`packetcore.client.settle`): they go to the caller,
        not into the store.  A connection that cannot be opened brings none.  ``marked``
        (an extended server): a hello follows the request, and its answer, which comes
        after every answer to the request, ends the wait, so that a copy lost on the way
        or a sequence the feed lacks costs no ``timeout``.
        """
        batches: list[Packets] = []
        try:
            link = await self.open_link(sink=batches.append)
        except FetchError as exc:
            log.info("cannot ask again: %s", exc)
            return batches
        link.ask(request)
        if marked:
            link.hello()
            await link.wait_info(1, self.options.timeout)
        elif due is None:
            await link.wait_closed(self.options.timeout)
        else:
            await link.wait(lambda: link.packets >= due, self.options.timeout)
        link.close()
        return batches

    def close_all(self) -> None:
        """Abort every connection still open (on the way out of a fetch)."""
        for link in self.links:
            if not link.lost:
                with contextlib.suppress(Exception):
                    link.abort()
        self.links.clear()


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
