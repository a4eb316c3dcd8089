"""A fault-injecting TCP proxy for packetcore's tests, scriptable per connection.

``FaultProxy(upstream_host, upstream_port, script)`` is a sync context manager. It runs an asyncio
proxy in a background thread, listening on 127.0.0.1 on a free port (``proxy.port``). Every
accepted connection gets its own upstream connection and its own faults.

Script format
-------------
``script`` chooses the faults of each accepted connection by its index (0 for the first accepted
connection, 1 for the next, and so on):

* a sequence: connection ``i`` gets ``script[i]``; connections past the end pass through;
* a callable ``f(i) -> Faults | None``;
* ``None``: every connection passes through.

A ``None`` entry or result means a clean pass-through (same as ``Faults()``).

Faults (all compose; they act on the server->client direction unless said otherwise)
-------------------------------------------------------------------------------------
Byte offsets and counts (``close_after``, ``reset_after``, ``corrupt_at``) are positions in the
stream the *client* gets: after swallowing, duplication and reordering, counting the info frame.

* ``close_after=N``: deliver exactly N bytes (N may fall mid-packet), then close gracefully: FIN
  to the client, and the upstream connection is closed. N=0 closes right after accept, without
  connecting upstream. If the server ends the stream first, its end is passed on as usual.
* ``reset_after=N``: the same, but the client gets a TCP RST (SO_LINGER 0) after the N bytes have
  left the proxy's socket. N=0 resets right after accept, so a client may see the reset as
  early as its connect() call. If both are set the smaller wins (reset on a tie).
* ``delay=s``: every chunk from the server (and the end of the stream) is held back s seconds
  after the proxy read it: a fixed latency that does not add up over chunks.
* ``bandwidth=r``: the client gets at most r bytes/s, paced in small slices without bursts.
* ``swallow_resends``: the proxy frames the client's requests (2 bytes each, callType 4 is 10). A
  connection becomes a *resend connection* at its first callType 2 or 4 request if no callType 1
  came before it. From then on the proxy drops every server->client byte, except the 16-byte info
  frame described below. The connection stays open, so the client sees silence. This also drops
  any later stream-all answer on that connection. Connections whose first answer-bearing
  request is callType 1 are untouched.
* ``duplicate={i, ...}``: packet i is sent twice in a row.
* ``reorder={i, ...}``: packet i is held back and sent right after packet i+1 (the pair is swapped).
  A packet that releases a held one is never held itself. A held packet is released when the next
  packet arrives or at the end of the stream, so it can wait as long as packet i+1 does.
* ``corrupt_at=(k, ...)``: the byte at client-visible offset k is XORed with ``corrupt_xor``.
* ``hang``: accept, read and discard what the client sends, never connect upstream, never answer,
  never close; the connection ends when the client closes it or the proxy stops.

Packets are counted from 0 in the server's 17-byte packet stream of the connection. The stream
starts after the info frame, and swallowed bytes are not part of it. The info frame: when the
client's first request is the hello ``[3][0]`` and the server's answer starts with ``b"PKCI"``,
the first 16 bytes pass through untouched and unframed (a base server ignores the hello, so its
first bytes are packets). A partial trailing packet is passed on as it is at the end of the stream.

``proxy.stats`` lists a ``ConnStats`` per accepted connection: bytes each way, requests seen, the
faults that fired, and how the connection ended. ``proxy.wait_idle()`` waits until every accepted
connection has finished. Leaving the ``with`` block stops the proxy within a few seconds: open
connections are aborted and the thread is joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

from packetcore.protocol import (
    HELLO,
    INFO_MAGIC,
    INFO_SIZE,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    RequestFramer,
)
from serverutil import LoopThread

from packetcore import PACKET_SIZE

CHUNK = 65536
QUEUE_CHUNKS = 64
SLICES_PER_SECOND = 50


@dataclass(frozen=True)
class Faults:
    """The faults applied to one connection; the default is a clean pass-through."""

    close_after: int | None = None
    reset_after: int | None = None
    delay: float = 0.0
    bandwidth: float | None = None
    swallow_resends: bool = False
    duplicate: frozenset[int] = frozenset()
    reorder: frozenset[int] = frozenset()
    corrupt_at: tuple[int, ...] = ()
    corrupt_xor: int = 0xFF
    hang: bool = False

    def __post_init__(self) -> None:
        """Normalise the collections and reject impossible values."""
        object.__setattr__(self, "duplicate", frozenset(_ints(self.duplicate)))
        object.__setattr__(self, "reorder", frozenset(_ints(self.reorder)))
        object.__setattr__(self, "corrupt_at", tuple(_ints(self.corrupt_at)))
        for name in ("close_after", "reset_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth}")
        if not 1 <= self.corrupt_xor <= 0xFF:
            raise ValueError(f"corrupt_xor must be in 1..255, got {self.corrupt_xor}")

    @property
    def limit(self) -> int | None:
        """How many bytes the client gets before the proxy ends the connection, if limited."""
        cuts = [n for n in (self.close_after, self.reset_after) if n is not None]
        return min(cuts) if cuts else None

    @property
    def limit_kind(self) -> str:
        """How the limit ends the connection: "reset" or "close"."""
        close = math.inf if self.close_after is None else self.close_after
        return "reset" if self.reset_after is not None and self.reset_after <= close else "close"


def _ints(values: Iterable[int]) -> list[int]:
    """Check that a collection of packet indices or offsets holds non-negative ints."""
    out = [int(v) for v in values]
    if any(v < 0 for v in out):
        raise ValueError(f"indices and offsets must be >= 0, got {sorted(out)}")
    return out


Script: TypeAlias = Sequence[Faults | None] | Callable[[int], Faults | None] | None


@dataclass
class ConnStats:
    """What happened on one proxied connection (written by the proxy thread)."""

    index: int
    faults: Faults
    bytes_up: int = 0
    bytes_from_server: int = 0
    bytes_to_client: int = 0
    swallowed: int = 0
    requests: dict[int, int] = field(default_factory=dict)
    info_frame: bool = False
    duplicated: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)
    corrupted: list[int] = field(default_factory=list)
    outcome: str = "open"
    done: bool = False

    @property
    def applied(self) -> list[str]:
        """The names of the faults that actually fired on this connection."""
        fired = {
            "hang": self.outcome == "hang",
            "close_after": self.outcome == "close",
            "reset_after": self.outcome == "reset",
            "delay": self.faults.delay > 0 and self.bytes_to_client > 0,
            "bandwidth": self.faults.bandwidth is not None and self.bytes_to_client > 0,
            "swallow_resends": self.swallowed > 0,
            "duplicate": bool(self.duplicated),
            "reorder": bool(self.reordered),
            "corrupt": bool(self.corrupted),
        }
        return [name for name, hit in fired.items() if hit]


class RequestTracker:
    """Frames the client->server request stream and tracks what its answers will be."""

    def __init__(self, stats: ConnStats) -> None:
        """Start with no requests seen."""
        self._stats = stats
        self._framer = RequestFramer()
        self.count = 0
        self.first_hello = False
        self.stream_seen = False
        self.resend_mode = False

    def feed(self, data: bytes) -> None:
        """Account for the complete requests in data (requests may be split or coalesced)."""
        for request in self._framer.feed(data):
            call = request.call_type
            if self.count == 0:
                self.first_hello = call == HELLO
            self.count += 1
            self._stats.requests[call] = self._stats.requests.get(call, 0) + 1
            if call == STREAM_ALL:
                self.stream_seen = True
            elif call in (RESEND, RESEND_RANGE) and not self.stream_seen:
                self.resend_mode = True


class DownstreamShaper:
    """Turns the server->client byte stream into what the client gets (pure, no I/O)."""

    def __init__(self, faults: Faults, requests: RequestTracker, stats: ConnStats) -> None:
        """Prepare to shape one connection's server->client stream."""
        self._faults = faults
        self._requests = requests
        self._stats = stats
        self._phase = "start"  # start -> header (info frame) -> body
        self._head = bytearray()
        self._header_left = 0
        self._framed = bool(faults.duplicate or faults.reorder)
        self._partial = bytearray()
        self._index = 0
        self._held: tuple[bytes, int] | None = None
        self._out = 0
        self.limit_hit = False

    def feed(self, data: bytes) -> bytes:
        """Shape one chunk from the server; returns the bytes to send to the client now."""
        self._stats.bytes_from_server += len(data)
        if self.limit_hit:
            return b""
        header, body = self._split_header(data)
        return self._finish_bytes(header + self._body(body))

    def finish(self) -> bytes:
        """Flush what is held back at the end of the server's stream."""
        if self.limit_hit:
            return b""
        out = self._body(bytes(self._head))
        self._head.clear()
        if self._held is not None:
            out += self._emit(*self._held)
            self._held = None
        out += bytes(self._partial)
        self._partial.clear()
        return self._finish_bytes(out)

    def _split_header(self, data: bytes) -> tuple[bytes, bytes]:
        """Split off the leading info frame, which passes through untouched."""
        if self._phase == "body":
            return b"", data
        if self._phase == "start":
            if not self._requests.first_hello:
                self._phase = "body"
                return b"", data
            self._head += data
            if len(self._head) < len(INFO_MAGIC):
                return b"", b""
            data = bytes(self._head)
            self._head.clear()
            if not data.startswith(INFO_MAGIC):
                self._phase = "body"
                return b"", data
            self._phase = "header"
            self._header_left = INFO_SIZE
            self._stats.info_frame = True
        taken = min(self._header_left, len(data))
        self._header_left -= taken
        if self._header_left == 0:
            self._phase = "body"
        return data[:taken], data[taken:]

    def _body(self, data: bytes) -> bytes:
        """Apply swallowing and the packet faults to packet-stream bytes."""
        if not data:
            return b""
        if self._faults.swallow_resends and self._requests.resend_mode:
            self._stats.swallowed += len(data)
            return b""
        if not self._framed:
            return data
        self._partial += data
        out = bytearray()
        while len(self._partial) >= PACKET_SIZE:
            packet = bytes(self._partial[:PACKET_SIZE])
            del self._partial[:PACKET_SIZE]
            index = self._index
            self._index += 1
            if self._held is not None:
                held, held_index = self._held
                self._held = None
                out += self._emit(packet, index) + self._emit(held, held_index)
                self._stats.reordered.append(held_index)
            elif index in self._faults.reorder:
                self._held = (packet, index)
            else:
                out += self._emit(packet, index)
        return bytes(out)

    def _emit(self, packet: bytes, index: int) -> bytes:
        """Return a packet once, or twice if it is to be duplicated."""
        if index in self._faults.duplicate:
            self._stats.duplicated.append(index)
            return packet + packet
        return packet

    def _finish_bytes(self, data: bytes) -> bytes:
        """Cut at the byte limit and corrupt bytes, in client-visible offsets."""
        if not data:
            return b""
        start = self._out
        limit = self._faults.limit
        if limit is not None and start + len(data) >= limit:
            data = data[: limit - start]
            self.limit_hit = True
        if self._faults.corrupt_at:
            buf = bytearray(data)
            for offset in self._faults.corrupt_at:
                if start <= offset < start + len(buf):
                    buf[offset - start] ^= self._faults.corrupt_xor
                    self._stats.corrupted.append(offset)
            data = bytes(buf)
        self._out += len(data)
        return data


def _unsent_bytes(sock: Any) -> int:
    """Bytes still in the kernel send queue of a socket (0 where it cannot be asked)."""
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (ImportError, OSError, AttributeError, ValueError):
        return 0


class _Connection:
    """One proxied client connection and its upstream twin."""

    def __init__(
        self,
        proxy: FaultProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stats: ConnStats,
    ) -> None:
        """Bind the client streams, the faults and the stats of one connection."""
        self._proxy = proxy
        self._reader = reader
        self._writer = writer
        self._stats = stats
        self._faults = stats.faults
        self._requests = RequestTracker(stats)
        self._shaper = DownstreamShaper(self._faults, self._requests, stats)
        self._queue: asyncio.Queue[tuple[float, bytes | str]] = asyncio.Queue(QUEUE_CHUNKS)
        self._up_reader: asyncio.StreamReader | None = None
        self._up_writer: asyncio.StreamWriter | None = None
        self._upstream_open = False
        self._next_send = 0.0

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
            await self._close(abort=aborted)

    async def _serve(self) -> bool:
        """Run the faults; returns whether the client socket should be aborted at the end."""
        faults = self._faults
        if faults.hang:
            self._stats.outcome = "hang"
            await self._discard_client(None)
            return False
        if faults.limit == 0:
            await self._end(faults.limit_kind)
            await self._discard_client(self._proxy.linger)
            return faults.limit_kind == "reset"
        try:
            self._up_reader, self._up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self._proxy.upstream), self._proxy.connect_timeout
            )
        except (OSError, asyncio.TimeoutError):
            self._stats.outcome = "upstream_error"
            return True
        self._upstream_open = True
        up = asyncio.create_task(self._pump_up())
        down = asyncio.create_task(self._pump_down())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if not down.done():
                if up.result():  # the client half-closed: let the answers finish
                    await down
                else:
                    self._set_outcome("client")
                    return True
            if self._stats.outcome in ("eof", "close", "upstream_error") and not up.done():
                self._close_upstream()
                await asyncio.wait({up}, timeout=self._proxy.linger)
            return self._stats.outcome not in ("eof", "close", "upstream_error")
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump_up(self) -> bool:
        """Forward the client's bytes upstream; True if the client half-closed, False on error."""
        while True:
            try:
                data = await self._reader.read(CHUNK)
            except (ConnectionError, OSError):
                return False
            if not data:
                break
            self._stats.bytes_up += len(data)
            self._requests.feed(data)  # before forwarding: the answer cannot precede it
            if self._upstream_open and self._up_writer is not None:
                try:
                    self._up_writer.write(data)
                    await self._up_writer.drain()
                except (ConnectionError, OSError):
                    self._upstream_open = False
        if self._upstream_open and self._up_writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                self._up_writer.write_eof()
        return True

    async def _pump_down(self) -> None:
        """Shape the server's stream into a queue and send it on with delay and pacing."""
        producer = asyncio.create_task(self._read_upstream())
        try:
            await self._send()
        except (ConnectionError, OSError):
            self._set_outcome("client")
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _read_upstream(self) -> None:
        """Read the server's stream, shape it and queue it with its release time."""
        assert self._up_reader is not None
        end = "eof"
        try:
            while True:
                data = await self._up_reader.read(CHUNK)
                out = self._shaper.feed(data) if data else self._shaper.finish()
                if out:
                    await self._queue.put((time.monotonic() + self._faults.delay, out))
                if self._shaper.limit_hit:
                    end = self._faults.limit_kind
                    break
                if not data:
                    break
        except (ConnectionError, OSError):
            end = "upstream_error"
        await self._queue.put((time.monotonic() + self._faults.delay, end))

    async def _send(self) -> None:
        """Send queued chunks to the client when due, then end the stream as queued."""
        while True:
            due, item = await self._queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if isinstance(item, str):
                await self._end(item)
                return
            await self._write(item)

    async def _write(self, data: bytes) -> None:
        """Write to the client, paced to the bandwidth limit if there is one."""
        rate = self._faults.bandwidth
        if rate is None:
            self._writer.write(data)
            await self._writer.drain()
            self._stats.bytes_to_client += len(data)
            return
        step = max(1, min(CHUNK, int(rate / SLICES_PER_SECOND)))
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            self._next_send = max(self._next_send, time.monotonic())
            self._writer.write(piece)
            await self._writer.drain()
            self._stats.bytes_to_client += len(piece)
            self._next_send += len(piece) / rate
            await asyncio.sleep(max(0.0, self._next_send - time.monotonic()))

    async def _end(self, kind: str) -> None:
        """End the client side: FIN for a graceful end, RST for "reset"."""
        self._stats.outcome = kind
        await self._writer.drain()
        if kind == "reset":
            sock = self._writer.get_extra_info("socket")
            deadline = time.monotonic() + 1.0
            while _unsent_bytes(sock) > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._writer.transport.abort()
        elif self._writer.can_write_eof():
            self._writer.write_eof()

    async def _discard_client(self, timeout: float | None) -> None:
        """Read and drop what the client sends until it closes (or the timeout passes)."""

        async def drain() -> None:
            while data := await self._reader.read(CHUNK):
                self._stats.bytes_up += len(data)
                self._requests.feed(data)

        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(drain(), timeout)

    def _close_upstream(self) -> None:
        """Stop forwarding upstream and close the upstream socket."""
        self._upstream_open = False
        if self._up_writer is not None:
            self._up_writer.close()

    def _set_outcome(self, outcome: str) -> None:
        """Record how the connection ended, unless a fault already did."""
        if self._stats.outcome == "open" or outcome == "shutdown":
            self._stats.outcome = outcome

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


