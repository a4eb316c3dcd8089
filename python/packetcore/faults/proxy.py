"""A fault-injecting TCP proxy for the feed protocol, in front of any server of it.

:class:`Proxy` has the lifecycle of :class:`~packetcore.server.server.Server`: ``start_async``
/ ``stop_async`` on a running loop, ``start`` / ``stop`` in a background thread, and
both as context managers.  Every accepted connection (numbered from 0) gets its own
upstream connection and the faults its :class:`~packetcore.faults.model.FaultPlan` chooses;
the proxy frames the client's requests, so that info frames pass untouched and the
faults hit whole packets.  ``stats`` counts what all connections did, ``records`` what
each one did; with ``trace=True`` each record also holds a
:class:`~packetcore.faults.trace.Trace` of its requests and packets, timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..engine import PACKET_SIZE
from ..net.listener import peer_name
from ..net.service import Service
from ..protocol import (
    CLOCK_SIZE,
    HELLO,
    INFO_SIZE,
    RANGE_REQUEST_SIZE,
    REQUEST_SIZE,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    SUBSCRIBE,
    SUBSCRIBE_REQUEST_SIZE,
    RequestFramer,
)
from .delivery import Delivery, end_connection
from .model import FaultPlan, Faults, Script
from .shaper import Shaper
from .trace import Trace

__all__ = ["MAX_RECORDS", "ConnectionRecord", "Proxy", "ProxyStats"]

log = logging.getLogger("packetcore.proxy")

#: Connection records a proxy keeps (the latest); its stats count every connection.
MAX_RECORDS = 10_000

#: Bytes read per step from either side.
CHUNK = 1 << 18
#: The server's bytes are read into one reused buffer of this size (fewer, larger reads).
UPSTREAM_BUFFER = 1 << 20
#: Upstream reading pauses while this many bytes wait to go to the client.
_HIGH_WATER = 4 << 20
_KNOWN = (STREAM_ALL, RESEND, HELLO, RESEND_RANGE, SUBSCRIBE)


@dataclass
class ProxyStats:
    """What a proxy has done since it started (the attribute names of ServerStats)."""

    connections: int = 0  #: connections accepted
    active: int = 0  #: connections open now
    streams: int = 0  #: stream-all and subscribe requests forwarded
    packets_sent: int = 0  #: packets the clients got on connections that streamed
    packets_resent: int = 0  #: packets the clients got on the other connections
    packets_dropped: int = 0  #: packets the faults dropped (loss) or swallowed
    bad_requests: int = 0  #: requests of unknown callTypes forwarded
    bytes_written: int = 0  #: bytes written to the clients
    upstream_errors: int = 0  #: connections whose upstream could not be reached
    faults: dict[str, int] = field(default_factory=dict)  #: injected faults by kind

    def summary(self) -> str:
        """Return the counters as one line."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"{self.connections} connections ({self.upstream_errors} upstream errors), "
            f"{self.packets_sent} packets sent, {self.packets_resent} resent, "
            f"{self.packets_dropped} dropped; faults: {faults}"
        )


@dataclass
class ConnectionRecord:
    """What happened on one proxied connection."""

    number: int
    faults: Faults
    bytes_up: int = 0  #: bytes the client sent
    bytes_from_server: int = 0
    bytes_to_client: int = 0
    requests: dict[int, int] = field(default_factory=dict)  #: callType -> count
    info_frames: int = 0
    counts: dict[str, int] = field(default_factory=dict)  #: faults injected, by kind
    writes: int = 0  #: writes to the client
    largest_write: int = 0
    #: "open", "eof", "close", "reset", "stall", "hang", "client", "upstream_error",
    #: "shutdown" or "proxy_error"
    outcome: str = "open"
    done: bool = False
    #: the requests and packets, timed, if the proxy traces (``Proxy(..., trace=True)``)
    trace: Trace | None = None

    @property
    def applied(self) -> list[str]:
        """Return the kinds of fault that fired on this connection."""
        return [kind for kind, n in self.counts.items() if n]


#: The bytes of a request, by callType (every other callType frames as 2).
_SIZES = {RESEND_RANGE: RANGE_REQUEST_SIZE, SUBSCRIBE: SUBSCRIBE_REQUEST_SIZE}


class _Requests:
    """Frame the client's requests, count them, and tell the delivery what they ask for."""

    def __init__(
        self,
        record: ConnectionRecord,
        delivery: Delivery,
        stats: ProxyStats,
        clock: Callable[[], float],
    ) -> None:
        self._record = record
        self._delivery = delivery
        self._stats = stats
        self._clock = clock
        self._framer = RequestFramer()
        self._received = 0  # bytes of the client's so far
        self._framed = 0  # bytes of its complete requests so far
        self.streamed = False
        #: The faults close the connection at a request: nothing from it on is forwarded.
        self.cut = False

    def feed(self, data: bytes) -> int:
        """Frame a chunk of the client's; return how many of its bytes go to the server."""
        counts = self._record.requests
        trace = self._record.trace
        received, self._received = self._received, self._received + len(data)
        forward = 0 if self.cut else len(data)
        for request in self._framer.feed(data):
            call = request.call_type
            counts[call] = counts.get(call, 0) + 1
            if trace is not None:
                trace.request(self._clock(), request)
            if not self.cut and not self._delivery.request(request):
                self.cut = True
                forward = max(0, self._framed - received)  # the requests before this one
            self._framed += _SIZES.get(call, REQUEST_SIZE)
            if call in (STREAM_ALL, SUBSCRIBE):
                self.streamed = True
                self._stats.streams += 1
            elif call not in _KNOWN:
                self._stats.bad_requests += 1
        return forward


class _Upstream(asyncio.streams.FlowControlMixin, asyncio.BufferedProtocol):
    """The server side of a connection: its bytes read into one reused buffer, one copy each.

    A :class:`asyncio.StreamReader` would copy every chunk twice more; writes upstream go
    through an :class:`asyncio.StreamWriter` on this protocol, as for any stream.
    """

    def __init__(self, sink: _Connection) -> None:
        super().__init__()
        self._sink = sink
        self._buffer = memoryview(bytearray(UPSTREAM_BUFFER))
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._sink.upstream_data(bytes(self._buffer[:nbytes]))

    def eof_received(self) -> bool:
        self._sink.upstream_end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)
        self._sink.upstream_end(exc)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


_EOF = EOFError()  # the server ended its stream cleanly

#: Linux moves a clean stream socket to socket in the kernel (splice), never copying it
#: through Python; elsewhere, and on other event loops, the buffered protocol does.
_SPLICE = hasattr(os, "splice") and sys.platform == "linux"
_SPLICE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


class _Pipe:
    """A kernel pipe for splice, as large as the system lets it be."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(self.write, _F_SETPIPE_SZ, _SPLICE_SIZE)

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class _Connection:
    """One proxied client connection and its upstream twin."""

    def __init__(
        self,
        proxy: Proxy,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ConnectionRecord,
    ) -> None:
        self._proxy = proxy
        self._reader = reader
        self._writer = writer
        self._record = record
        self._stats = proxy.stats
        self.peer = peer_name(writer)
        plan = proxy.plan
        faults = record.faults
        rng = plan.rng(number)
        counts = proxy.stats.faults
        # The requests are counted on the client's side whichever way the faults act.
        down = Faults(close_at_request=faults.close_at_request) if plan.upstream else faults
        self._down = Shaper(down, rng, counts, plan.ledger)
        self._up = Shaper(faults if plan.upstream else Faults(), rng, counts, plan.ledger)
        self._clock = proxy.clock
        trace = record.trace
        tap = None if trace is None else lambda data: trace.written(self._clock(), data)
        self._delivery = Delivery(writer, self._down, rng, tap=tap)
        self._requests = _Requests(record, self._delivery, proxy.stats, self._clock)
        self._up_transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self._up_end: BaseException | None = None
        self._wake = asyncio.Event()
        # A trace sees every byte the client gets: nothing may bypass the delivery.
        self._splice_ok = (
            _SPLICE
            and trace is None
            and isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop)
        )
        self._cut_timer: asyncio.TimerHandle | None = None
        self._up_writer: asyncio.StreamWriter | None = None
        self._up_delivery: Delivery | None = None
        self._upstream_open = False
        self._packet_bytes = 0
        self._dropped = 0
        self._rng = rng

    async def run(self) -> None:
        """Serve the connection until it ends; always release both sockets."""
        aborted = True
        try:
            aborted = await self._serve()
        except asyncio.CancelledError:
            self._set_outcome("shutdown")
            raise
        except (ConnectionError, OSError):
            self._set_outcome("client")
        finally:
            self._delivery.cancel()
            if self._up_delivery is not None:
                self._up_delivery.cancel()
            if self._cut_timer is not None:
                self._cut_timer.cancel()
            self._account()
            await self._close(abort=aborted)
            if self._record.trace is not None:
                self._record.trace.close(self._clock())

    async def _serve(self) -> bool:
        """Run the faults; return whether the client socket should be aborted at the end."""
        faults = self._record.faults
        if faults.hang:
            self._record.outcome = "hang"
            self._down._count("hang")
            await self._discard_client(None)
            return False
        if faults.limit == 0 and faults.limit_kind != "stall" and not self._proxy.plan.upstream:
            kind = faults.limit_kind
            self._record.outcome = kind
            self._down._count(kind)
            await end_connection(self._writer, kind)
            await self._discard_client(self._proxy.linger)
            return kind == "reset"
        host, port = self._proxy.upstream
        try:
            loop = asyncio.get_running_loop()
            protocol = _Upstream(self)
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: protocol, host, port),
                self._proxy.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self._stats.upstream_errors += 1
            self._record.outcome = "upstream_error"
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else exc.strerror or exc
            log.warning("upstream %s port %d unreachable for %s: %s", host, port, self.peer, reason)
            return True
        self._up_transport = transport
        self._up_writer = up_writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._up_delivery = Delivery(up_writer, self._up, self._rng)
        self._upstream_open = True
        up = asyncio.create_task(self._pump_up())
        down = asyncio.create_task(self._pump_down())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if down.done():
                down.result()  # a bug in shaping must show, not pass for an end
            else:
                if up.result():  # the client half-closed: let the answers finish
                    await down
                else:
                    self._set_outcome("client")
                    return True
            outcome = self._record.outcome
            if outcome == "stall":
                self._close_upstream()
                await up  # the client gets nothing more; it may still write, then close
                return False
            if outcome in ("eof", "close", "upstream_error") and not up.done():
                self._close_upstream()
                await asyncio.wait({up}, timeout=self._proxy.linger)
            return outcome not in ("eof", "close", "upstream_error")
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump_up(self) -> bool:
        """Forward the client's bytes; return True if the client half-closed, False on error."""
        delivery = self._up_delivery
        assert delivery is not None
        while True:
            try:
                data = await self._reader.read(CHUNK)
            except (ConnectionError, OSError):
                return False
            if not data:
                break
            self._record.bytes_up += len(data)
            # Framed before forwarding: the answer cannot precede it.
            forward = self._requests.feed(data)
            if forward and self._upstream_open and not delivery.ended:
                try:
                    await delivery.send(data[:forward] if forward < len(data) else data)
                except (ConnectionError, OSError):
                    self._upstream_open = False
            if self._requests.cut and self._cut_timer is None:
                await self._cut(delivery)
        if self._upstream_open and not delivery.ended:
            with contextlib.suppress(ConnectionError, OSError):
                await delivery.finish()
                if self._up_writer is not None and self._up_writer.can_write_eof():
                    self._up_writer.write_eof()
        return True

    async def _cut(self, delivery: Delivery) -> None:
        """End the connection at the request the faults name: nothing more goes upstream.

        The server is told the requests ended (half-close), so that it answers those
        before the cut and closes; then the client gets an end of file.  A server that
        does not close within ``linger`` is closed on.
        """
        self._set_outcome("close")
        self._cut_timer = asyncio.get_running_loop().call_later(
            self._proxy.linger, self._close_upstream
        )
        if self._upstream_open and not delivery.ended:
            with contextlib.suppress(ConnectionError, OSError):
                await delivery.finish()
                if self._up_writer is not None and self._up_writer.can_write_eof():
                    self._up_writer.write_eof()
        self._upstream_open = False

    def upstream_data(self, data: bytes) -> None:
        """Queue a chunk from the server for the client (called by the protocol)."""
        self._chunks.append(data)
        self._queued += len(data)
        self._wake.set()
        if self._queued >= _HIGH_WATER and not self._paused and self._up_transport is not None:
            self._paused = True
            self._up_transport.pause_reading()

    def upstream_end(self, exc: BaseException | None) -> None:
        """Note the end of the server's stream: EOF, or the error that ended it."""
        if self._up_end is None:
            self._up_end = exc if exc is not None else _EOF
            self._wake.set()

    async def _next_chunk(self) -> bytes | BaseException:
        """Return the server's next chunk, or how its stream ended."""
        while not self._chunks:
            if self._up_end is not None:
                return self._up_end
            self._wake.clear()
            await self._wake.wait()
        data = self._chunks.popleft()
        self._queued -= len(data)
        if self._paused and self._queued < _HIGH_WATER // 2 and self._up_transport is not None:
            self._paused = False
            self._up_transport.resume_reading()
        return data

    async def _pump_down(self) -> None:
        """Shape the server's stream into the client's, and end it as the faults say."""
        delivery = self._delivery
        try:
            while True:
                if self._can_splice():
                    await self._splice()
                data = await self._next_chunk()
                if isinstance(data, BaseException):
                    await delivery.finish("close")
                    self._set_outcome("eof" if data is _EOF else "upstream_error")
                    break
                self._record.bytes_from_server += len(data)
                await delivery.send(data)
                self._account()
                if delivery.ended:
                    await delivery.finish()
                    self._set_outcome(self._down.faults.limit_kind)
                    break
        except (ConnectionError, OSError):
            self._set_outcome("client")
        self._account()

    def _can_splice(self) -> bool:
        """Return whether the next bytes may go straight from socket to socket."""
        shaper = self._down
        return (
            self._splice_ok
            and not shaper.faults.active
            and not shaper.pending
            and not self._chunks
            and self._up_end is None
            and self._writer.transport.get_write_buffer_size() == 0
        )

    async def _splice(self) -> None:
        """Move the server's bytes to the client in the kernel while nothing is to be seen."""
        loop = asyncio.get_running_loop()
        transport = self._up_transport
        assert transport is not None
        client = self._writer.get_extra_info("socket")
        server = transport.get_extra_info("socket")
        if client is None or server is None:
            self._splice_ok = False
            return
        # Duplicates: the transports own their descriptors in the selector.
        source, sink = os.dup(server.fileno()), os.dup(client.fileno())
        pipe = _Pipe()
        transport.pause_reading()
        try:
            # Checked before every splice: once a hello has gone out, its answer must be seen.
            while self._can_splice():
                try:
                    n = os.splice(source, pipe.write, _SPLICE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await _ready(loop, source, reading=True)
                    continue
                except OSError as exc:
                    self.upstream_end(exc)
                    break
                if n == 0:
                    self.upstream_end(None)
                    break
                left = n
                while left:
                    try:
                        left -= os.splice(pipe.read, sink, left, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        await _ready(loop, sink, reading=False)
                self._record.bytes_from_server += n
                self._down.passed(n)
                self._account()
        finally:
            pipe.close()
            os.close(source)
            os.close(sink)
            if self._up_end is None:
                transport.resume_reading()

    def _account(self) -> None:
        """Bring the stats up to date with what the client got so far."""
        record, stats, shaper = self._record, self._stats, self._down
        sent = shaper.bytes_out
        stats.bytes_written += sent - record.bytes_to_client
        record.bytes_to_client = sent
        record.info_frames = shaper.info_frames
        record.counts = dict(shaper.own)
        record.writes, record.largest_write = self._delivery.writes, self._delivery.largest_write
        frames = INFO_SIZE * shaper.info_frames + CLOCK_SIZE * shaper.clock_frames
        packet_bytes = max(0, sent - frames)
        packets = packet_bytes // PACKET_SIZE - self._packet_bytes // PACKET_SIZE
        self._packet_bytes = packet_bytes
        if self._requests.streamed:
            stats.packets_sent += packets
        else:
            stats.packets_resent += packets
        dropped = sum(shaper.own.get(kind, 0) for kind in _DROPS)
        stats.packets_dropped += dropped - self._dropped
        self._dropped = dropped

    async def _discard_client(self, timeout: float | None) -> None:
        """Read and drop what the client sends until it closes (or the timeout passes)."""

        async def drain() -> None:
            while data := await self._reader.read(CHUNK):
                self._record.bytes_up += len(data)
                self._requests.feed(data)

        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(drain(), timeout)

    def _close_upstream(self) -> None:
        self._upstream_open = False
        if self._up_writer is not None:
            self._up_writer.close()

    def _set_outcome(self, outcome: str) -> None:
        """Record how the connection ended, unless a fault already did."""
        if self._record.outcome == "open" or outcome == "shutdown":
            self._record.outcome = outcome

    async def _close(self, abort: bool) -> None:
        """Close both sockets (aborting the client's on faults and errors) and wait for them."""
        self._upstream_open = False
        writers = [w for w in (self._up_writer, self._writer) if w is not None]
        for writer in writers:
            if abort or writer is self._up_writer:
                writer.transport.abort()
            else:
                writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            writer.transport.abort()


#: The fault kinds that drop a packet.
_DROPS = ("loss", "swallow", "drop_sequence", "drop_resend")

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, reading: bool) -> None:
    """Wait until ``fd`` can be read (or written)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if reading:
        loop.add_reader(fd, wake)
    else:
        loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        if reading:
            loop.remove_reader(fd)
        else:
            loop.remove_writer(fd)


def _upstream(upstream: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(upstream, str):
        name, sep, number = upstream.rpartition(":")
        if not sep or not name or not number.isdigit():
            raise ValueError(f"upstream must be HOST:PORT, not {upstream!r}")
        upstream = (name.strip("[]"), int(number))
    host, port = upstream
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"upstream port must be in 1..65535, not {port}")
    return host, port


class Proxy(Service):
    """Forward connections to ``upstream`` with the faults ``faults`` chooses for each.

    ``faults`` is a :class:`FaultPlan`, or what one is made of: :class:`Faults` for
    every connection, or a script (a sequence, or a callable, by connection number).
    """

    kind = "proxy"
    stop_timeout = 5.0

    def __init__(
        self,
        upstream: tuple[str, int] | str,
        faults: FaultPlan | Faults | Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
        linger: float = 1.0,
        trace: bool = False,
    ) -> None:
        self.upstream = _upstream(upstream)
        if isinstance(faults, FaultPlan):
            self.plan = faults
        elif isinstance(faults, Faults):
            self.plan = FaultPlan(faults)
        else:
            self.plan = FaultPlan(script=faults)
        if self.plan.upstream and self.plan.faults.packet_faults:
            raise ValueError(
                "loss, duplicate, reorder, corrupt, swallow, drop_sequences, drop_resends and "
                "corrupt_sequences act on the server's packets: "
                "not with upstream faults"
            )
        super().__init__(host, port)
        self.connect_timeout = connect_timeout
        self.linger = linger
        #: Whether each connection's record holds a trace of its requests and packets.
        self.trace = trace
        self.stats = ProxyStats()
        # The latest connections' records: a proxy that runs for days keeps a bounded few.
        self._records: deque[ConnectionRecord] = deque(maxlen=MAX_RECORDS)

    @property
    def origin(self) -> float:
        """Return when the proxy started, in :func:`time.monotonic` seconds: trace time 0."""
        return self._started_at

    def clock(self) -> float:
        """Return the seconds since the proxy started (the times of its traces)."""
        return time.monotonic() - self._started_at

    @property
    def records(self) -> list[ConnectionRecord]:
        """Return one record per accepted connection (the latest MAX_RECORDS), in order."""
        return list(self._records)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every accepted connection has ended; return False on timeout."""
        # Polled from another thread than the proxy's loop: no event can be shared.
        deadline = time.monotonic() + timeout
        while not all(r.done for r in self._records):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- lifecycle ----------------------------------------------------------------------

    def _listening(self) -> None:
        host, port = self.upstream
        log.info(
            "proxying port %d to %s port %d; faults %s%s",
            self.port, host, port, _describe(self.plan.faults),
            " (client to server)" if self.plan.upstream else "",
        )  # fmt: skip

    def _closed(self) -> None:
        log.debug("stopped: %s", self.stats.summary())

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"<Proxy port {self.port} to {host} port {port}>"

    # -- connections ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.stats.connections
        record = ConnectionRecord(number=number, faults=Faults())
        if self.trace:
            record.trace = Trace(self.clock())
        self._records.append(record)
        stats = self.stats
        stats.connections += 1
        stats.active += 1
        try:
            record.faults = self.plan.faults_for(number, time.monotonic() - self._started_at)
            sock = writer.get_extra_info("socket")
            if sock is not None and record.faults.split:
                with contextlib.suppress(OSError):  # each piece its own segment
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _Connection(self, number, reader, writer, record).run()
        except asyncio.CancelledError:
            pass  # stop_async() cancelled it; it only waits for the task to end
        except Exception:
            record.outcome = "proxy_error"
            log.exception("internal error proxying connection %d", number)
            writer.transport.abort()
        finally:
            stats.active -= 1
            record.done = True


def _describe(faults: Faults) -> str:
    """Return the faults that differ from a clean pass-through, as one short text."""
    if not faults.active:
        return "none"
    clean = Faults()
    return ", ".join(
        f"{name} {_short(getattr(faults, name))}"
        for name in faults.__dataclass_fields__
        if getattr(faults, name) != getattr(clean, name)
    )


def _short(value: object) -> str:
    """Return a fault's value for a log line: a long set of sequences as its size and span."""
    if isinstance(value, frozenset) and len(value) > 8:
        return f"{len(value)} in {min(value)}..{max(value)}"
    if isinstance(value, frozenset):
        return str(sorted(value))
    return str(value)
