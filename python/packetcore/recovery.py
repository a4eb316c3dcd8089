"""The machinery of a fetch: connections that decode into one store, retried with backoff.

Each connection is a :class:`Link`, an asyncio protocol with its own streaming
:class:`~packetcore.Decoder`: every chunk the socket delivers is decoded on arrival and
its packets go straight into the session's :class:`~packetcore.PacketStore`, so
nothing is buffered beyond one incomplete packet and nothing is copied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .engine import PACKET_SIZE, Decoder, PacketStore
from .errors import PacketcoreError
from .packets import Packets
from .protocol import DEFAULT_PORT, INFO_MAGIC, INFO_SIZE, FeedInfo, decode_info

__all__ = [
    "FetchError",
    "FetchOptions",
    "Link",
    "Progress",
    "Protocol",
    "Session",
    "Wait",
    "backoff_delay",
]

log = logging.getLogger("packetcore.fetch")

Protocol = Literal["auto", "base", "extended"]
#: How a wait ended: what was awaited happened, the connection ended, or it went silent.
Wait = Literal["done", "lost", "idle"]
#: Called as packets arrive with (distinct packets held, packets expected or None).
Progress = Callable[[int, "int | None"], None]

# An info frame at a packet boundary is told from a packet by its fifth byte: the
# version's high byte is 0, which no packet's buy/sell indicator ('B'/'S') can be.
_INFO_START = INFO_MAGIC + b"\0"
_MAX_BACKOFF = 5.0


class FetchError(PacketcoreError):
    """A fetch that could not get anything: no connection, or a server that is not one."""


@dataclass(frozen=True)
class FetchOptions:
    """How a fetch talks to its server; see :func:`packetcore.fetch` for each field."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    protocol: Protocol = "auto"
    hello_timeout: float = 0.2
    timeout: float = 5.0
    retries: int = 5
    backoff: float = 0.1
    confidence: float = 1e-6
    max_passes: int = 100

    def __post_init__(self) -> None:
        if self.protocol not in ("auto", "base", "extended"):
            raise ValueError(f"protocol must be auto, base or extended, not {self.protocol!r}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        for name in ("hello_timeout", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.backoff < 0:
            raise ValueError(f"backoff must not be negative, not {self.backoff}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, not {self.retries}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, not {self.confidence}")
        if self.max_passes < 1:
            raise ValueError(f"max_passes must be at least 1, not {self.max_passes}")


def backoff_delay(failures: int, base: float) -> float:
    """Return the pause before retry number ``failures`` (1, 2, ...): doubling, capped."""
    return float(min(base * 2 ** max(failures - 1, 0), max(base, _MAX_BACKOFF)))


class Link(asyncio.Protocol):
    """One connection to the server: bytes in, packets into the session's store.

    ``expect_info`` counts info frames still due on this connection (answers to
    hellos); while it is non-zero the stream is split at packet boundaries into
    packets and info frames.  ``late_info`` marks a connection whose hello went
    unanswered in time: its first bytes may still be that answer.
    """

    def __init__(
        self,
        session: Session,
        number: int,
        *,
        recovering: bool,
        sink: Callable[[Packets], None] | None = None,
    ) -> None:
        self.session = session
        self.number = number
        self.recovering = recovering
        #: Where decoded batches go instead of the session's store (checking copies).
        self.sink = sink
        #: The sequence of the last packet decoded: answers come in ascending order.
        self.last_sequence = 0
        self.decoder = Decoder()
        #: How many packets of a batch were asked for though already held (re-asked on
        #: purpose: later passes, coalesced ranges); ``None``: none were.
        self.asked: Callable[[Packets], int] | None = None
        self.transport: asyncio.Transport | None = None
        self.packets = 0
        self.infos: list[FeedInfo] = []
        self.expect_info = 0
        self.late_info = False
        self.lost = False
        self.error: BaseException | None = None
        #: Whether the fetch dropped this connection because what it sent could not be
        #: handled (a malformed info frame, ...); ``error`` says why.
        self.broken = False
        self._held = bytearray()
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
            if self.late_info:
                self._late_info(data)
            elif self.expect_info:
                self._frames(data)
            else:
                self._packets(data)
        except Exception as exc:
            # Nothing may escape into asyncio (it would only log "Fatal error:
            # protocol.data_received() call failed" and leave the fetch waiting): a
            # malformed info frame, an info frame the store cannot take, or any other
            # failure drops this connection and is kept as the reason it ended.
            if isinstance(exc, PacketcoreError):
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

    def _packets(self, chunk: bytes | bytearray | memoryview) -> None:
        batch = self.decoder.feed(chunk)
        if len(batch.invalid):
            self.session.note_invalid(self.number, batch.invalid + self._skipped)
        if len(batch):
            self._check_order(batch.sequence)
            self.packets += len(batch)
            if self.sink is not None:
                self.sink(batch)
            else:
                self.session.add(batch, self)

    def _check_order(self, sequences: npt.NDArray[np.int32]) -> None:
        # Every answer on one connection comes in ascending sequence order: a stream-all,
        # the ranges of a round (asked in order), pipelined resends (asked in order).  A
        # packet at or below its predecessor was duplicated or reordered on the way, or
        # one of the two has a corrupted sequence field: both are asked for again before
        # the fetch trusts them (Session.doubts).
        previous = np.empty_like(sequences)
        previous[0] = self.last_sequence
        previous[1:] = sequences[:-1]
        broken = sequences <= previous
        if broken.any():
            self.session.doubt(sequences[broken])
            self.session.doubt(previous[broken][previous[broken] > 0])
        self.last_sequence = int(sequences[-1])

    def _late_info(self, data: bytes) -> None:
        # The only place a late answer to the probe hello can be is the very start.
        held = self._held
        held += data
        if len(held) < len(_INFO_START) and _INFO_START.startswith(held):
            return
        self.late_info = False
        if held.startswith(_INFO_START):
            self.expect_info += 1
            data = bytes(held)
            held.clear()
            self._frames(data)
            return
        data = bytes(held)
        held.clear()
        self._packets(data)

    def _frames(self, data: bytes) -> None:
        # Whole chunks go to the decoder uncopied; only a possible info frame's first
        # bytes (under 16) are ever held back.
        held = self._held
        if held:
            data = bytes(held) + data
            held.clear()
        view = memoryview(data)
        at = 0
        while self.expect_info:
            # Packet boundaries in data lie at `boundary + 17 * i`.
            boundary = at + (-self.decoder.pending) % PACKET_SIZE
            found = data.find(INFO_MAGIC, boundary)
            while found >= 0 and (found - boundary) % PACKET_SIZE:
                found = data.find(INFO_MAGIC, found + 1)
            if found < 0:
                end = len(data)
                keep = end
                if boundary < end:
                    tail = boundary + (end - boundary) // PACKET_SIZE * PACKET_SIZE
                    if tail < end and _INFO_START.startswith(data[tail:end]):
                        keep = tail  # could be the start of an info frame: wait for more
                if keep > at:
                    self._packets(view[at:keep])
                at = keep
                break
            if found > at:
                self._packets(view[at:found])
            at = found
            if len(data) - at < len(_INFO_START):
                break
            if data[at + len(INFO_MAGIC)] != 0:
                step = min(PACKET_SIZE, len(data) - at)  # a packet whose symbol is PKCI
                self._packets(view[at : at + step])
                at += step
                continue
            if len(data) - at < INFO_SIZE:
                break
            info = decode_info(data[at : at + INFO_SIZE])
            self.session.note_info(info)  # first: a frame it refuses is not counted
            self.infos.append(info)
            at += INFO_SIZE
            self._skipped += INFO_SIZE
            self.expect_info -= 1
        if at < len(data):
            if self.expect_info:
                held += view[at:]
            else:
                self._packets(view[at:])

    # control

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
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, idle)
            except asyncio.TimeoutError:
                return "done" if done() else "idle"
            finally:
                self._waiter = None
        return "done"

    async def wait_closed(self, idle: float) -> Wait:
        """Wait for the server to close the connection (the end of a stream-all)."""
        state = await self.wait(lambda: self.lost, idle)
        if state == "done" and self.error is not None:
            return "lost"  # reset, not a clean end of stream
        return state

    @property
    def clean_end(self) -> bool:
        """Whether the connection ended with EOF on a packet boundary, no error."""
        return self.lost and self.error is None and self.decoder.pending == 0


class Session:
    """What one fetch has gathered so far, and how it opens connections."""

    def __init__(self, options: FetchOptions, progress: Progress | None = None) -> None:
        self.options = options
        self.progress = progress
        self.store = PacketStore()
        self.info: FeedInfo | None = None
        self.received = 0
        self.recovered = 0
        self.asked_repeats = 0
        self.invalid_offsets: list[tuple[int, int]] = []
        self.connections = 0
        self.links: list[Link] = []
        #: Sequences whose held packet may be wrong (see Link._check_order).
        self.doubts: set[int] = set()
        #: How many stream-all passes ended on each sequence (base protocol).
        self.pass_ends: Counter[int] = Counter()

    @property
    def expected(self) -> int | None:
        """How many packets the feed holds, once the server has said."""
        return None if self.info is None else self.info.last - self.info.first + 1

    def note_info(self, info: FeedInfo) -> None:
        """Learn the feed's extent from an info frame (the first one counts)."""
        if self.info is not None:
            return
        # Size the store first: if it cannot take the frame's extent (ValueError), the
        # feed stays unknown and Link.data_received drops the connection.
        if len(self.store) == 0:
            self.store = PacketStore(info.first, info.last)
        else:
            self.store.last = info.last
        self.info = info

    @property
    def duplicates(self) -> int:
        """Identical packets received again that the fetch did not ask for again."""
        return self.store.duplicates - self.asked_repeats

    def add(self, batch: Packets, link: Link) -> None:
        """Store a batch decoded on ``link`` and count it."""
        store = self.store
        duplicates = store.duplicates
        new = store.add(batch)
        self.received += len(batch)
        if link.recovering:
            self.recovered += new
        repeats = store.duplicates - duplicates
        if repeats and link.asked is not None:
            self.asked_repeats += min(repeats, link.asked(batch))
        if self.progress is not None and new:
            self.progress(len(self.store), self.expected)

    def doubt(self, sequences: npt.NDArray[np.int32]) -> None:
        """Mark ``sequences`` to be asked for again before their packets are trusted."""
        self.doubts.update(sequences.tolist())

    def note_invalid(self, connection: int, offsets: npt.NDArray[np.int64]) -> None:
        """Record packets the decoder rejected, by connection and byte offset."""
        listed = [(connection, int(offset)) for offset in offsets.tolist()]
        self.invalid_offsets.extend(listed)
        shown = ", ".join(str(offset) for _, offset in listed[:10])
        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
        log.warning(
            "connection %d: %d invalid packet(s) at byte offset(s) %s%s; not kept",
            connection, len(listed), shown, more,
        )  # fmt: skip

    async def open_link(
        self, *, recovering: bool = False, sink: Callable[[Packets], None] | None = None
    ) -> Link:
        """Connect to the server, retrying with exponential backoff; raise FetchError.

        ``sink`` receives the decoded batches instead of the session's store.
        """
        options = self.options
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self.connections += 1
            number = self.connections

            def factory(number: int = number) -> Link:
                return Link(self, number, recovering=recovering, sink=sink)

            try:
                _, link = await asyncio.wait_for(
                    loop.create_connection(factory, options.host, options.port),
                    options.timeout,
                )
            except (OSError, asyncio.TimeoutError) as exc:
                failures += 1
                reason = _describe(exc) if isinstance(exc, OSError) else "timed out"
                if failures > options.retries:
                    raise FetchError(
                        f"cannot connect to {options.host}:{options.port}: {reason} "
                        f"({failures} attempt{'' if failures == 1 else 's'})"
                    ) from exc
                delay = backoff_delay(failures, options.backoff)
                log.info(
                    "connecting to %s:%d: %s; retrying in %.2f s",
                    options.host, options.port, reason, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            self.links.append(link)
            log.debug("connection %d open to %s:%d", number, options.host, options.port)
            return link

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
    return exc.strerror or str(exc) or type(exc).__name__
