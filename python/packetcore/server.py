"""The exchange server: the base protocol byte-exact, the extension, and a loss simulation.

The feed is encoded once, by the engine, into one ``bytes`` object; every answer is
a slice of it or a vectorized selection from it.  Each connection is one task that
frames its own requests (:class:`~packetcore.protocol.RequestFramer`), answers them
in order and awaits ``drain()`` after every chunk, so a slow reader holds at most a
chunk of the stream in memory and a stalled one is closed after ``idle_timeout``.

Drops are reproducible: with ``seed`` S, the stream-all request number N (counted
from 0 over the server's life, in the order the server starts them) draws its keep
mask from ``SeedSequence(S, spawn_key=(0, N))``, and the resends of connection
number C (counted from 0 in accept order) from ``SeedSequence(S, spawn_key=(1, C))``.
Without a seed, fresh entropy stands in for S (logged at DEBUG).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from .engine import PACKET_SIZE, encode, gather
from .packets import Packets
from .protocol import (
    DEFAULT_PORT,
    HELLO,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    FeedInfo,
    Request,
    RequestFramer,
    encode_info,
)

__all__ = ["STREAM_CHUNK", "Server", "ServerStats"]

log = logging.getLogger("packetcore.server")

#: Packets selected and written per step of a stream: about 1.1 MB of wire bytes.
STREAM_CHUNK = 1 << 16
#: Request bytes read per step; with the framer's tail, all a connection buffers.
_READ_SIZE = 1 << 16
#: Answers to small requests are gathered up to this size before one write.
_FLUSH_SIZE = 1 << 16
#: How many resent sequences one log line names before it summarizes.
_LOG_EACH = 8
_BIND_ATTEMPTS = 32
_STREAMS, _RESENDS = 0, 1


@dataclass
class ServerStats:
    """What a server has done since it started."""

    connections: int = 0  #: connections accepted and served
    refused: int = 0  #: connections closed at once for lack of a slot (max_connections)
    active: int = 0  #: connections open now
    streams: int = 0  #: stream-all requests answered
    packets_sent: int = 0  #: packets written by stream-all
    packets_resent: int = 0  #: packets written by resend and resend-range requests
    packets_dropped: int = 0  #: packets the loss simulation dropped
    bad_requests: int = 0  #: unknown callTypes (ignored) and resends of sequences the feed lacks
    timeouts: int = 0  #: connections closed for idling past idle_timeout

    def summary(self) -> str:
        """Return the counters as one line."""
        return (
            f"{self.connections} connections ({self.refused} refused), {self.streams} streams, "
            f"{self.packets_sent} packets sent, {self.packets_resent} resent, "
            f"{self.packets_dropped} dropped, {self.bad_requests} bad requests"
        )


@dataclass
class _Connection:
    number: int
    peer: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    resend_rng: np.random.Generator | None = None
    sent: int = 0
    resent: int = 0
    dropped: int = 0
    resent_log: list[int] = field(default_factory=list)
    timed_out: bool = False


class Server:
    """Serve one feed over the base protocol and its extension."""

    def __init__(
        self,
        feed: Packets | None = None,
        *,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        drop: float = 0.25,
        drop_resends: float = 0.0,
        keep_last: bool = False,
        seed: int | None = None,
        idle_timeout: float = 30.0,
        max_connections: int = 1024,
    ) -> None:
        if feed is None:
            from .feeds import book

            feed = book()
        for name, value in (("drop", drop), ("drop_resends", drop_resends)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, not {value}")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port must be in 0..65535, not {port}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if len(feed) == 0:
            raise ValueError("cannot serve an empty feed")
        order = np.argsort(feed.sequence, kind="stable")
        if not np.array_equal(order, np.arange(len(feed))):
            feed = feed[order]
        if int(feed.sequence[0]) < 1:
            raise ValueError(f"feed sequences start at 1 or above, not {int(feed.sequence[0])}")

        self.host = host
        self.port = port
        self.drop = float(drop)
        self.drop_resends = float(drop_resends)
        self.keep_last = keep_last
        self.seed = seed
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.stats = ServerStats()
        self.feed = feed

        # The feed's wire bytes, encoded once; every answer is a slice or a gather of them.
        self._wire = encode(feed)
        self._wire_view = memoryview(self._wire)
        self._count = len(feed)
        self._sequences = feed.sequence
        self._first = int(feed.sequence[0])
        self._last = int(feed.sequence[-1])
        self._contiguous = bool(np.all(np.diff(feed.sequence) == 1))
        self._info = encode_info(FeedInfo(self._first, self._last))
        self._entropy = np.random.SeedSequence(seed).entropy

        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepted = 0
        self._started = False
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bound: list[tuple[Any, ...]] = []

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        """Return the socket addresses the server listens on."""
        return list(self._bound)

    @property
    def info(self) -> FeedInfo:
        """Return what a hello is answered with."""
        return FeedInfo(self._first, self._last)

    async def start_async(self) -> Server:
        """Start listening on the running event loop; raise :class:`OSError` if binding fails."""
        if self._started:
            raise RuntimeError("the server was already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        sockets, self.port = _bind(self.host, self.port, backlog=max(128, self.max_connections))
        try:
            for sock in sockets:
                self._servers.append(
                    await asyncio.start_server(self._client, sock=sock, limit=_READ_SIZE)
                )
        except BaseException:
            for server in self._servers:
                server.close()
            for sock in sockets:
                sock.close()
            raise
        self._bound = [sock.getsockname() for sock in sockets]
        log.debug("loss seed entropy %d", self._entropy)
        log.info(
            "serving %d packets (sequences %d..%d) on %s port %d (%s); drop %g, resends %g%s",
            len(self.feed), self._first, self._last, self.host, self.port,
            ", ".join(str(address[0]) for address in self._bound),
            self.drop, self.drop_resends, ", last packet kept" if self.keep_last else "",
        )  # fmt: skip
        if self._first != 1:
            # Served anyway: extended clients learn the first sequence from the hello.
            log.warning(
                "the feed starts at sequence %d, not 1: base-protocol clients expect "
                "sequences from 1 and cannot fetch it whole; only extended (packetcore) "
                "clients can",
                self._first,
            )
        return self

    async def stop_async(self) -> None:
        """Stop accepting, close every connection and wait for their tasks; idempotent."""
        if not self._started or self._stopped is None:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Aborted transports close their sockets in callbacks: let those run.
        await asyncio.sleep(0)
        for server in self._servers:
            await server.wait_closed()
        log.debug("stopped: %s", self.stats.summary())
        self._stopped.set()

    async def serve_forever(self) -> None:
        """Wait until the server is stopped."""
        if self._stopped is None:
            raise RuntimeError("the server is not started")
        await self._stopped.wait()

    def start(self) -> Server:
        """Run the server in a background thread; return once it listens."""
        if self._started or self._thread is not None:
            raise RuntimeError("the server was already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            try:
                try:
                    loop.run_until_complete(self.start_async())
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_until_complete(self.serve_forever())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name=f"packetcore-serve:{self.port}")
        self._thread.daemon = True
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop a server run by :meth:`start`; idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result()
        thread.join()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Server:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop_async()

    def __repr__(self) -> str:
        return f"<Server {self.host} port {self.port}, {len(self.feed)} packets>"

    # -- connections ----------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        task = asyncio.current_task()
        if self._stopping or task is None or len(self._tasks) >= self.max_connections:
            self.stats.refused += 1
            log.warning(
                "refused %s: %d connections open (max_connections %d)",
                peer, len(self._tasks), self.max_connections,
            )  # fmt: skip
            writer.transport.abort()
            return
        self._tasks.add(task)
        conn = _Connection(self._accepted, peer, reader, writer)
        self._accepted += 1
        self.stats.connections += 1
        self.stats.active += 1
        log.info("client connected: %s", peer)
        try:
            await self._converse(conn)
            await self._close(conn)
        except asyncio.CancelledError:
            # stop() cancelled it.  Not re-raised: Python 3.11's streams log a cancelled
            # handler task as an error, and stop() only waits for the task to end.
            writer.transport.abort()
        except ConnectionError as exc:
            if not conn.timed_out:
                log.info("connection to %s lost: %s", peer, exc)
            writer.transport.abort()
        except Exception:
            # A bug must cost one connection, never the server.
            log.exception("internal error serving %s", peer)
            writer.transport.abort()
        finally:
            self._tasks.discard(task)
            self.stats.active -= 1
            if conn.timed_out:
                self.stats.timeouts += 1
                log.warning("closed %s: idle for %gs", peer, self.idle_timeout)
            log.info(
                "client disconnected: %s (%d packets sent, %d resent, %d dropped)",
                peer, conn.sent, conn.resent, conn.dropped,
            )  # fmt: skip

    def _watch(self, conn: _Connection) -> asyncio.TimerHandle | None:
        """Arm the idle timer around one wait for the client; the caller cancels it."""
        # A timer that aborts the transport, not asyncio.wait_for: on Python 3.11,
        # wait_for can swallow a cancellation (stop() would then hang on the connection).
        if self.idle_timeout <= 0 or self._loop is None:
            return None
        return self._loop.call_later(self.idle_timeout, self._expire, conn)

    @staticmethod
    def _expire(conn: _Connection) -> None:
        conn.timed_out = True
        conn.writer.transport.abort()

    async def _converse(self, conn: _Connection) -> None:
        framer = RequestFramer()
        while True:
            timer = self._watch(conn)
            try:
                data = await conn.reader.read(_READ_SIZE)
            finally:
                if timer is not None:
                    timer.cancel()
            if not data:
                # Half-close: everything received has been answered; close our side.
                if framer.pending and not conn.timed_out:
                    log.info("%s closed with an incomplete request pending", conn.peer)
                return
            if not await self._answer(conn, framer.feed(data)):
                return

    async def _close(self, conn: _Connection) -> None:
        if conn.timed_out:
            return
        conn.writer.close()
        timer = self._watch(conn)
        try:
            await conn.writer.wait_closed()
        except ConnectionError:
            pass
        finally:
            if timer is not None:
                timer.cancel()

    async def _flush(self, conn: _Connection, out: bytearray) -> None:
        if out:
            conn.writer.write(bytes(out))
            out.clear()
            await self._drain(conn)

    async def _drain(self, conn: _Connection) -> None:
        # A reader that takes nothing for idle_timeout would hold its task forever.
        timer = self._watch(conn)
        try:
            await conn.writer.drain()
        finally:
            if timer is not None:
                timer.cancel()

    async def _answer(self, conn: _Connection, requests: list[Request]) -> bool:
        """Answer ``requests`` in order; return False when the connection must close."""
        out = bytearray()
        try:
            for request in requests:
                kind = request.call_type
                if kind == RESEND:
                    self._resend(conn, request.start, out)
                elif kind == RESEND_RANGE:
                    await self._resend_range(conn, request.start, request.count, out)
                elif kind == HELLO:
                    out += self._info
                    log.debug("hello from %s", conn.peer)
                elif kind == STREAM_ALL:
                    await self._flush(conn, out)
                    await self._stream_all(conn)
                    return False
                else:
                    # The reference exchange ignores an unknown callType and reads on.
                    self.stats.bad_requests += 1
                    log.debug("ignored unknown callType %d from %s", kind, conn.peer)
                if len(out) >= _FLUSH_SIZE:
                    await self._flush(conn, out)
            await self._flush(conn, out)
            return True
        finally:
            self._log_resends(conn)

    def _log_resends(self, conn: _Connection) -> None:
        sequences = conn.resent_log
        if not sequences:
            return
        if len(sequences) <= _LOG_EACH:
            for sequence in sequences:
                log.info("packet resent: %d to %s", sequence, conn.peer)
        else:
            log.info(
                "packets resent: %d (%d..%d) to %s",
                len(sequences), min(sequences), max(sequences), conn.peer,
            )  # fmt: skip
        sequences.clear()

    def _rng(self, kind: int, number: int) -> np.random.Generator:
        sequence = np.random.SeedSequence(self._entropy, spawn_key=(kind, number))
        return np.random.Generator(np.random.PCG64(sequence))

    def _locate(self, start: int, stop: int) -> tuple[int, int]:
        """Return the row span of the sequences ``start <= seq < stop`` the feed has."""
        if self._contiguous:
            size = self._count
            return (
                min(max(start - self._first, 0), size),
                min(max(stop - self._first, 0), size),
            )
        lo, hi = np.searchsorted(self._sequences, (start, stop), side="left")
        return int(lo), int(hi)

    # -- requests ---------------------------------------------------------------------------

    async def _stream_all(self, conn: _Connection) -> None:
        number = self.stats.streams
        self.stats.streams += 1
        rng = self._rng(_STREAMS, number) if self.drop > 0 else None
        total = self._count
        sent = 0
        for lo in range(0, total, STREAM_CHUNK):
            hi = min(lo + STREAM_CHUNK, total)
            chunk, kept = self._select(lo, hi, rng, self.drop, self.keep_last and hi == total)
            if kept:
                conn.writer.write(chunk)
                await self._drain(conn)
            dropped = hi - lo - kept
            sent += kept
            conn.sent += kept
            conn.dropped += dropped
            self.stats.packets_sent += kept
            self.stats.packets_dropped += dropped
        log.info("packets sent: %d of %d to %s (%d dropped)", sent, total, conn.peer, total - sent)

    def _select(
        self, lo: int, hi: int, rng: np.random.Generator | None, drop: float, keep_last: bool
    ) -> tuple[memoryview, int]:
        """Return the wire bytes of the kept rows in ``lo:hi`` and how many were kept."""
        if rng is None:
            return self._wire_view[lo * PACKET_SIZE : hi * PACKET_SIZE], hi - lo
        # One keep mask and one gather per chunk: no Python work per packet.  The mask
        # compares 16-bit draws with drop * 2**16 (drop is exact to 2**-16), which
        # halves the cost of drawing floats.
        size = hi - lo
        draws = rng.bit_generator.random_raw((size + 3) // 4).view(np.uint16)[:size]
        threshold = round(drop * 65536)
        keep = draws >= threshold if threshold < 65536 else np.zeros(size, dtype=bool)
        if keep_last:
            keep[-1] = True
        kept = gather(self._wire_view[lo * PACKET_SIZE : hi * PACKET_SIZE], keep)
        return memoryview(kept), len(kept) // PACKET_SIZE

    def _resend(self, conn: _Connection, sequence: int, out: bytearray) -> None:
        lo, hi = self._locate(sequence, sequence + 1)
        if lo == hi:
            self.stats.bad_requests += 1
            log.warning(
                "%s asked for packet %d, which the feed (%d..%d) lacks: nothing sent",
                conn.peer, sequence, self._first, self._last,
            )  # fmt: skip
            return
        if self.drop_resends > 0 and self._resend_rng(conn).random() < self.drop_resends:
            conn.dropped += 1
            self.stats.packets_dropped += 1
            log.debug("resend of packet %d to %s dropped", sequence, conn.peer)
            return
        out += self._wire_view[lo * PACKET_SIZE : hi * PACKET_SIZE]
        conn.resent += 1
        self.stats.packets_resent += 1
        conn.resent_log.append(sequence)

    def _resend_rng(self, conn: _Connection) -> np.random.Generator:
        if conn.resend_rng is None:
            conn.resend_rng = self._rng(_RESENDS, conn.number)
        return conn.resend_rng

    async def _resend_range(
        self, conn: _Connection, start: int, count: int, out: bytearray
    ) -> None:
        lo, hi = self._locate(start, start + count)
        rng = self._resend_rng(conn) if self.drop_resends > 0 else None
        sent = 0
        for at in range(lo, hi, STREAM_CHUNK):
            end = min(at + STREAM_CHUNK, hi)
            chunk, kept = self._select(at, end, rng, self.drop_resends, False)
            if len(out) + chunk.nbytes <= _FLUSH_SIZE:
                out += chunk
            else:
                await self._flush(conn, out)
                conn.writer.write(chunk)
                await self._drain(conn)
            sent += kept
            conn.resent += kept
            conn.dropped += end - at - kept
            self.stats.packets_resent += kept
            self.stats.packets_dropped += end - at - kept
        log.info(
            "packets resent: %d of range %d+%d to %s (%d in the feed)",
            sent, start, count, conn.peer, hi - lo,
        )  # fmt: skip


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if not isinstance(address, tuple) or len(address) < 2:
        return str(address)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _bind(host: str, port: int, backlog: int) -> tuple[list[socket.socket], int]:
    """Return listening sockets on every address of ``host``, all on one port, and the port.

    Port 0 picks a free port for the first address and asks the same of the others,
    starting over if another process holds it there.
    """
    if host == "localhost":
        # Both loopbacks, whatever this host's resolver says: a client elsewhere may
        # resolve "localhost" to ::1 only, or to 127.0.0.1 only.
        infos = [
            (socket.AF_INET, 0, 0, "", ("127.0.0.1", port)),
            (socket.AF_INET6, 0, 0, "", ("::1", port, 0, 0)),
        ]
    else:
        infos = _resolve(host, port)
    addresses: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address[0]) not in [(f, a[0]) for f, a in addresses]:
            addresses.append((family, address))
    families = {family for family, _ in addresses}
    for attempt in range(_BIND_ATTEMPTS if port == 0 else 1):
        sockets: list[socket.socket] = []
        chosen = port
        try:
            for family, address in addresses:
                sock = _listen(family, (address[0], chosen, *address[2:]), families, backlog)
                if sock is None:
                    continue
                sockets.append(sock)
                chosen = sock.getsockname()[1]
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if exc.errno == errno.EADDRINUSE and port == 0 and attempt + 1 < _BIND_ATTEMPTS:
                continue
            raise OSError(
                exc.errno, f"cannot listen on {host} port {port}: {exc.strerror or exc}"
            ) from None
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {host}: no usable address")
        return sockets, chosen
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    try:
        return list(
            socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                flags=socket.AI_PASSIVE,
            )
        )  # fmt: skip
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen on {host!r}: {exc.strerror or exc}") from None


def _listen(
    family: socket.AddressFamily,
    address: tuple[Any, ...],
    families: set[socket.AddressFamily],
    backlog: int,
) -> socket.socket | None:
    """Return a listening socket on ``address``, or None if this host lacks that family."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return None
        raise
    try:
        # Reuse a port whose last connections linger in TIME_WAIT, as asyncio does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and len(families) > 1:
            # Otherwise "::" would also claim the IPv4 port the AF_INET socket takes.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            # "localhost" names ::1 on hosts whose IPv6 is switched off: skip it there.
            if exc.errno == errno.EADDRNOTAVAIL and len(families) > 1:
                log.debug("skipping %s: %s", address[0], exc.strerror)
                sock.close()
                return None
            raise
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise
