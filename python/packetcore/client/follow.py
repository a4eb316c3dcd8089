"""Follow a live feed: every packet handed on in sequence order, gaps repaired as they appear.

A follow keeps two connections to a packetcore server (see the protocol in ``docs/``).
The **subscription** sends a hello and then subscribes (callType 5) from the first
sequence still needed; the server writes packets to it as they are published, its loss
simulation applied.  The **repair connection** beside it asks for every gap the moment
it is seen, as pipelined range requests (callType 4): a gap is seen when a later
sequence arrives on the subscription, or when the hello, sent on the repair connection
every :data:`POLL` seconds, says the server published further than what arrived while the
subscription stayed quiet (tail loss).  The packets go into the session's
:class:`~packetcore.PacketStore`, and the contiguous prefix leaves it at once, so only
the out-of-order window is ever held.  A packet in doubt (out of order on its
connection, or in copies that differ: a corrupted sequence field) stops the prefix, as
in a fetch, until fresh copies settle it by vote (:func:`~packetcore.client.settle.settle`).

A subscription that ends, fails, or stays silent for ``timeout`` while the server
publishes on is replaced, with backoff, by one from the first sequence not yet received
or asked for: what it missed meanwhile is repaired, nothing is received twice on
purpose, and a packet cut in the middle goes with the connection that cut it.  A
follow stops at ``until``, at the end of a finite feed (a subscription from beyond the
last sequence published ends at once, cleanly), or when it is stopped or cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

# np.unique imports numpy.ma on its first call: 8-30 ms on the loop at the first gaps.
import numpy.ma
import numpy.typing as npt

from ..errors import FetchError
from ..packets import Packets
from ..protocol import FeedClock, FeedInfo, range_requests, subscribe_request
from .journal import Events
from .latency import Latencies
from .ranges import coalesce
from .session import FetchOptions, Link, Progress, Session, Sink
from .settle import settle

__all__ = ["EVENTS", "POLL", "WINDOW", "Events", "Follow", "FollowStats", "follow", "run_follow"]

log = logging.getLogger("packetcore.follow")

#: Seconds between hellos on the repair connection: how soon a tail loss is noticed,
#: and how fresh the server's published sequence (the lag) is.
POLL = 0.02
#: How long the subscription must have been quiet before a hello for a tail loss to be
#: taken as such (the server writes to subscribers every few milliseconds).  Only while
#: the server publishes nothing new: a subscription quiet while the feed goes on is
#: behind or stalled (a stalled one is replaced), and what it will bring is not asked for.
TAIL_QUIET = 0.05
#: Packets handed on and not yet consumed (the API's queue) beyond which reading stops,
#: so that a slow consumer holds the connections back rather than memory growing.
QUEUE_LIMIT = 1 << 20
#: The most copies of one sequence asked for in a round, when its answers were lost
#: round after round (each further round doubles them).
MAX_COPIES = 64
#: Sequences above the first one not handed on (the out-of-order window) beyond which
#: the subscription is not taken: when the repairs fall behind, it is closed and opened
#: again from the first sequence still needed once they caught up halfway, so memory
#: stays bounded and nothing is lost.
WINDOW = 1 << 20
#: Batches handed on whose latencies wait to be counted (else: every POLL) at most.
_COUNT_BATCHES = 64
#: Seconds a packet may seem handed on before its publication (the two clocks apart)
#: before the follow says the server's clock is ahead.
_SKEW = 0.001

#: What a follow tells an ``events`` callback, each a dict with ``event`` naming it and
#: times in seconds since the follow started:
#:
#: * ``gap``: ``first``, ``last`` (the sequences missing), ``seen``, ``asked`` (None if
#:   the repair connection was being replaced: asked once it was open again),
#:   ``repaired`` (when it and all before it were held; None if the follow ended first),
#:   ``how`` (``range``, ``tail`` or ``reconnect``), in the order they were repaired;
#: * ``reconnect``: ``connection`` (``subscription`` or ``repair``), ``at``, and the
#:   sequence subscribed from or ``why`` the repair connection went;
#: * ``slow-down``: ``at``, ``why`` (the consumer is behind, the window full) and the
#:   first ``sequence`` not handed on; ``resume``: reading again;
#: * ``end``: ``at``, ``reason``, ``packets``, ``last``, ``gaps``, ``reconnects``.
EVENTS = ("gap", "reconnect", "slow-down", "resume", "end")


class _Gap(NamedTuple):
    """A run of sequences asked for: ``start <= sequence < stop``, seen, asked, and why."""

    start: int
    stop: int
    seen: float
    asked: float | None
    how: str

    def event(self, origin: float, repaired: float | None) -> dict[str, Any]:
        """Return the gap's event, times counted from ``origin`` (``repaired``: None, open)."""
        return {
            "event": "gap",
            "first": self.start,
            "last": self.stop - 1,
            "seen": round(self.seen - origin, 6),
            "asked": None if self.asked is None else round(self.asked - origin, 6),
            "how": self.how,
            "repaired": None if repaired is None else round(repaired - origin, 6),
        }


