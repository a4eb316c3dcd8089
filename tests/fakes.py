"""Servers written for the tests: a base-protocol exchange that is hard on its clients,
and a proxy that makes a real server die mid-stream and come back.

Each runs its own event loop in a background thread, so a test can call the
synchronous ``packetcore.fetch`` (or run the CLI) against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Sequence
from types import TracebackType

from packetcore.io.feeds import book
from packetcore.protocol import (
    HELLO,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    FeedInfo,
    RequestFramer,
    encode_info,
)
from serverutil import LoopThread

from packetcore import Packets, encode

__all__ = ["FakeBaseServer", "FlakyProxy"]


class _Background:
    """Start/stop plumbing shared by the fakes: ``start()``, ``stop()``, ``with``."""

    host = "127.0.0.1"
    port = 0

    def __init__(self) -> None:
        self._loop: LoopThread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _tracked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._tracked, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        # Let every handler finish here: one left suspended would run its cleanup only
        # when garbage-collected, after the loop is closed.
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def start(self) -> _Background:
        self._loop = LoopThread("fake-server")
        self._loop.run(self._listen())
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.run(self._unlisten())
            self._loop.close()
            self._loop = None

    def __enter__(self) -> _Background:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FakeBaseServer(_Background):
    """A base-protocol exchange, stricter than the reference where clients break.

    * stream-all drops each packet with probability ``drop``, and the last packet
      always on the first ``drop_last_passes`` passes;
    * resends above ``resend_max`` are never answered (nor any, if not
      ``answer_resends``), and a resend of a sequence the feed lacks is recorded in
      ``bad_resends`` (the reference exchange would crash);
    * callType 3 is ignored unless ``answer_hello`` (then it acts extended, answering
      range requests only if ``answer_ranges``);
    * every packet is written in pieces of ``pieces`` bytes with ``pause`` seconds
      between them, so packets reach the client split across reads;
    * ``hello_delay``: with ``answer_hello``, the info frame comes that late;
    * ``conflict``: passes after the first send packet 1 with another price;
    * ``invalid``: the first pass starts with a packet whose side is ``X``.
    """

    def __init__(
        self,
        feed: Packets | None = None,
        *,
        drop: float = 0.25,
        drop_last_passes: int = 2,
        resend_max: int = 127,
        answer_resends: bool = True,
        answer_hello: bool = False,
        answer_ranges: bool = True,
        pieces: Sequence[int] = (5, 7, 5),
        pause: float = 0.0005,
        seed: int = 0,
        hello_delay: float = 0.0,
        conflict: bool = False,
        invalid: bool = False,
    ) -> None:
        super().__init__()
        self.feed = book() if feed is None else feed
        self.wire = encode(self.feed)
        self.first = int(self.feed.sequence[0])
        self.last = int(self.feed.sequence[-1])
        self.drop = drop
        self.drop_last_passes = drop_last_passes
        self.resend_max = resend_max
        self.answer_resends = answer_resends
        self.answer_hello = answer_hello
        self.answer_ranges = answer_ranges
        self.pieces = tuple(pieces)
        self.pause = pause
        self.hello_delay = hello_delay
        self.conflict = conflict
        self.invalid = invalid
        self._random = random.Random(seed)
        self.passes = 0
        self.requests: list[tuple[int, int]] = []
        self.bad_resends: list[int] = []
        self.pieces_written = 0

    def _packet(self, sequence: int) -> bytes:
        at = (sequence - self.first) * 17
        return self.wire[at : at + 17]

    async def _write(self, writer: asyncio.StreamWriter, packet: bytes) -> None:
        at = 0
        for size in self.pieces:
            if at >= len(packet):
                break
            writer.write(packet[at : at + size])
            await writer.drain()
            self.pieces_written += 1
            at += size
            await asyncio.sleep(self.pause)
        if at < len(packet):
            writer.write(packet[at:])
            await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = RequestFramer()
        while data := await reader.read(4096):
            for request in framer.feed(data):
                call, start = request.call_type, request.start
                self.requests.append((call, start))
                if call == RESEND_RANGE:
                    if self.answer_hello and self.answer_ranges:
                        stop = min(start + request.count, self.last + 1)
                        for sequence in range(max(start, self.first), stop):
                            await self._write(writer, self._packet(sequence))
                elif call == STREAM_ALL:
                    await self._stream_all(writer)
                    return
                elif call == RESEND:
                    if not self.first <= start <= self.last:
                        self.bad_resends.append(start)
                    elif self.answer_resends and start <= self.resend_max:
                        await self._write(writer, self._packet(start))
                elif call == HELLO and self.answer_hello:
                    if self.hello_delay:
                        await asyncio.sleep(self.hello_delay)
                    writer.write(encode_info(FeedInfo(self.first, self.last)))
                    await writer.drain()

    async def _stream_all(self, writer: asyncio.StreamWriter) -> None:
        self.passes += 1
        if self.invalid and self.passes == 1:
            bad = bytearray(self._packet(self.first))
            bad[4:5] = b"X"
            await self._write(writer, bytes(bad))
        for sequence in range(self.first, self.last + 1):
            if sequence == self.last and self.passes <= self.drop_last_passes:
                continue
            if self._random.random() < self.drop:
                continue
            packet = self._packet(sequence)
            if self.conflict and sequence == self.first and self.passes > 1:
                packet = packet[:9] + (12345 + self.passes).to_bytes(4, "big") + packet[13:]
            await self._write(writer, packet)
        writer.write_eof()
        await writer.drain()


class FlakyProxy(_Background):
    """Forward to a real server; cut the first ``cuts`` connections mid-stream.

    A cut connection is reset after ``cut_after`` bytes from the server, and then the
    proxy stops listening for ``down_for`` seconds (connections are refused), as a
    server that died and was restarted would.
    """

    def __init__(
        self, upstream_port: int, *, cut_after: int, cuts: int = 1, down_for: float = 0.3
    ) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = cuts
        self.down_for = down_for
        self.cut = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        cutting = self.cut < self.cuts
        if cutting:
            self.cut += 1

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
            with contextlib.suppress(OSError):
                up_writer.write_eof()

        pump = asyncio.ensure_future(upstream())
        sent = 0
        try:
            while data := await up_reader.read(65536):
                if cutting and sent + len(data) >= self.cut_after:
                    writer.write(data[: self.cut_after - sent])
                    await writer.drain()
                    await self._die()
                    _reset(writer)
                    return
                writer.write(data)
                await writer.drain()
                sent += len(data)
            writer.write_eof()
            await writer.drain()
            await reader.read()  # until the client closes: it may still send
        finally:
            pump.cancel()
            up_writer.transport.abort()

    async def _die(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._server = None
        asyncio.get_running_loop().call_later(
            self.down_for, lambda: asyncio.ensure_future(self._listen())
        )


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0 turns the close into a reset, as a crashed process's socket does.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    writer.transport.abort()
