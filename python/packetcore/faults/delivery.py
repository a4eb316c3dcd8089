"""Delivery: a shaped stream written on time, in pieces, paced, and ended as the faults say.

:class:`Delivery` writes what a :class:`~packetcore.faults.shaper.Shaper` makes of a
connection's stream to an :class:`asyncio.StreamWriter` at the times, in the pieces and
at the rate the faults say, and ends the connection as they say (FIN, RST or a stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..net.transport import reset_transport
from ..protocol import HELLO, RESEND, RESEND_RANGE, STREAM_ALL, SUBSCRIBE, Request
from .shaper import Shaper

__all__ = ["Delivery", "end_connection", "unsent_bytes"]

#: Bytes a delivery holds back at most (per connection) before its writer waits: what a
#: latency fault holds back is what arrives during the latency, up to this.
_QUEUE_BYTES = 32 << 20
#: Bytes already due but not yet written (pacing, a slow reader) before the writer waits:
#: pacing slows the stream's source instead of buffering what it cannot send yet.
_BEHIND_BYTES = 1 << 20
#: What each held-back chunk counts against the bounds besides its bytes (its keep).
_CHUNK_COST = 256
#: A chunk due within this many seconds of the first of the chunk held before it joins
#: that one: one write for many small ones, held back at most this much longer.
_MERGE = 0.001
#: Pacing slices per second at a bandwidth limit.
_SLICES_PER_SECOND = 50


def unsent_bytes(sock: Any) -> int:
    """Return the bytes still in a socket's kernel send queue (0 where it cannot be asked)."""
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (ImportError, OSError, AttributeError, ValueError):
        return 0


async def end_connection(writer: asyncio.StreamWriter, kind: str) -> None:
    """End the peer's side: FIN for "close", RST for "reset"; nothing for "stall"."""
    if kind == "stall":
        return
    await writer.drain()
    if kind == "reset":
        sock = writer.get_extra_info("socket")
        # The bytes before the cut must leave first: an RST discards what is queued.
        deadline = time.monotonic() + 1.0
        while unsent_bytes(sock) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        reset_transport(writer.transport)
    elif writer.can_write_eof():
        writer.write_eof()