@dataclass
class FollowStats:
    """What a follow has done so far: readable while it runs and after.

    ``packets`` were handed on, ``delivered`` is the last sequence among them;
    ``gaps`` is how many runs of missing sequences were seen (each asked for on the
    repair connection), ``gaps_open`` how many of them are not repaired yet, and
    ``repaired`` how many packets the repair brought; ``requests`` counts the ranges asked
    for by why (``range``, ``tail``, ``again``: asked again, unanswered; ``reconnect``:
    asked on a new repair connection).  ``published`` is the highest sequence the server
    said it had published, ``lag`` how many packets the follow was behind it at the latest
    hello (``max_lag`` the most).  ``reconnects`` counts subscriptions replaced after a
    failure (reset, cut, silent; not the one that confirms a clean end of file),
    ``repair_reconnects`` repair connections replaced; ``reason`` says why the follow
    stopped.  ``max_window`` is the widest out-of-order window held (sequences from the
    first not handed on to the highest received or asked for), never above the follow's
    ``window``.  What the packets rest on: ``duplicates`` (identical copies received
    again), ``conflicts`` (copies that differed, settled by a vote), ``invalid`` (packets
    the decoder rejected) and ``single_copy`` (packets handed on that no second copy
    confirmed: on a follow, most of them; a corrupted one among them cannot be told).

    Two latencies, each in a :class:`~packetcore.client.latency.Latencies`: ``repair``,
    from a gap seen until it and every sequence before it are held; ``publication``,
    from each packet's publication by the server's clock (``clock``, from a live
    packetcore server) to its hand-on, counted for every packet handed on (none
    without a clock).
    """

    packets: int = 0
    delivered: int = 0
    gaps: int = 0
    gaps_open: int = 0
    repaired: int = 0
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    single_copy: int = 0
    reconnects: int = 0
    repair_reconnects: int = 0
    published: int = 0
    lag: int = 0
    max_lag: int = 0
    max_window: int = 0
    seconds: float = 0.0
    reason: str = ""
    requests: dict[str, int] = field(default_factory=dict)
    clock: FeedClock | None = None
    repair: Latencies = field(default_factory=Latencies, repr=False, compare=False)
    publication: Latencies = field(default_factory=Latencies, repr=False, compare=False)

    @property
    def repair_p50_ms(self) -> float:
        """Return the median gap-repair latency in milliseconds."""
        return self.repair.percentile(50) * 1e3

    @property
    def repair_p99_ms(self) -> float:
        """Return the 99th-percentile gap-repair latency in milliseconds."""
        return self.repair.percentile(99) * 1e3

    @property
    def repair_max_ms(self) -> float:
        """Return the longest gap-repair latency in milliseconds."""
        return self.repair.max * 1e3

    @property
    def gaps_repaired(self) -> int:
        """Return how many gaps were repaired (their latency measured)."""
        return self.repair.count

    def lag_seconds(self, now: float | None = None) -> float | None:
        """Return how long ago the first packet not handed on was published (0: none).

        ``now``: seconds since the Unix epoch (default: the present).  None without a
        clock; counted to what the latest hello said was published.
        """
        clock = self.clock
        if clock is None:
            return None
        waiting = max(self.delivered + 1, clock.first)
        if waiting > self.published:
            return 0.0
        at = time.time() if now is None else now
        published = clock.epoch_ns / 1e9 + (waiting - clock.first) / clock.rate
        return max(at - published, 0.0)

    def summary(
        self, output: str | None = None, *, seconds: float | None = None, reason: str | None = None
    ) -> str:
        """Return the one-line account of the follow.

        ``seconds``: the time to quote instead of :attr:`seconds` (the wall time waited);
        ``reason``: what ended it, instead of :attr:`reason`.
        """
        seconds = self.seconds if seconds is None else seconds
        reason = self.reason if reason is None else reason
        line = (
            f"{self.packets} packets in order (last {self.delivered}), {self.gaps} gaps "
            f"({self.repaired} packets repaired; repair {_percentiles(self.repair)}), "
        )
        if self.publication.count:
            line += f"publication to hand-on {_percentiles(self.publication)}, "
        line += (
            f"lag {self.lag} (max {self.max_lag}), {self.reconnects} reconnects, "
            f"{self.single_copy} on one copy only, {self.duplicates} duplicates, "
            f"{self.conflicts} conflicts, {self.invalid} invalid, {seconds:.2f} s"
        )
        if output is not None:
            line += f" -> {output}"
        return line + (f" [{reason}]" if reason else "")


def _percentiles(latencies: Latencies) -> str:
    """Return ``p50 .. ms, p99 .. ms, p99.9 .. ms, max .. ms`` of ``latencies``."""
    quoted = ", ".join(f"p{q:g} {latencies.percentile(q) * 1e3:.1f} ms" for q in (50, 99, 99.9))
    return f"{quoted}, max {latencies.max * 1e3:.1f} ms"


class _FollowSession(Session):
    """A session whose info frames report what is published, not the feed's extent."""

    def __init__(self, options: FetchOptions, sink: Sink, progress: Progress | None,
                 on_info: Callable[[FeedInfo], None], on_doubt: Callable[[], None],
                 flowing: Callable[[], bool] | None = None) -> None:  # fmt: skip
        super().__init__(options, sink, progress, flowing=flowing)
        self._on_info = on_info
        self._on_doubt = on_doubt

    def note_info(self, info: FeedInfo) -> None:
        # On a live server every hello's answer says how far it has published; the
        # store's extent is the follow's (start..until), decided once at the start.
        self._on_info(info)

    def forget(self, link: Link) -> None:
        """Drop a connection that ended from the ones to close (a follow makes many)."""
        with contextlib.suppress(ValueError):
            self.links.remove(link)

    def doubt(self, sequences: npt.NDArray[np.int32]) -> None:
        # As in a fetch, the prefix stops at a packet in doubt; the follow settles it by
        # vote as soon as the prefix reaches it (_Follower._settle_loop).  Each connection
        # checks its own order: a subscription is one ascending run, the repair
        # connection one per round of requests (Link.hello(restart=True)), and each
        # subscription or connection starts a run of its own.
        super().doubt(sequences)
        self._on_doubt()