class FaultProxy:
    """A loopback TCP proxy in a background thread that injects scripted faults per connection."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        script: Script = None,
        *,
        connect_timeout: float = 5.0,
        linger: float = 1.0,
    ) -> None:
        """Configure the proxy; it listens once the ``with`` block is entered."""
        self.upstream = (upstream_host, upstream_port)
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.port = 0
        self._script = script
        self._stats: list[ConnStats] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: LoopThread | None = None
        self._server: asyncio.Server | None = None

    def faults_for(self, index: int) -> Faults:
        """The faults the script gives the connection accepted index-th (from 0)."""
        script = self._script
        chosen: Faults | None
        if script is None:
            chosen = None
        elif callable(script):
            chosen = script(index)
        else:
            chosen = script[index] if index < len(script) else None
        return chosen if chosen is not None else Faults()

    @property
    def stats(self) -> list[ConnStats]:
        """One record per accepted connection, in accept order."""
        return list(self._stats)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every accepted connection has finished; False on timeout."""
        deadline = time.monotonic() + timeout
        while not all(s.done for s in self._stats):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def __enter__(self) -> FaultProxy:
        """Start the event loop thread and the listener."""
        self._loop = LoopThread("faultproxy")
        try:
            self.port = self._loop.run(self._start())
        except BaseException:
            self._loop.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening, abort open connections and join the thread."""
        assert self._loop is not None
        try:
            self._loop.run(self._stop())
        finally:
            self._loop.close()

    async def _start(self) -> int:
        """Listen on a free loopback port and return it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        """Close the listener and cancel every connection, with bounded waits."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        await asyncio.sleep(0)  # let aborted transports run their connection_lost

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handle one accepted connection with the faults the script gives it."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        index = len(self._stats)
        stats = ConnStats(index=index, faults=Faults())
        self._stats.append(stats)
        try:
            stats.faults = self.faults_for(index)
            await _Connection(self, reader, writer, stats).run()
        except asyncio.CancelledError:
            pass
        except Exception:
            stats.outcome = "proxy_error"
            writer.transport.abort()
            raise
        finally:
            stats.done = True
            if task is not None:
                self._tasks.discard(task)
