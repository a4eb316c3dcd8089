"""A feed in a NATS JetStream stream: captured into one, read and served back from one.

``nats://HOST:PORT[,HOST:PORT...]/STREAM`` names a stream (created on first capture,
``?replicas=N`` copies, default 1).  The layout (docs/nats.md) is one message per
**block**: up to :data:`BLOCK_PACKETS` packets, contiguous and ascending, as raw 17-byte
packets (the ``.bin`` format), on the subject ``packetcore.STREAM``, with headers
``Packetcore-Layout`` (:data:`LAYOUT`), ``Packetcore-First`` and ``Packetcore-Last``.
Blocks follow each other without gap or overlap: the stream holds the feed from its
first sequence to the last block's ``Packetcore-Last``, exactly once.

A capture (:class:`NatsOutput`) resumes after what the stream holds.  Each block is
published with ``Nats-Expected-Last-Sequence`` (the stream sequence the block before
it got) and, but for the first after a look at the stream, ``Nats-Expected-Last-Msg-Id``
(the id of the block before it): a publish that would land after anything else, a
second writer's block or one the broker had stored unacknowledged, is refused.  Its
``Nats-Msg-Id`` (first and last sequence, the stream sequence it follows and a token of
the capture's own) makes the same publish sent twice land once, and never takes another
capture's block for one of its own.  A refusal, a timeout or a lost broker stops
the publishing; what the stream holds is read again and the blocks after it are
published again, per the fetch's ``--retries``; past them, the capture fails naming
the last sequence stored.

nats-py, the NATS project's client, is the optional extra ``packetcore[nats]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..engine import MAX_SEQUENCE, PACKET_SIZE, decode, encode
from ..errors import FeedError, MissingDependencyError, OutputError, PacketcoreError
from ..packets import Packets
from . import hide_credentials

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = [
    "BLOCK_PACKETS",
    "LAYOUT",
    "ForeignStream",
    "NatsError",
    "NatsOutput",
    "NatsTarget",
    "Stopped",
    "StreamTail",
    "read_stream",
    "stored_to",
    "write_stream",
]

log = logging.getLogger("packetcore.nats")

#: The version of the layout the headers name.
LAYOUT = "1"
#: Packets a block holds at most (69,632 bytes: well under a broker's 1 MB payload).
BLOCK_PACKETS = 4096
#: Publishes awaiting their acknowledgement at most.
WINDOW = 16
#: How long a publish, a connection or a read of the stream may take.
TIMEOUT = 5.0
#: Blocks asked for at once when the stream is read.
READ_BATCH = 64

#: JetStream's refusals of a publish whose expected last sequence or message id is not
#: the stream's: wrong last sequence, wrong last message id.
_WRONG_LAST = (10071, 10070)
_FIRST = "Packetcore-First"
_LAST = "Packetcore-Last"
_LAYOUT = "Packetcore-Layout"
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
# A host name, an IPv4 address or an IPv6 one in brackets: no blank, ':' or '@'.
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[^\s:@\[\]/?#,]+")
_EXTRA = "nats:// needs the 'nats' extra: pip install 'packetcore[nats]'"

T = TypeVar("T")


class NatsError(OutputError, FeedError):
    """A stream that cannot be reached, written or read as a feed: one line."""


class Stopped(NatsError):
    """A wait given up because the command was asked to stop (the message says why)."""


class ForeignStream(NatsError):
    """A stream that holds something other than packetcore blocks, or not in order."""


@dataclass(frozen=True)
class NatsTarget:
    """A stream named by a ``nats://`` URL: the brokers to try, the stream, its copies."""

    servers: tuple[str, ...]
    stream: str
    replicas: int = 1

    @classmethod
    def parse(cls, url: str) -> NatsTarget:
        """Read ``nats://[CREDENTIALS@]HOST:PORT[,HOST:PORT...]/STREAM[?replicas=N]``;
        ValueError if not.

        The credentials (``USER:PASSWORD`` or a token) come once, before the hosts, and
        go to each: everything up to the URL's last ``@``, whatever it holds (``,``,
        ``/``, ``@``), since a stream's name and options hold none.
        """
        scheme, rest = url[:7], url[7:]
        credentials, at, rest = rest.rpartition("@")
        parts = urlsplit(f"nats://{rest}")
        if scheme.lower() != "nats://" or not parts.netloc or parts.fragment:
            raise ValueError(f"{_shown(url)!r}: expected nats://HOST:PORT/STREAM")
        servers = []
        for where in parts.netloc.split(","):
            host, _, port = where.rpartition(":")
            if not _HOST.fullmatch(host) or not _digits(port) or not 1 <= int(port) <= 0xFFFF:
                raise ValueError(f"{_shown(url)!r}: {where!r} is no HOST:PORT (port in 1..65535)")
            servers.append(f"nats://{credentials}{at}{where}")
        stream = parts.path.lstrip("/")
        if not _STREAM_NAME.fullmatch(stream):
            raise ValueError(
                f"{_shown(url)!r}: the stream name {stream!r} must be 1-200 letters, digits, "
                "'-' or '_'"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        replicas = 1
        for key, values in query.items():
            if key != "replicas":
                raise ValueError(f"{_shown(url)!r}: unknown option {key!r} (known: replicas)")
            if not _digits(values[-1]) or not 1 <= int(values[-1]) <= 5:
                raise ValueError(f"{_shown(url)!r}: replicas must be 1..5, not {values[-1]!r}")
            replicas = int(values[-1])
        return cls(tuple(servers), stream, replicas)

    @property
    def subject(self) -> str:
        """The subject the blocks are published on."""
        return f"packetcore.{self.stream}"

    @property
    def url(self) -> str:
        """The URL, as one line names it (no credentials)."""
        hosts = ",".join(s.removeprefix("nats://").rpartition("@")[2] for s in self.servers)
        return f"nats://{hosts}/{self.stream}"


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _shown(text: str) -> str:
    """Return ``text`` (a URL, or one host of it) with any credentials hidden."""
    if "://" in text:
        return hide_credentials(text)
    return f"***@{text.rpartition('@')[2]}" if "@" in text else text


def _target(url: str, error: type[Exception]) -> NatsTarget:
    try:
        return NatsTarget.parse(url)
    except ValueError as exc:
        raise error(str(exc)) from None


def _client() -> Any:
    try:
        import nats
    except ImportError:
        raise MissingDependencyError(_EXTRA) from None
    return nats


def block_id(first: int, last: int, expected: int, writer: str) -> str:
    """Return the message id of block ``first..last`` published by capture ``writer``
    after stream sequence ``expected``.

    The same publish again has the same id, so the broker keeps one.  Another capture's
    block never has it, though it may hold the same sequences at the same place (two
    captures of different feeds racing into one stream): taken for a copy, it would be
    acknowledged as stored where nothing of this capture is.  Nor does a capture after a
    purge collide with ids the broker still remembers.
    """
    return f"{first}-{last}@{expected}/{writer}"


def block_headers(
    first: int, last: int, expected: int, writer: str, after: str | None
) -> dict[str, str]:
    """Return the headers of capture ``writer``'s block ``first..last``, to land after
    stream sequence ``expected`` and, if ``after`` is given, right after the message of
    that id."""
    headers = {
        _LAYOUT: LAYOUT,
        _FIRST: str(first),
        _LAST: str(last),
        "Nats-Msg-Id": block_id(first, last, expected, writer),
        "Nats-Expected-Last-Sequence": str(expected),
    }
    if after is not None:
        headers["Nats-Expected-Last-Msg-Id"] = after
    return headers


def _block_range(headers: dict[str, str] | None, payload: int, where: str) -> tuple[int, int]:
    """Return the first and last sequence a stored block's headers name; NatsError if foreign."""
    headers = headers or {}
    if headers.get(_LAYOUT) != LAYOUT:
        found = headers.get(_LAYOUT)
        raise ForeignStream(
            f"{where} is no packetcore block"
            + (
                f" (layout {found!r}, not {LAYOUT!r})"
                if found is not None
                else " (no layout header)"
            )
        )
    try:
        first, last = int(headers[_FIRST]), int(headers[_LAST])
        if not (_digits(headers[_FIRST]) and _digits(headers[_LAST])):
            raise ValueError("not plain digits")
    except (KeyError, ValueError):
        raise ForeignStream(
            f"{where}: its first and last sequence headers are missing or bad"
        ) from None
    if not 1 <= first <= last <= MAX_SEQUENCE or payload != (last - first + 1) * PACKET_SIZE:
        raise ForeignStream(
            f"{where}: {payload} bytes do not hold packets {first}..{last} "
            f"({PACKET_SIZE} bytes each)"
        )
    return first, last


def _stored_block(msg: Any, target: NatsTarget, following: int | None, where: str) -> Packets:
    """Check a stored message as the block that continues at ``following`` (None: any);
    return its packets.  ForeignStream if it is none."""
    if msg.subject != target.subject:
        raise ForeignStream(f"{where} is on {msg.subject!r}, not {target.subject!r}")
    data = msg.data or b""
    first, last = _block_range(msg.headers, len(data), where)
    if following is not None and first != following:
        raise ForeignStream(f"{where}: block {first}..{last} does not follow {following - 1}")
    try:
        packets = decode(data, strict=True)
    except ValueError as exc:
        raise ForeignStream(f"{where}: {exc}") from None
    seq = packets.sequence.astype(np.int64)
    if seq[0] != first or seq[-1] != last or not bool(np.all(np.diff(seq) == 1)):
        raise ForeignStream(f"{where}: its packets are not {first}..{last}")
    return packets


def _packet(packets: Packets) -> str:
    """Return the first of ``packets`` as ``SYMBOL SIDE QUANTITY @ PRICE``."""
    symbol, side, quantity, price, _ = next(packets.rows())
    return f"{symbol.decode(errors='replace')} {side.decode(errors='replace')} {quantity} @ {price}"


def _discarding(config: Any) -> str:
    """Return the limits by which a stream removes messages by itself ('' if none).

    With ``discard: new`` a limit refuses a publish instead: the capture fails saying so.
    """
    retention = str(getattr(config.retention, "value", config.retention) or "limits")
    limits = [] if retention == "limits" else [f"retention {retention}"]
    if str(getattr(config.discard, "value", config.discard) or "old") == "old":
        for name in ("max_msgs", "max_bytes", "max_age", "max_msgs_per_subject"):
            value = getattr(config, name, None)
            if value is not None and value > 0:
                limits.append(f"{name} {value:g}")
    return ", ".join(limits)


class Tail(NamedTuple):
    """A stream's end: its last message's stream sequence, the last packet sequence that
    block holds (None: no block), its message id (None: none) and that last packet, as
    17 bytes (None: no block)."""

    seq: int
    last: int | None
    msg_id: str | None
    packet: bytes | None = None


class _Broker:
    """One connection to a stream's brokers, on the loop that made it."""

    def __init__(self, target: NatsTarget, timeout: float, retries: int = 2,
                 backoff: float = 0.2) -> None:  # fmt: skip
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None

    @property
    def connected(self) -> bool:
        """Whether the client is connected, or reconnecting by itself."""
        return self.nc is not None and not self.nc.is_closed

    async def connect(self) -> JetStreamContext:
        """Connect: each broker tried ``retries`` times more, ``backoff`` s apart, at most.

        Lost later, the client reconnects by itself as many times; past them it closes,
        and the next :meth:`connect` starts again.
        """
        nats = _client()
        await self.close()
        try:
            self.nc = await nats.connect(
                servers=list(self.target.servers),
                connect_timeout=self.timeout,
                allow_reconnect=True,
                max_reconnect_attempts=max(self.retries, 1),  # 0 would be: for ever
                reconnect_time_wait=max(self.backoff, 0.05),
                error_cb=_quiet,
                disconnected_cb=_nothing,
                closed_cb=_nothing,
                reconnected_cb=_nothing,
            )
        except Exception as exc:
            raise NatsError(f"{self.target.url}: cannot connect: {_why(exc)}") from exc
        self.js = self.nc.jetstream(timeout=self.timeout)
        return self.js

    async def ensure_stream(self, create: bool) -> Any:
        """Return the stream's info; with ``create``, make it if it is not there."""
        from nats.js.errors import NotFoundError

        assert self.js is not None
        target = self.target
        try:
            info = await self.js.stream_info(target.stream)
        except NotFoundError:
            if not create:
                raise NatsError(f"{target.url}: no such stream") from None
            try:
                info = await self.js.add_stream(
                    name=target.stream, subjects=[target.subject],
                    num_replicas=target.replicas, allow_direct=True,
                    duplicate_window=120.0,
                )  # fmt: skip
            except Exception as exc:
                raise NatsError(f"{target.url}: cannot create the stream: {_why(exc)}") from exc
        except Exception as exc:
            raise NatsError(f"{target.url}: {_why(exc)}") from exc
        if target.subject not in (info.config.subjects or []):
            raise ForeignStream(
                f"{target.url}: the stream takes {info.config.subjects}, not {target.subject!r}: "
                "it holds something else"
            )
        return info

    async def tail(self) -> Tail:
        """Return the stream's last message sequence, the last packet sequence stored and
        that block's message id.

        The message at that sequence is read by its sequence (a writer may append more
        meanwhile: the three stay consistent); it must be a block.
        """
        from nats.js.errors import NotFoundError

        assert self.js is not None
        info = await self.ensure_stream(create=False)
        last_seq = int(info.state.last_seq)
        if not info.state.messages:
            return Tail(last_seq, None, None)
        where = f"{self.target.url}: stream sequence {last_seq}"
        try:
            msg = await self.js.get_msg(
                self.target.stream, last_seq, direct=bool(info.config.allow_direct)
            )
        except NotFoundError:
            raise NatsError(f"{where}: its last message is gone (deleted?)") from None
        if msg.subject != self.target.subject:
            raise ForeignStream(
                f"{where} is on {msg.subject!r}, not {self.target.subject!r}: the stream "
                "holds something else"
            )
        data = msg.data or b""
        _, last = _block_range(msg.headers, len(data), where)
        return Tail(last_seq, last, (msg.headers or {}).get("Nats-Msg-Id"), data[-PACKET_SIZE:])

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), self.timeout)