class _Follower:
    """One follow: its two connections, the gaps asked for, and when to stop."""

    def __init__(self, options: FetchOptions, sink: Sink, progress: Progress | None = None,
                 flowing: Callable[[], bool] | None = None, window: int = WINDOW,
                 events: Events | None = None) -> None:  # fmt: skip
        if window < 1:
            raise ValueError(f"window must be 1 packet or more, not {window}")
        self.options = options
        self._events = events
        self._events_error: str | None = None
        self._origin = time.monotonic()  # the events' times count from here
        self._window = window
        self.stats = FollowStats()
        self._sink = sink
        self.session = _FollowSession(options, self._deliver, progress, self._note_info,
                                      self._doubted, flowing)  # fmt: skip
        self.store = self.session.store
        #: One past the highest sequence received on a subscription or asked for: below
        #: it, every sequence not held has been asked for on the repair connection.
        self._seen = 0
        #: Gaps asked for and not yet all held, as they were asked for.
        self._gaps: deque[_Gap] = deque()
        self._repair: Link | None = None
        #: The connection that asks for copies of packets in doubt, and what it brought.
        self._checker: Link | None = None
        self._copied: list[Packets] = []
        self._sub: Link | None = None
        self._sub_packets = 0
        #: The highest sequence the current subscription brought (or its start - 1).
        self._sub_top = 0
        #: The last sequence the subscription brought, until the next one confirms it.
        self._pending: int | None = None
        #: Set when a packet in doubt may hold the prefix back: the vote is due.
        self._settle_due = asyncio.Event()
        self._sub_last = time.monotonic()  # the subscription counts as quiet from now
        #: Packets the subscriptions brought beyond what was seen (progress, not repeats).
        self._sub_fresh = 0
        self._sub_fresh_at = self._sub_last
        #: Whether the window is full: the subscription (``_held_link``) was closed.
        self._held = False
        self._held_link: Link | None = None
        self._end: int | None = None
        self._first: int | None = None  # the first sequence followed, once known
        self._done = asyncio.Event()
        #: Latencies noted and not yet counted: gaps repaired (seconds), and the
        #: batches handed on (when, and their sequences).
        self._repaired: list[float] = []
        self._clock_link: Link | None = None  # the subscription whose clock was looked at
        self._skew_told = False  # the server's clock said to be ahead
        self._info: FeedInfo | None = None  # the first hello's answer
        self._handed: list[tuple[float, npt.NDArray[np.int32]]] = []
        self._paused = False
        self._started = time.perf_counter()

    # what arrives

    def _note_info(self, info: FeedInfo) -> None:
        self.stats.published = max(self.stats.published, info.last)
        self._note_lag()
        self.stats.max_lag = max(self.stats.max_lag, self.stats.lag)

    def _note_lag(self) -> None:
        # Counted from where the follow started, not from sequence 0; never below 0
        # while the follow is ahead of what the server published.
        stats = self.stats
        if self._first is not None:
            stats.lag = max(stats.published - max(stats.delivered, self._first - 1), 0)

    def _on_stream(self, batch: Packets) -> None:
        """Take a batch from the subscription: ask for the gaps it reveals, then store it."""
        if self._held:
            return  # the subscription is being closed: the next one brings these
        sub = self._sub
        if sub is not None and sub.clock is not None and sub is not self._clock_link:
            self._clock_link = sub
            self._adopt(sub.clock)
        now = time.monotonic()
        self._sub_last = now
        self._sub_packets += len(batch)
        sequences = batch.sequence.astype(np.int64)
        chain = sequences if self._pending is None else np.concatenate(([self._pending], sequences))
        # A sequence counts as the subscription's progress once the next packet on it lies
        # above: a sequence corrupted far ahead is followed by lower ones (and doubted, see
        # Link._check_order), so it opens no gap of packets yet to come, nor fills the
        # window.  The last one waits for the next batch (or the subscription's end).
        confirmed = chain[:-1][chain[:-1] < chain[1:]]
        self._pending = int(chain[-1])
        limit = self.store.cursor + self._window  # the window's end: not taken now
        if len(confirmed) and int(confirmed.max()) >= limit:
            # Full: what lies beyond is left to the next subscription, opened once the
            # repairs caught up.
            self._hold()
            confirmed = confirmed[confirmed < limit]
        if int(sequences.max()) >= limit:
            batch = batch[sequences < limit]
        self._progress(confirmed, chain, now)
        if len(batch):
            self.session.add(batch, recovered=False)
        self._advance()

    def _progress(self, confirmed: npt.NDArray[np.int64], arrived: npt.NDArray[np.int64],
                  now: float) -> None:  # fmt: skip
        """Move past the highest of the ``confirmed`` sequences, asking for what did not arrive."""
        if not len(confirmed):
            return
        top = int(confirmed.max())
        self._sub_top = max(self._sub_top, top)
        seen = self._seen
        if top < seen:
            return
        inside = arrived[(arrived >= seen) & (arrived <= top)]
        if len(inside) > 1 and not bool((inside[1:] > inside[:-1]).all()):
            # Repeats or a reordered sequence: rare.  np.unique sorts (1.8 ms for a
            # 15,000-packet batch, before its gaps are asked for); an ascending run is
            # taken as it is.
            inside = np.unique(inside)
        previous = np.empty(len(inside), dtype=np.int64)
        previous[0] = seen - 1
        previous[1:] = inside[:-1]
        holes = np.flatnonzero(inside > previous + 1)
        if len(holes):
            self._ask(previous[holes] + 1, inside[holes], now)
        self._seen = top + 1
        self._sub_fresh += len(inside)
        self._sub_fresh_at = now
        self.stats.max_window = max(self.stats.max_window, self._seen - self.store.cursor)

    def _confirm_last(self, ended: bool) -> None:
        """Let the subscription's last sequence count: it ended there, or it was published."""
        pending, self._pending = self._pending, None
        if pending is None or self._held:
            return
        if ended or pending <= self.stats.published:
            last = np.array([pending], dtype=np.int64)
            self._progress(last, last, time.monotonic())

    def _on_repair(self, batch: Packets) -> None:
        self.session.add(batch, recovered=True)
        self._advance()

    def _ask(self, starts: npt.NDArray[np.int64], stops: npt.NDArray[np.int64],
             now: float, how: str = "range") -> None:  # fmt: skip
        """Ask for the runs ``starts[i] <= seq < stops[i]`` at once; time them from ``now``.

        ``how``: why they are asked for, as the events say (``range``: a gap the
        subscription showed; ``tail``: what was published and the subscription did not
        bring at its end or while it was quiet).
        """
        until = self.options.stop
        if until is not None:
            keep = starts <= until
            starts, stops = starts[keep], np.minimum(stops[keep], until + 1)
        if not len(starts):
            return
        stats = self.stats
        stats.gaps += len(starts)
        link = self._repair
        asked: float | None = None
        if link is not None and not link.lost:
            link.send(range_requests(np.stack([starts, stops - starts], axis=1)))
            asked = time.monotonic()
        else:
            how = "reconnect"  # the repair connection is being replaced: it asks for
            # everything missing once it is open again
        if asked is not None:
            self._count_requests(how, len(starts))
        self._gaps.extend(
            _Gap(start, stop, now, asked, how)
            for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
        )
        stats.gaps_open = len(self._gaps)

    def _ask_tail(self, last: int) -> None:
        """Ask for what was published up to ``last`` beyond what arrived or was asked for."""
        # Never beyond the window: the subscription brings the rest.
        last = min(last, self.store.cursor + self._window - 1)
        if last >= self._seen:
            start = self._seen
            self._seen = last + 1
            self._ask(np.array([start], np.int64), np.array([last + 1], np.int64),
                      time.monotonic(), "tail")  # fmt: skip
            self.stats.max_window = max(self.stats.max_window, self._seen - self.store.cursor)

    def _deliver(self, batch: Packets) -> None:
        stats = self.stats
        stats.packets += len(batch)
        stats.delivered = int(batch.sequence[-1])
        if stats.clock is not None:
            # Timed from its publication by the server's clock, every packet: a stall
            # delays all those published during it, and each is counted (measured from
            # when it was due, nothing is omitted).  Counted in the histogram a few
            # batches at a time (_count_latencies): a batch is often a hundred packets.
            self._handed.append((time.time(), batch.sequence))
            if len(self._handed) >= _COUNT_BATCHES:
                self._count_latencies()
        self._sink(batch)

    def _advance(self) -> None:
        """Hand on the contiguous prefix; time the gaps it closed; stop at the end."""
        session = self.session
        session.advance()
        self._tally()
        if self._gaps:
            now = time.monotonic()
            filled = self.store.contiguous()
            gaps = self._gaps
            repaired = self._repaired
            while gaps and gaps[0].stop <= filled:
                gap = gaps.popleft()
                repaired.append(now - gap.seen)
                if self._events is not None:
                    self._event_dict(gap.event(self._origin, now))
            self.stats.gaps_open = len(gaps)
        if session.doubts:
            doubted = session.lowest_doubt()
            if doubted is not None and doubted < self.store.contiguous():
                self._settle_due.set()
        if not session.flowing():
            self._pause()
        cursor = self.store.cursor
        if self._end is not None and cursor > self._end:
            self._finish("the feed ended")
        elif self.options.stop is not None and cursor > self.options.stop:
            self._finish("until reached")

    def _adopt(self, clock: FeedClock) -> None:
        """Time packets by ``clock`` if it agrees with the feed the hello described.

        Each subscription brings the clock frame again: one that moved says the server
        was started again, and is taken from then on.
        """
        current = self.stats.clock
        if clock == current:
            return
        info = self._info
        if info is not None and (clock.first != info.first or clock.final < info.last):
            log.warning(
                "the server's clock frame (sequences %d..%d) disagrees with its hello "
                "(%d..%d): no publication latency", clock.first, clock.final, info.first,
                info.last,
            )  # fmt: skip
            return
        if current is not None:
            self._count_latencies()  # what was handed on, by the clock it was published by
            log.warning(
                "the server's clock moved by %+.3f s: it was started again (packets are "
                "timed by its new clock; a server started on another feed cannot be told "
                "from it by the protocol)", (clock.epoch_ns - current.epoch_ns) / 1e9,
            )  # fmt: skip
        self.stats.clock = clock
        log.debug("the server publishes by its clock: %s", clock)

    def _count_latencies(self) -> None:
        """Count the latencies noted since the last time into the stats' histograms."""
        stats = self.stats
        if self._repaired:
            stats.repair.add_many(np.array(self._repaired))
            self._repaired.clear()
        if self._handed and stats.clock is not None:
            handed = self._handed
            sequences = np.concatenate([sequence for _, sequence in handed])
            moments = np.repeat([moment for moment, _ in handed],
                                [len(sequence) for _, sequence in handed])  # fmt: skip
            handed.clear()
            latencies = moments - stats.clock.published(sequences)
            early = float(latencies.min())
            if early < -_SKEW and not self._skew_told:
                self._skew_told = True
                log.warning(
                    "the server's clock is %.3f s ahead of this machine's (a packet handed "
                    "on before its publication): publication latencies below 0 count as 0",
                    -early,
                )  # fmt: skip
            stats.publication.add_many(latencies)

    def _tally(self) -> None:
        """Bring the counts the session and the store keep into the stats."""
        stats, session, store = self.stats, self.session, self.store
        stats.repaired = session.recovered
        stats.duplicates = store.duplicates
        stats.conflicts = store.conflicts
        stats.invalid = session.invalid

    def _reading(self) -> None:
        """Read each connection or not, as the consumer and the window allow."""
        for link, read in ((self._sub, not (self._paused or self._held)),
                           (self._repair, not self._paused)):  # fmt: skip
            transport = link.transport if link is not None and not link.lost else None
            if transport is not None and transport.is_reading() != read:
                if read:
                    transport.resume_reading()
                else:
                    transport.pause_reading()

    # events

    def _at(self, moment: float) -> float:
        """Return ``moment`` (monotonic) as the events say it: seconds since the start."""
        return round(moment - self._origin, 6)

    def _event(self, kind: str, **fields: Any) -> None:
        if self._events is not None:
            self._event_dict({"event": kind, **fields})

    def _event_dict(self, event: dict[str, Any]) -> None:
        if self._events is None:
            return
        try:
            self._events(event)
        except Exception as exc:
            # Raised here, it would be taken for a fault of the connection whose packets
            # were being handled: the follow ends instead, and says why.
            self._events = None
            self._events_error = f"the events callback raised {exc!r}"
            self._finish(self._events_error)

    def _hold(self) -> None:
        if not self._held:
            self._event("slow-down", at=self._at(time.monotonic()), why="window full",
                        sequence=self.store.cursor)  # fmt: skip
            self._held = True
            self._held_link = self._sub
            log.debug("window of %d packets full at %d: subscription closed", self._window,
                      self.store.cursor)  # fmt: skip
            if self._sub is not None:
                self._sub.abort()

    def _room(self) -> bool:
        """Return whether a subscription may be opened: the window is at most half full."""
        if self._held and self._seen - self.store.cursor <= self._window // 2:
            self._held = False
            self._event("resume", at=self._at(time.monotonic()), sequence=self.store.cursor)
        return not self._held

    def _pause(self) -> None:
        # The consumer is behind: stop reading, so the server's bound (not this
        # process's memory) absorbs it; the poll resumes reading once it caught up.
        if not self._paused:
            self._event("slow-down", at=self._at(time.monotonic()),
                        why="the consumer is behind", sequence=self.store.cursor)  # fmt: skip
            self._paused = True
            self._reading()

    def _resume(self) -> None:
        if self._paused and self.session.flowing():
            self._event("resume", at=self._at(time.monotonic()), sequence=self.store.cursor)
            self._paused = False
            self._reading()
            self._advance()

    def _finish(self, reason: str) -> None:
        if not self._done.is_set():
            self.stats.reason = reason
            self._done.set()
            for link in (self._sub, self._repair):
                if link is not None:
                    link.abort()  # wakes whoever waits on it

    # packets in doubt

    def _doubted(self) -> None:
        self._settle_due.set()

    def _forget_doubts(self) -> None:
        """Drop the doubts about sequences handed on or beyond the window (none held there)."""
        session = self.session
        if session.doubts:
            low = self.store.cursor
            high = low + self._window
            gone = [s for s in session.doubts if not low <= s < high]
            if gone:
                session.trust(gone)

    async def _settle_loop(self) -> None:
        """Settle by vote the packets in doubt that hold the prefix back, as a fetch does."""
        session, store = self.session, self.store
        while not self._done.is_set():
            await self._settle_due.wait()
            self._settle_due.clear()
            doubted = session.lowest_doubt()
            stop = store.contiguous()
            if doubted is None or doubted >= stop:
                continue
            # settle() trusts them at once (and settles copies that differ too, doubted
            # or not): the ceiling holds the prefix where it is until the vote is done.
            with session.limited(functools.partial(int, store.cursor - 1)):
                unsettled = await settle(session, self._copies, below=stop, level=logging.DEBUG)
            if unsettled:
                # Left out: asked for again (they are missing now), and in doubt still.
                log.debug("%d packet(s) in doubt without two copies agreeing: asking again",
                          len(unsettled))  # fmt: skip
                session.doubt(np.array(unsettled, dtype=np.int64))
            self._advance()

    def _on_copy(self, batch: Packets) -> None:
        self._copied.append(batch)

    async def _copies(self, wanted: list[int]) -> list[Packets]:
        """Return fresh copies of the packets ``wanted``, asked for on a connection of their own.

        The connection stays open from one vote to the next; one that fails or stays
        silent for ``timeout`` is dropped, and the next vote opens another.
        """
        session = self.session
        link = self._checker
        if link is None or link.lost:
            try:
                link = await session.open_link(sink=self._on_copy, retry_level=logging.DEBUG)
            except FetchError as exc:
                log.debug("cannot ask again for the packets in doubt: %s", exc)
                return []
            self._checker = link
        batches: list[Packets] = []
        self._copied = batches
        ranges = np.array([(s, 1) for s in wanted], dtype=np.int64).reshape(-1, 2)
        link.hello(restart=True)  # lower than the last vote's, maybe: a new ascending run
        link.send(range_requests(coalesce(ranges, 0)))
        link.hello()  # its answer comes after every copy
        if await link.wait_info(link.hellos, self.options.timeout) != "done":
            link.abort()
            session.forget(link)
            self._checker = None
        return batches

    # the run

    async def run(self, stopped: asyncio.Future[str] | None = None) -> FollowStats:
        """Follow until the end, ``until``, or ``stopped`` completes (with a reason)."""
        session = self.session
        tasks: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._start()),
            asyncio.ensure_future(self._done.wait()),
        ]
        try:
            while True:
                waits: set[asyncio.Future[Any]] = set(tasks)
                if stopped is not None:
                    waits.add(stopped)  # heeded while connecting too
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    if task in done:
                        task.result()  # FetchError and the like propagate
                if stopped is not None and stopped in done:
                    self._finish(stopped.result())
                if self._done.is_set():
                    break
                if tasks[0] in done:  # connected: now the two connections run
                    repair = tasks.pop(0).result()
                    tasks += [
                        asyncio.ensure_future(self._subscribe()),
                        asyncio.ensure_future(self._repair_loop(repair)),
                        asyncio.ensure_future(self._settle_loop()),
                    ]
        except FetchError as exc:
            self._finish(str(exc))  # the stats say why it stopped
            raise
        finally:
            self._finish(self.stats.reason or "stopped")
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            session.close_all()
            # Everything contiguous goes out, even past an output that is behind.
            session.advance(behind=True)
            self._note_lag()
            self._tally()
            self._count_latencies()
            confirmed = session.copies.confirmed(self.store.cursor - 1)
            self.stats.single_copy = max(self.stats.packets - confirmed, 0)
            self.stats.seconds = time.perf_counter() - self._started
            if self._events is not None:
                self._last_events()
        if self._events_error is not None:
            raise FetchError(self._events_error)
        return self.stats

    def _last_events(self) -> None:
        """Name the gaps still open at the end (never repaired), then the end itself."""
        for gap in self._gaps:
            self._event_dict(gap.event(self._origin, None))
        stats = self.stats
        self._event("end", at=self._at(time.monotonic()), reason=stats.reason,
                    packets=stats.packets, last=stats.delivered, gaps=stats.gaps,
                    reconnects=stats.reconnects)  # fmt: skip

    async def _start(self) -> Link:
        """Open the first repair connection; one reset before the hello's answer is retried."""
        options = self.options
        retry = options.retry()
        while True:
            link = await self._open_repair(first=True)
            if link.infos:
                return link
            # Reset (or failed otherwise) before the answer: retried like a refused connect.
            self.session.forget(link)
            if not retry.fail():
                raise FetchError(
                    f"{options.host}:{options.port}: the connection failed before the "
                    f"extension hello's answer {retry.failures} times in a row ({link.why()})"
                )
            await retry.pause(log, logging.DEBUG, "connection lost before the hello's answer (%s)",
                              link.why())  # fmt: skip

    async def _open_repair(self, *, first: bool = False) -> Link:
        """Open the repair connection, send a hello; ask again for everything missing."""
        options = self.options
        link = await self.session.open_link(
            recovering=True, sink=self._on_repair, retry_level=logging.DEBUG
        )
        self._repair = link
        if first:
            link.hello()
            await link.wait_info(1, options.timeout)
            if not link.infos:
                link.close()
                if link.lost and link.error is not None:
                    return link  # reset: the caller retries
                what = "closed the connection without answering" if link.lost else (
                    f"did not answer within {options.timeout:g} s")  # fmt: skip
                raise FetchError(
                    f"{options.host}:{options.port} {what} the extension hello: following "
                    f"needs a packetcore server"
                )
            info = self._info = link.infos[0]
            start = max(options.start or info.first, info.first)
            if options.stop is not None and options.stop < start:
                raise FetchError(f"until {options.stop} lies before the first sequence {start}")
            self.store.bound(start, options.stop)
            self._seen = self._first = start
            self._note_info(info)
            if start > info.last + 1:
                # Not an error (a live feed reaches it in time), but a silent wait could
                # be mistaken for a hang.
                log.info(
                    "waiting for sequence %d: the server has published up to %d so far",
                    start, info.last,
                )  # fmt: skip
            else:
                log.debug("following from %d; the server has published %d", start, info.last)
        else:
            missing = self._missing(self._seen)
            if len(missing):
                link.send(range_requests(missing))
                self._count_requests("reconnect", len(missing))
        return link

    def _count_requests(self, why: str, count: int) -> None:
        requests = self.stats.requests
        requests[why] = requests.get(why, 0) + count

    def _missing(self, stop: int) -> npt.NDArray[np.int64]:
        """Return the runs below ``stop`` not held, as ``(start, count)`` rows.

        Below ``_seen`` every one of them was asked for.  The store's own account ends
        at the highest sequence it held: the runs asked for beyond it (a feed's last
        packets, whose answers were lost) are missing too.
        """
        store = self.store
        if self.options.stop is not None:
            stop = min(stop, self.options.stop + 1)  # nothing beyond until is asked for
        missing = store.missing_ranges(stop)
        tail = max(store.last or 0, store.cursor - 1) + 1
        if tail < stop:
            missing = np.concatenate((missing, np.array([[tail, stop - tail]], np.int64)))
        return missing

    async def _subscribe(self) -> None:
        """Keep a subscription open from the first sequence not yet received or asked for."""
        options = self.options
        retry = options.retry()  # subscriptions in a row that brought nothing new
        failed = False  # whether the last subscription ended otherwise than cleanly
        while not self._done.is_set():
            while not self._room() and not self._done.is_set():
                await asyncio.sleep(POLL)  # the repairs are behind: they catch up first
            link = await self.session.open_link(sink=self._on_stream, retry_level=logging.DEBUG)
            if self._done.is_set():
                link.abort()
                return
            if failed:
                self.stats.reconnects += 1
                self._event("reconnect", at=self._at(time.monotonic()),
                            connection="subscription", sequence=self._seen)  # fmt: skip
            self._sub = link
            self._reading()
            start = self._seen
            self._sub_top = start - 1
            self._pending = None
            link.hello()
            link.framer.expect_clock()
            link.send(subscribe_request(start, clock=True))
            before = self._sub_fresh
            self._sub_last = self._sub_fresh_at = time.monotonic()
            state = await self._watch(link)
            link.abort()
            self.session.forget(link)
            self._confirm_last(state == "lost" and link.clean_end)
            got = self._sub_fresh - before  # repeats of what was seen are no progress
            if self._done.is_set():
                return
            if self._held_link is link:
                continue  # closed for the window, not failed
            info = link.infos[0] if link.infos else None
            if state == "lost" and link.clean_end and not got and info and info.last < start:
                # Subscribed beyond the last sequence published and closed at once: the
                # feed has ended; its last packets may still be on the repair connection.
                self._end = info.last
                log.debug("the feed ended at %d", info.last)
                self._advance()
                await self._done.wait()
                return
            log.debug("subscription from %d ended (%s, %d packets)", start, state, got)
            failed = not (state == "lost" and link.clean_end)
            if not failed and info is not None:
                # A clean end says the feed ended: what it published and this
                # subscription did not bring (its loss simulation) is asked for now, and the
                # next subscription, from beyond it, confirms the end.
                self._ask_tail(max(info.last, self.stats.published))
            if got:
                retry.succeeded()
            elif not retry.fail():
                raise FetchError(
                    f"{options.host}:{options.port}: the subscription brought nothing new "
                    f"{retry.failures} times in a row "
                    f"({state if state == 'silent' else link.why()})"
                )
            await retry.pause()  # none after a subscription that brought something

    async def _watch(self, link: Link) -> str:
        """Wait until the subscription ends, or brings nothing new while the server publishes on."""
        timeout = self.options.timeout

        def stale() -> bool:
            # Silent, or repeating what was seen (nothing new in order), while the server
            # says it published more.
            now = time.monotonic()
            if self._paused:
                self._sub_fresh_at = now  # reading stopped on purpose: the consumer is behind
                return False
            return now - self._sub_fresh_at >= timeout and self.stats.published > self._sub_top

        while True:
            state = await link.wait(lambda: self._done.is_set() or stale(), timeout)
            if self._done.is_set() or state == "lost":
                return state
            if state == "done":
                log.debug(
                    "nothing new on the subscription for %g s while the server published on "
                    "to %d: reconnecting", timeout, self.stats.published,
                )  # fmt: skip
                return "silent"

    async def _repair_loop(self, link: Link) -> None:
        """Poll with hellos; catch tail losses and unanswered asks; replace a lost link."""
        options = self.options
        retry = options.retry()
        unanswered = 0  # hellos in a row answered with the same sequence still missing
        stuck = -1
        published = -1  # what the previous hello's answer said was published
        while not self._done.is_set():
            if self._paused:
                self._resume()
                await asyncio.sleep(POLL)
                continue
            seen = self._seen
            asked_at = time.monotonic()
            quiet = asked_at - self._sub_last >= TAIL_QUIET
            packets = self._sub_packets
            link.hello()
            state = await link.wait_info(link.hellos, options.timeout)  # every one answered
            if self._done.is_set():
                return
            if state == "done":
                retry.succeeded()
                last = link.infos[-1].last
                steady, published = last == published, last
                if quiet and steady and packets == self._sub_packets and not self._held:
                    # The subscription's last packet was published: it counts (no resend).
                    self._confirm_last(False)
                    self._ask_tail(last if options.stop is None else min(last, options.stop))
                # Every answer to what was asked before the hello came before its answer.
                missing = self._missing(seen)
                lowest = int(missing[0, 0]) if len(missing) else -1
                # Unanswered only if the server says it has it: one restarted behind (its
                # clock started again) publishes it in time, and is waited for.
                held_there = 0 <= lowest <= last
                unanswered = unanswered + 1 if held_there and lowest == stuck else 0
                stuck = lowest
                if unanswered > options.retries:
                    raise FetchError(
                        f"{options.host}:{options.port}: the repair connection did not answer "
                        f"sequence {lowest} asked for {unanswered + 1} times in a row"
                    )
                if len(missing):
                    log.debug("%d gap(s) below %d unanswered: asking again", len(missing), seen)
                    # Lower than what was asked since: a new ascending run of answers.
                    link.hello(restart=True)
                    if unanswered:
                        # Asked again and still lost (a server that drops resends): the
                        # lowest sequence is asked for in more copies each round, so
                        # that loss alone does not exhaust the retries.  First, so that
                        # the answers still ascend (a copy repeated is no doubt).
                        copies = min(2**unanswered, MAX_COPIES) - 1
                        link.send(range_requests([[lowest, 1]] * copies))
                        self._count_requests("again", copies)
                    link.send(range_requests(missing))
                    self._count_requests("again", len(missing))
                self._forget_doubts()
                self._resume()
                self.session.advance()
                self._count_latencies()
                await asyncio.sleep(POLL)
                continue
            link.abort()
            self.session.forget(link)
            if not retry.fail():
                raise FetchError(
                    f"{options.host}:{options.port}: the repair connection failed "
                    f"{retry.failures} times in a row "
                    f"({'silent' if state == 'idle' else link.why()})"
                )
            why = "silent" if state == "idle" else "lost"
            log.debug("repair connection %s; reconnecting", why)
            self.stats.repair_reconnects += 1
            self._event("reconnect", at=self._at(time.monotonic()), connection="repair", why=why)
            await retry.pause()
            link = await self._open_repair()