class Delivery:
    """Write a shaped stream to ``writer``: on time, in pieces, paced, ended as the faults say.

    Without latency, jitter, bandwidth or split the bytes are written at once;
    otherwise a task sends them when due, so latency does not add up over chunks: what
    arrives during the latency is held back, however many chunks it comes in, up to
    ``_QUEUE_BYTES`` (and ``_BEHIND_BYTES`` of what is due but not yet written).
    """

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        shaper: Shaper,
        rng: np.random.Generator | None = None,
        *,
        written: Callable[[int], None] | None = None,
        tap: Callable[[bytes | bytearray | memoryview], None] | None = None,
    ) -> None:
        """``written(n)`` is told of every ``n`` bytes handed to the writer, ``tap`` of
        the bytes themselves (as they are handed over)."""
        self.writer = writer
        self._written = written
        self._tap = tap
        self.shaper = shaper
        self.faults = shaper.faults
        self.ended = False  # the limit was reached: nothing more goes out
        self.end_kind: str | None = None  # how it ended: "close", "reset" or "stall"
        self.writes = 0
        self.largest_write = 0
        self._rng = rng if rng is not None else np.random.default_rng()
        self._due = 0.0
        self._next_send = 0.0
        # Chunks held back until due: [first due, due, bytes or how the stream ends].
        self._held: deque[list[Any]] = deque()
        self._held_bytes = 0
        self._ready = asyncio.Event()  # something is held
        self._room = asyncio.Event()  # the writer took something
        self._task: asyncio.Task[None] | None = None
        self._streamed = False
        self.error: BaseException | None = None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Shape ``data`` and send it (or queue it until due)."""
        if self.ended:
            return
        out = self.shaper.feed(data)
        await self._put(out)

    async def finish(self, end: str | None = None) -> None:
        """Send what is held back and wait until all is written; ``end`` ends the stream."""
        if not self.ended:
            await self._put(self.shaper.finish())
            if end is not None and not self.ended:
                await self._put_end(end)
        if self._task is not None:
            await asyncio.shield(self._task)
        if self.error is not None:
            raise self.error

    def request(self, request: Request) -> bool:
        """Note a request of the peer's; return whether it is to be answered.

        Its answers are what the faults will shape.  False from the request that
        ``close_at_request`` names on: the caller hands over what it answered before,
        then ends the connection (:meth:`close`), answering nothing more.
        """
        if not self.shaper.request(request):
            return False
        call_type = request.call_type
        if call_type == HELLO:
            self.shaper.hello()
        elif call_type in (STREAM_ALL, SUBSCRIBE):
            self._streamed = True
        elif call_type in (RESEND, RESEND_RANGE) and not self._streamed:
            self.shaper.resend_mode()
        return True

    async def close(self, reader: asyncio.StreamReader) -> None:
        """Send what is held back and end the stream; a stalled one waits for the peer.

        Ended here, through the queue: a timed delivery's task sends what is due first,
        then the end, and only then finishes.
        """
        await self.finish("close")
        if self.end_kind == "stall":
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(1 << 16):
                    pass

    def cancel(self) -> None:
        """Stop the sending task, if any (the connection is going away)."""
        if self._task is not None:
            self._task.cancel()

    async def _put(self, out: bytes | bytearray | memoryview) -> None:
        if out:
            if not self.faults.timed:
                self._note(out)
                self.writer.write(out)
                await self.writer.drain()
            else:
                await self._enqueue(out)
        if self.shaper.limit_hit and not self.ended:
            await self._put_end(self.faults.limit_kind)

    async def _put_end(self, kind: str) -> None:
        self.ended = True
        self.end_kind = kind
        if self.faults.timed:
            await self._enqueue(kind)
        else:
            await end_connection(self.writer, kind)

    def _note(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        self.writes += 1
        self.largest_write = max(self.largest_write, size)
        if self._written is not None:
            self._written(size)
        if self._tap is not None:
            self._tap(data)

    async def _enqueue(self, item: bytes | bytearray | memoryview | str) -> None:
        if self.error is not None:
            raise self.error
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        faults = self.faults
        due = time.monotonic() + faults.latency
        if faults.jitter:
            due += float(self._rng.uniform(-faults.jitter, faults.jitter))
        # A byte stream cannot overtake itself: jitter never moves a chunk before the last.
        self._due = max(self._due, due)
        due = self._due
        held = self._held
        # Bounded in bytes, not chunks: a feed of many small chunks fills the latency.
        while self._held_bytes >= _QUEUE_BYTES or (
            self._held_bytes >= _BEHIND_BYTES and held[0][1] <= time.monotonic()
        ):
            self._room.clear()
            await self._room.wait()
            if self.error is not None:
                raise self.error
            if self._task.done():
                return  # cancelled: the connection is going away
        last = held[-1] if held else None
        if (
            last is not None
            and not isinstance(item, str)
            and not isinstance(last[2], str)
            and due - last[0] <= _MERGE
        ):
            last[1] = due
            last[2] += item
            self._held_bytes += len(item)
            return
        held.append([due, due, item if isinstance(item, str) else bytearray(item)])
        self._held_bytes += _CHUNK_COST + (0 if isinstance(item, str) else len(item))
        self._ready.set()

    async def _run(self) -> None:
        held = self._held
        try:
            while True:
                while not held:
                    self._ready.clear()
                    await self._ready.wait()
                _, due, item = held.popleft()
                self._held_bytes -= _CHUNK_COST + (0 if isinstance(item, str) else len(item))
                self._room.set()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if isinstance(item, str):
                    await end_connection(self.writer, item)
                    return
                await self._write(item)
        except (ConnectionError, OSError) as exc:
            self.error = exc
            self.ended = True
        finally:
            self._room.set()  # a sender waiting for room learns of the end

    async def _write(self, data: bytearray) -> None:
        faults, writer = self.faults, self.writer
        step = faults.split or len(data)
        rate = faults.bandwidth
        if rate is not None:
            step = max(1, min(step, int(rate / _SLICES_PER_SECOND)))
        for at in range(0, len(data), step):
            piece = data if step >= len(data) else data[at : at + step]
            if rate is not None:
                self._next_send = max(self._next_send, time.monotonic())
            self._note(piece)
            writer.write(piece)
            await writer.drain()
            if rate is not None:
                self._next_send += len(piece) / rate
                await asyncio.sleep(max(0.0, self._next_send - time.monotonic()))
            elif faults.split and at + step < len(data):
                await asyncio.sleep(0)  # one piece per segment, not coalesced