async def _quiet(exc: Exception) -> None:
    return None  # the client's own reports: what fails is said where it matters


async def _nothing() -> None:
    return None


def _why(exc: BaseException) -> str:
    """Return a client error as a few words."""
    if isinstance(exc, PacketcoreError):
        return str(exc)
    from nats.errors import NoRespondersError, NoServersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import NoStreamResponseError

    if getattr(exc, "err_code", None) in _WRONG_LAST:
        return "another writer publishes into the stream (a block did not land where it was due)"
    if isinstance(exc, (NoServersError, ConnectionRefusedError)):
        return "no broker answered (is nats-server running?)"
    if isinstance(exc, (NatsTimeout, TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, (NoRespondersError, NoStreamResponseError)):
        return "no responders (is JetStream enabled, or is the stream's leader gone?)"
    return str(exc).strip() or type(exc).__name__


class _Loop:
    """An event loop on a thread of its own, for code called from any other thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None,
            stop: Callable[[], str | None] | None = None) -> T:  # fmt: skip
        """Run ``coro`` on the loop and return its result, waiting at most ``timeout``.

        ``stop``, asked every 0.1 s, gives up the wait with :class:`Stopped` when it
        says why (a request to stop the command, a deadline).
        """
        future = asyncio.run_coroutine_threadsafe(_awaited(coro), self.loop)
        ends = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if ends is None else max(ends - time.monotonic(), 0.0)
                try:
                    return future.result(left if stop is None else min(left or 0.1, 0.1))
                except FutureTimeout:
                    if ends is not None and time.monotonic() >= ends:
                        raise
                    why = None if stop is None else stop()
                    if why is not None:
                        raise Stopped(why) from None
        except BaseException:
            future.cancel()
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Cancel what runs on the loop (the client's own tasks too), then end it."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            with contextlib.suppress(Exception):
                self.run(_cancel_the_rest(), 2.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not threading.current_thread():
            self.thread.join(2.0)
        if not self.thread.is_alive():
            self.loop.close()


def _pause(backoff: float, attempt: int) -> float:
    """Return the pause before retry ``attempt`` (1, 2, ...): doubled each time, to 5 s."""
    return min(backoff * 2.0 ** (attempt - 1), 5.0)


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop, and wait (a second) for them to end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro


@dataclass
class _Block:
    first: int
    last: int
    payload: bytes
    msg_id: str | None = None  # once published: its latest id
    ids: list[str] = field(default_factory=list)  # every id it was published with

    @property
    def count(self) -> int:
        return self.last - self.first + 1


class NatsOutput:
    """A fetch's output into a JetStream stream: the :class:`~packetcore.io.sink.Output` API.

    Opening connects, creates the stream if need be and reads what it holds:
    :attr:`resume_after` (the last sequence stored, None if nothing) is where the fetch
    starts again.  Batches (:meth:`put`) are cut into blocks and published at once, at
    most :data:`WINDOW` unacknowledged; :attr:`written` counts the packets acknowledged.
    Only a contiguous run is published: at a batch that skips a sequence (an incomplete
    fetch's last flush), publishing stops, so that the stream never holds a gap.

    A packet handed over again that the stream holds (the one it ends with) must be the
    stream's, byte for byte: else the packets are another feed's, and nothing is
    published.  ``verify``: the packets must hold that one (a fetch asks for it again to
    check that the exchange serves the stream's feed); ones that go on without it are
    refused.
    """

    def __init__(self, url: str, *, retries: int = 5, backoff: float = 0.2,
                 timeout: float = TIMEOUT, verify: bool = False,
                 stop: Callable[[], str | None] | None = None) -> None:  # fmt: skip
        self.target = _target(url, NatsError)
        self.name = self.target.url
        self.form = "bin"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.queued = 0
        self.written = 0
        self.error: BaseException | None = None
        #: Packets handed over that were not published: after a gap, or before the
        #: stream's resume point.
        self.dropped = 0
        self._failed: Callable[[str], None] = lambda reason: None
        self._loop = _Loop("packetcore-nats")
        self._broker = _Broker(self.target, timeout, retries, backoff)
        self._pending: deque[Packets] = deque()
        self._next: int | None = None  # the sequence the next packet must have
        self._gap: int | None = None  # the first sequence missing: nothing after it goes
        self._wake: asyncio.Event | None = None  # set when a batch arrives (on the loop)
        self._last_id: str | None = None  # the id of the block published last in this run
        self._writer = secrets.token_hex(8)  # this capture's part of its blocks' ids
        self._closing = False
        self._done: asyncio.Future[None] | None = None
        self._pump: asyncio.Future[None] | None = None
        self._kept_from: int | None = None  # the stream's first sequence when opened
        try:
            tail = self._loop.run(self._open(), stop=stop)
        except BaseException:
            self._close()
            raise
        self._stream_seq = tail.seq
        self._blocks = 0  # blocks this capture stored: the stream's last ones, in a run
        #: The last sequence the stream held when opened (None: nothing).
        self.resume_after = tail.last
        self._next = None if self.resume_after is None else self.resume_after + 1
        # The stream's last packet, until one handed over again is compared with it.
        self._ends_with = tail.packet
        self._verify = verify and tail.packet is not None
        #: The last sequence the stream holds, acknowledged (None: nothing yet).
        self.stored = self.resume_after
        # The id of the stream's last block, as far as this capture knows: its own
        # last one acknowledged, or the one it resumed after.
        self._after_id = tail.msg_id

    async def _open(self) -> Tail:
        await self._broker.connect()
        attempts = 0
        while True:
            try:
                info = await self._broker.ensure_stream(create=True)
                tail = await self._broker.tail()
                break
            except ForeignStream:
                raise
            except NatsError:  # JetStream not ready yet (a cluster electing its leader)
                attempts += 1
                if attempts > self.retries:
                    raise
                await asyncio.sleep(_pause(self.backoff, attempts))
        # Where the stream started: nothing before this capture's blocks may go either.
        self._kept_from = int(info.state.first_seq) if info.state.messages else None
        limits = _discarding(info.config)
        if limits:
            log.warning(
                "%s removes messages by itself (%s): a capture checks at its end that "
                "the stream still holds every block it published, and fails if not",
                self.name, limits,
            )  # fmt: skip
        self._wake = asyncio.Event()
        self._done = asyncio.get_running_loop().create_future()
        self._pump = asyncio.ensure_future(self._run())
        return tail

    @property
    def backlog(self) -> int:
        """Return how many packets wait to be acknowledged (none once the output failed)."""
        return 0 if self.error is not None else self.queued - self.written - self.dropped

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` from the publishing thread if publishing fails."""
        self._failed = callback

    def put(self, packets: Packets) -> None:
        """Hand a batch over to be published after the ones before it."""
        if self.error is not None:
            raise OutputError(self.describe(self.error))
        if not len(packets):
            return
        self.queued += len(packets)
        self._loop.call(self._arrive, packets)

    def describe(self, exc: BaseException) -> str:
        """Return a failed publish as one line."""
        return str(exc) if isinstance(exc, NatsError) else f"{self.name}: {_why(exc)}"

    # on the loop

    def _arrive(self, packets: Packets) -> None:
        if self._gap is not None:  # nothing after a gap is published
            self.dropped += len(packets)
            return
        self._pending.append(packets)
        assert self._wake is not None
        self._wake.set()

    def _take(self) -> Iterator[_Block]:
        """Cut what arrived into blocks, as far as it runs contiguously."""
        while self._pending and self._gap is None:
            batch = self._pending.popleft()
            seq = batch.sequence
            if self._ends_with is not None and self._same_feed(batch):
                self.dropped += len(batch)  # all of it before the stream's end
                continue
            if self._next is None:
                self._next = int(seq[0])
            elif seq[0] < self._next:  # already stored (a resumed capture's overlap)
                keep = int(np.searchsorted(seq, self._next))
                self.dropped += keep
                batch, seq = batch[keep:], seq[keep:]
                if not len(batch):
                    continue
            expected = np.arange(self._next, self._next + len(seq), dtype=np.int64)
            breaks = np.flatnonzero(seq.astype(np.int64) != expected)
            if len(breaks):
                cut = int(breaks[0])
                if (
                    cut == 0
                    and self.resume_after is not None
                    and self._next == self.resume_after + 1
                ):
                    raise NatsError(
                        f"{self.name}: holds the feed to {self.resume_after}, but the packets "
                        f"go on from {int(seq[0])}: publishing them would leave a gap"
                    )
                self._gap = self._next + cut
                self.dropped += len(seq) - cut + sum(len(b) for b in self._pending)
                self._pending.clear()
                batch = batch[:cut]
            for start in range(0, len(batch), BLOCK_PACKETS):
                part = batch[start : start + BLOCK_PACKETS]
                first = self._next
                self._next += len(part)
                yield _Block(first, self._next - 1, encode(part))

    def _same_feed(self, batch: Packets) -> bool:
        """Compare the stream's last packet with the one in ``batch``, if there; return
        whether the whole batch comes before it.  NatsError if it differs, or (``verify``)
        if the batch goes on after it without it."""
        assert self.resume_after is not None and self._ends_with is not None
        after, seq = self.resume_after, batch.sequence
        if int(seq[-1]) < after:
            return True
        at = int(np.searchsorted(seq, after))
        if int(seq[at]) == after:
            given = batch[at : at + 1]
            if encode(given) != self._ends_with:
                raise NatsError(
                    f"{self.name}: holds another feed: its packet {after} is "
                    f"{_packet(decode(self._ends_with))}, not {_packet(given)}; nothing "
                    "published (a packet corrupted on its way would differ too: a run again "
                    "tells)"
                )
            self._ends_with = None
            self._verify = False
        elif self._verify:  # the packet to compare never came: nothing can follow it
            raise NatsError(
                f"{self.name}: holds the feed to {after}, but the packets go on from "
                f"{int(seq[at])}, without {after} to compare with its own; nothing published"
            )
        else:
            self._ends_with = None  # past it: nothing to compare with
        return False

    async def _run(self) -> None:
        assert self._done is not None
        try:
            await self._publish_all()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            with contextlib.suppress(Exception):
                self._failed(self.describe(exc))
        finally:
            if not self._done.done():
                self._done.set_result(None)

    async def _publish_all(self) -> None:
        """Publish blocks as they come, a window at a time; recover from what fails."""
        attempts = 0
        inflight: deque[tuple[_Block, asyncio.Future[Any]]] = deque()
        unsent: deque[_Block] = deque()
        assert self._wake is not None
        while True:
            unsent.extend(self._take())
            while unsent and len(inflight) < WINDOW:
                block = unsent.popleft()
                inflight.append((block, asyncio.ensure_future(self._publish(block))))
            if not inflight:
                if self._closing and not self._pending:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            block, sent = inflight[0]
            try:
                await sent
            except Exception as exc:
                for _, other in inflight:
                    other.cancel()
                await asyncio.gather(*(f for _, f in inflight), return_exceptions=True)
                retry = [b for b, _ in inflight] + list(unsent)
                inflight.clear()
                unsent.clear()
                attempts += 1
                unsent.extend(await self._recover(retry, exc, attempts))
                continue
            inflight.popleft()
            attempts = 0
            self.written += block.count
            self.stored = block.last
            self._blocks += 1
            self._after_id = block.msg_id

    async def _publish(self, block: _Block) -> None:
        """Publish ``block`` after the one published before it, and nothing else.

        Blocks are in flight a window at a time, so an expected stream sequence alone
        would not do: were the first refused (another writer's message took its place),
        the second would find the sequence it expects.  Each block after the first of a
        run therefore also names the id of the block before it.
        """
        assert self._broker.js is not None
        expected, after = self._stream_seq, self._last_id
        self._stream_seq += 1
        block.msg_id = self._last_id = block_id(block.first, block.last, expected, self._writer)
        block.ids.append(block.msg_id)
        # A duplicate (this very publish stored before, its acknowledgement lost) is
        # kept once by the broker: it is where it should be.
        await self._broker.js.publish(
            self.target.subject, block.payload, timeout=self.timeout,
            headers=block_headers(block.first, block.last, expected, self._writer, after),
        )  # fmt: skip

    async def _recover(self, blocks: list[_Block], exc: Exception, attempts: int) -> list[_Block]:
        """After a failed publish: read what the stream holds; return the blocks still due."""
        while True:
            if attempts > self.retries:
                why = _why(exc)
                if isinstance(exc, NatsError):
                    why = why.removeprefix(f"{self.name}: ")
                raise NatsError(
                    f"{self.name}: {why}, {self.retries} retries spent; {self._held()}"
                ) from exc
            await asyncio.sleep(_pause(self.backoff, attempts))
            try:
                if not self._broker.connected:
                    await self._broker.connect()
                tail = await self._broker.tail()
            except ForeignStream:
                raise
            except Exception as failure:  # the broker is still away
                exc = failure
                attempts += 1
                continue
            break
        self._stream_seq = tail.seq
        self._last_id = None  # a new run: its first block follows the sequence
        # The stream ends with the block this capture knows it ends with, or with one it
        # published since (stored, its acknowledgement lost): anything else is another
        # writer's (or the stream was purged), and nothing is published after it.
        mine = [i for i, block in enumerate(blocks) if tail.msg_id in block.ids]
        if tail.msg_id is not None and tail.msg_id == self._after_id:
            stored = 0
        elif tail.msg_id is not None and mine:
            stored = mine[0] + 1  # a copy published before a retry may be the one stored
        elif tail.last is None and self.stored is None:
            stored = 0  # empty, and this capture stored nothing yet
        else:
            ours = (
                f"this capture stored the feed to {self.stored}"
                if self.written
                else "this capture stored nothing"
            )
            if tail.last is None:
                raise NatsError(
                    f"{self.name}: the stream was emptied (purged, or deleted and made "
                    f"again) while this capture published; {ours}"
                )
            raise NatsError(
                f"{self.name}: another writer publishes into the stream (it ends at "
                f"{tail.last}, in a block not of this capture); {ours}"
            )
        for block in blocks[:stored]:
            self.written += block.count  # stored, its acknowledgement lost
            self.stored = block.last
            self._blocks += 1
        if stored:
            self._after_id = tail.msg_id
        return blocks[stored:]

    def _held(self) -> str:
        """Return what the stream holds as far as this capture knows, given up on: what
        was acknowledged, and maybe more (blocks in flight may still be stored)."""
        if self.stored is None:
            return "the stream holds nothing acknowledged to this capture"
        return f"the stream holds the feed to at least {self.stored}"

    async def _finish(self) -> None:
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        assert self._done is not None
        await self._done
        if self.error is None and self._blocks:
            try:
                await self._check_kept()
            except Exception as exc:
                self.error = exc

    async def _check_kept(self) -> None:
        """NatsError unless the stream still holds every block this capture stored: a
        purge, a deleted message or the stream's own limits may have taken some since."""
        attempts = 0
        while True:
            try:
                if not self._broker.connected:
                    await self._broker.connect()
                state = (await self._broker.ensure_stream(create=False)).state
                break
            except ForeignStream:
                raise
            except Exception as exc:
                attempts += 1
                if attempts > self.retries:
                    raise NatsError(
                        f"{self.name}: every block was acknowledged, but whether the stream "
                        f"still holds them could not be read: {_why(exc)}"
                    ) from exc
                await asyncio.sleep(_pause(self.backoff, attempts))
        first = self._stream_seq - self._blocks + 1  # this capture's first block
        held_from = first if self._kept_from is None else min(first, self._kept_from)
        holes = state.last_seq - state.first_seq + 1 - state.messages if state.messages else 0
        if state.last_seq < self._stream_seq:
            why = "the stream was deleted and made again"
        elif state.first_seq > first:
            gone = min(state.first_seq, self._stream_seq + 1) - first
            why = (
                f"{gone} of this capture's {self._blocks} blocks are gone from its start "
                "(purged, or removed by the stream's limits)"
            )
        elif state.first_seq > held_from:
            why = (
                f"{state.first_seq - held_from} message(s) stored before this capture are "
                "gone from its start (purged, deleted, or removed by the stream's limits)"
            )
        elif holes:
            why = f"{holes} of its messages were deleted"
        else:
            return
        raise NatsError(f"{self.name}: the stream does not hold the feed whole: {why}")

    # ending

    def finish(self, timeout: float | None = None) -> None:
        """Publish what was handed over and wait for its acknowledgements (``timeout``)."""
        try:
            self._loop.run(self._finish(), timeout)
        except FutureTimeout:
            self.abort()
            raise OutputError(
                f"{self.name}: the broker did not acknowledge the rest in time "
                f"({timeout:g} s more); gave up: {self._held()}"
            ) from None
        if self.error is not None:
            error = self.error
            self.abort()
            raise OutputError(self.describe(error)) from error

    def place(self, complete: bool) -> str:
        """Close the connection; return where the feed went (what the stream holds)."""
        self._close()
        return self.name

    def close(self, complete: bool, timeout: float | None = None) -> str:
        """:meth:`finish`, then :meth:`place`."""
        self.finish(timeout)
        return self.place(complete)

    def abort(self) -> None:
        """Stop publishing: what the stream acknowledged stays (a stream is append-only)."""
        if self._pump is not None and not self._loop.loop.is_closed():
            self._loop.call(self._pump.cancel)
        self._close()

    def _close(self) -> None:
        if self._loop.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._loop.run(self._broker.close(), self.timeout * 2)
        self._loop.stop()


def stored_to(url: str, *, timeout: float = TIMEOUT) -> int | None:
    """Return the last sequence the stream at ``url`` holds (None: empty); NatsError if not."""
    target = _target(url, NatsError)

    async def main() -> int | None:
        broker = _Broker(target, timeout)
        try:
            await broker.connect()
            return (await broker.tail()).last
        finally:
            await broker.close()

    return asyncio.run(main())


def read_stream(url: str, *, timeout: float = TIMEOUT) -> Packets:
    """Return the packets the stream at ``url`` holds; NatsError if it holds something else.

    Blocks are read by direct get, :data:`READ_BATCH` at a time; every block must be of
    the layout and continue the one before it.
    """
    target = _target(url, NatsError)
    return asyncio.run(_read(target, timeout))


async def _read(target: NatsTarget, timeout: float) -> Packets:
    _client()  # MissingDependencyError, naming the extra, before anything of it is used
    from nats.js.errors import NotFoundError

    broker = _Broker(target, timeout)
    try:
        js = await broker.connect()
        info = await broker.ensure_stream(create=False)
        first_seq, last_seq = int(info.state.first_seq), int(info.state.last_seq)
        if not info.state.messages:
            raise NatsError(f"{target.url}: the stream holds no packets")
        direct = bool(info.config.allow_direct)  # a stream made elsewhere may not allow it
        batches: list[Packets] = []
        following: int | None = None
        for start in range(first_seq, last_seq + 1, READ_BATCH):
            stop = min(start + READ_BATCH, last_seq + 1)
            msgs = await asyncio.gather(
                *(js.get_msg(target.stream, seq, direct=direct) for seq in range(start, stop)),
                return_exceptions=True,
            )
            for seq, msg in enumerate(msgs, start):
                if isinstance(msg, NotFoundError):
                    raise ForeignStream(
                        f"{target.url}: stream sequence {seq} is gone (deleted?): the "
                        "stream has a hole"
                    )
                if isinstance(msg, BaseException):
                    raise msg
                where = f"{target.url}: stream sequence {seq}"
                packets = _stored_block(msg, target, following, where)
                following = int(packets.sequence[-1]) + 1
                batches.append(packets)
        return Packets.concat(batches)
    except (NatsError, MissingDependencyError):
        raise
    except Exception as exc:
        raise NatsError(f"{target.url}: {_why(exc)}") from exc
    finally:
        await broker.close()


def write_stream(url: str, packets: Packets, *, timeout: float = TIMEOUT) -> None:
    """Publish ``packets`` (in sequence order, contiguous) after what the stream holds.

    Those the stream holds already are skipped, but the one it ends with, if given, must
    be the stream's (NatsError: another feed); a first packet after a gap is refused.
    """
    output = NatsOutput(url, retries=0, timeout=timeout)
    try:
        after = output.resume_after
        if after is not None and len(packets) and int(packets.sequence[0]) > after + 1:
            raise NatsError(
                f"{output.name}: holds the feed to {after}; packets from "
                f"{int(packets.sequence[0])} would leave a gap"
            )
        seq = packets.sequence
        if len(seq) > 1 and not bool(np.all(np.diff(seq.astype(np.int64)) == 1)):
            raise NatsError(f"{output.name}: a stream holds a contiguous run of sequences")
        output.put(packets)
        output.finish()
    finally:
        output.abort()


class StreamTail:
    """Follow a stream as it grows, on a thread of its own: every block, in order.

    :meth:`start` connects and reads what the stream holds (a NatsError, nothing
    taken, if it cannot, or if what it holds is no feed); from then on ``on_block`` is
    called, on the tail's thread, with each block's first sequence and wire bytes, the
    ones held first, then each as it is stored.  A block that breaks the layout, or
    does not continue the one before, stops the tail: ``on_stop`` gets why.  A broker
    that goes away is waited for (the client reconnects by itself, for ever).
    """

    def __init__(
        self,
        url: str,
        on_block: Callable[[int, bytes], None],
        on_stop: Callable[[str], None],
        *,
        timeout: float = TIMEOUT,
    ) -> None:
        self.target = _target(url, NatsError)
        self._on_block = on_block
        self._on_stop = on_stop
        self._broker = _Broker(self.target, timeout, retries=2)
        self._loop = _Loop("packetcore-nats-tail")
        self._task: asyncio.Future[None] | None = None
        #: The sequence the next block must start at (None before the first).
        self.following: int | None = None
        self._stream_seq = 0  # the stream sequence of the last block taken

    def start(self) -> None:
        """Connect and take every block the stream holds now; then follow it."""
        try:
            self._loop.run(self._start())
        except BaseException:
            self.stop()
            raise

    async def _start(self) -> None:
        try:
            await self._take_held()
        except (NatsError, MissingDependencyError):
            raise
        except Exception as exc:
            raise NatsError(f"{self.target.url}: {_why(exc)}") from exc

    async def _take_held(self) -> None:
        await self._broker.connect()
        tail = await self._broker.tail()
        last_seq, last = tail.seq, tail.last  # its last message is a block
        if last is None:
            raise NatsError(f"{self.target.url}: the stream holds no packets")
        assert self._broker.js is not None
        subscription = await self._broker.js.subscribe(
            self.target.subject, stream=self.target.stream, ordered_consumer=True
        )
        try:
            # What the stream holds now is taken before start() returns: a foreign
            # message among it fails the start, and the feed starts whole.
            while True:
                msg = await subscription.next_msg(timeout=self._broker.timeout)
                self._take(msg)
                if msg.metadata.sequence.stream >= last_seq:
                    break
        except BaseException:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            raise
        self._task = asyncio.ensure_future(self._follow(subscription))

    def _take(self, msg: Any) -> None:
        """Check one stored message as a block that continues the feed; hand it on."""
        where = f"{self.target.url}: stream sequence {msg.metadata.sequence.stream}"
        packets = _stored_block(msg, self.target, self.following, where)
        first = int(packets.sequence[0])
        self.following = int(packets.sequence[-1]) + 1
        self._stream_seq = int(msg.metadata.sequence.stream)
        self._on_block(first, msg.data)

    async def _follow(self, subscription: Any) -> None:
        """Take each block as it is stored; after a lost broker, subscribe again."""
        from nats.errors import TimeoutError as NatsTimeout

        while True:
            try:
                while True:
                    try:
                        msg = await subscription.next_msg(timeout=None)
                    except NatsTimeout:
                        continue
                    self._take(msg)
            except asyncio.CancelledError:
                raise
            except ForeignStream as exc:
                with contextlib.suppress(Exception):
                    self._on_stop(str(exc))
                return
            except Exception as exc:
                log.warning("%s: %s; subscribing again", self.target.url, _why(exc))
                subscription = await self._subscribe_again()

    async def _subscribe_again(self) -> Any:
        """Subscribe from the stream sequence after the last one taken, until it works."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(_pause(0.2, min(attempt, 6)))
            try:
                if not self._broker.connected:
                    await self._broker.connect()
                assert self._broker.js is not None
                return await self._broker.js.subscribe(
                    self.target.subject, stream=self.target.stream, ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                          opt_start_seq=self._stream_seq + 1),
                )  # fmt: skip
            except Exception as exc:
                log.debug("%s: subscribing again: %s", self.target.url, _why(exc))

    def stop(self) -> None:
        """Stop following; close the connection."""
        if self._loop.loop.is_closed():
            return
        if self._task is not None:
            self._loop.call(self._task.cancel)
        with contextlib.suppress(Exception):
            self._loop.run(self._broker.close(), self._broker.timeout * 2)
        self._loop.stop()