async def run_follow(
    options: FetchOptions,
    sink: Sink,
    progress: Progress | None = None,
    *,
    stopped: asyncio.Future[str] | None = None,
    flowing: Callable[[], bool] | None = None,
    stats: Callable[[FollowStats], None] | None = None,
    window: int = WINDOW,
    events: Events | None = None,
) -> FollowStats:
    """Follow with ``options`` (``start``: from; ``stop``: until), passing batches to ``sink``.

    ``stopped`` ends the follow as a normal completion when it completes (with a reason);
    while ``flowing()`` is false the prefix waits and reading stops.  ``stats`` is called
    at once with the stats object the follow updates as it runs.  ``window`` bounds
    the out-of-order window in packets (see :data:`WINDOW`).  ``events`` is called with
    each event as it happens (:data:`EVENTS`), on the event loop: it must not block.
    """
    follower = _Follower(options, sink, progress, flowing, window, events)
    if stats is not None:
        stats(follower.stats)
    return await follower.run(stopped)


class Follow:
    """The packets of a live feed, as an async iterator of contiguous batches in order.

    Made by :func:`follow`.  ``stats`` is updated as it runs.  Leaving an ``async for``
    early does not stop the follow: use ``async with`` or call :meth:`aclose`.
    """

    def __init__(self, options: FetchOptions, window: int = WINDOW) -> None:
        self.options = options
        self._batches: deque[Packets] = deque()
        self._queued = 0
        self._arrived = asyncio.Event()
        self._follower = _Follower(options, self._put, flowing=self._flowing, window=window)
        self.stats: FollowStats = self._follower.stats
        self._task: asyncio.Task[FollowStats] | None = None
        self._stopped: asyncio.Future[str] | None = None

    def _put(self, batch: Packets) -> None:
        self._batches.append(batch)
        self._queued += len(batch)
        self._arrived.set()

    def _flowing(self) -> bool:
        return self._queued < QUEUE_LIMIT

    def _start(self) -> asyncio.Task[FollowStats]:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._stopped = loop.create_future()
            self._task = loop.create_task(self._follower.run(self._stopped))
            self._task.add_done_callback(lambda _: self._arrived.set())
        return self._task

    def __aiter__(self) -> AsyncIterator[Packets]:
        return self

    async def __anext__(self) -> Packets:
        task = self._start()
        while not self._batches:
            if task.done():
                task.result()  # an error of the follow is raised here
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        batch = self._batches.popleft()
        self._queued -= len(batch)
        if self._queued < QUEUE_LIMIT // 2:
            self._follower._resume()
        return batch

    async def aclose(self) -> None:
        """Stop following (connections closed); the stats stay readable."""
        if self._task is None:
            return
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result("stopped")
        with contextlib.suppress(Exception):
            await self._task
        self._batches.clear()

    async def __aenter__(self) -> Follow:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:  # fmt: skip
        await self.aclose()


def follow(
    host: str = FetchOptions.host,
    port: int = FetchOptions.port,
    *,
    start: int | None = None,
    until: int | None = None,
    window: int = WINDOW,
    **options: Any,
) -> Follow:
    """Follow the live feed at ``host:port`` from ``start`` (default: its first) to ``until``.

    Return an async iterator of :class:`~packetcore.Packets` batches, each contiguous
    and in sequence order, with ``stats`` (:class:`FollowStats`) readable during and
    after.  ``options`` are the fields of :class:`FetchOptions` (``timeout``,
    ``retries``, ``backoff``, ...); ``window`` bounds the packets held out of order
    (:data:`WINDOW`).  The iteration ends at ``until`` or at the end of a
    finite feed; it raises :class:`~packetcore.FetchError` if the server cannot be
    followed (no server, no extension, connections failing past ``retries``).
    """
    return Follow(FetchOptions(host=host, port=port, start=start, stop=until, **options), window)
