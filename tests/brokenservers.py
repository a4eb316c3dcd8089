"""Base-protocol servers broken on purpose, for grading by ``packetcore-check server``.

Each serves the reference book (sequences 1..14) with nothing dropped, answers resends
and ignores unknown callTypes, as the reference exchange does, except for its one flaw:

* ``corrupt-resend``: a resend of :data:`CORRUPTED` carries another price;
* ``close-early``: stream-all writes :data:`EARLY_BYTES` bytes, then closes;
* ``short-packets``: stream-all writes each packet without its last byte (16 bytes);
* ``shifted``: stream-all writes one stray byte after the third packet;
* ``whole-requests-only``: a read that does not hold whole requests is thrown away;
* ``dies-on-unknown``: an unknown callType stops the whole server (listener included);
* ``bad-hello``: a hello is answered with 16 bytes whose magic is not ``PKCI``;
* ``dies-mid-stream``: stream-all writes :data:`EARLY_BYTES` bytes, then the server stops;
* ``silent``: stream-all is answered with nothing, the connection closed;
* ``mute``: nothing is ever answered, and no connection is closed by the server;
* ``leap``: stream-all carries sequence 1, then :data:`LEAP` (all between lost);
* ``garbage``: stream-all is answered with 0xff bytes, endlessly;
* ``endless``: stream-all carries more than the check reads of a stream, then never ends.
"""

from __future__ import annotations

import asyncio
import contextlib

from fakes import _Background
from packetcore.check.server import STREAM_MOST
from packetcore.io.feeds import book, synthetic
from packetcore.protocol import HELLO, RESEND, STREAM_ALL, RequestFramer

from packetcore import encode

__all__ = ["BAD_INFO", "CORRUPTED", "EARLY_BYTES", "FLAWS", "LEAP", "BrokenServer"]

FLAWS = (
    "corrupt-resend",
    "close-early",
    "short-packets",
    "shifted",
    "whole-requests-only",
    "dies-on-unknown",
    "bad-hello",
    "dies-mid-stream",
    "silent",
    "mute",
    "leap",
    "garbage",
    "endless",
)
#: The second sequence of ``leap``'s stream: the highest a packet can carry.
LEAP = 2**31 - 1
#: What ``bad-hello`` answers a hello with.
BAD_INFO = b"PKCX" + bytes(12)
#: The sequence whose resend ``corrupt-resend`` corrupts.
CORRUPTED = 7
#: What ``close-early`` writes of a stream-all before it closes: mid-packet.
EARLY_BYTES = 100
_PACKET = 17


class BrokenServer(_Background):
    """A base server on a free loopback port with one ``flaw`` of :data:`FLAWS`."""

    def __init__(self, flaw: str) -> None:
        super().__init__()
        if flaw not in FLAWS:
            raise ValueError(f"no flaw named {flaw!r}")
        self.flaw = flaw
        self.wire = encode(book())
        self.last = len(self.wire) // _PACKET

    def _packet(self, sequence: int) -> bytes:
        return self.wire[(sequence - 1) * _PACKET : sequence * _PACKET]

    def _stream(self) -> bytes:
        if self.flaw == "silent":
            return b""
        if self.flaw == "leap":
            last = self._packet(self.last)
            return self._packet(1) + last[:13] + LEAP.to_bytes(4, "big")
        if self.flaw in ("close-early", "dies-mid-stream"):
            return self.wire[:EARLY_BYTES]
        if self.flaw == "short-packets":
            return b"".join(self._packet(s)[:-1] for s in range(1, self.last + 1))
        if self.flaw == "shifted":
            at = 3 * _PACKET
            return self.wire[:at] + b"\0" + self.wire[at:]
        return self.wire

    def _resend(self, sequence: int) -> bytes:
        if not 1 <= sequence <= self.last:
            return b""
        packet = self._packet(sequence)
        if self.flaw == "corrupt-resend" and sequence == CORRUPTED:
            price = int.from_bytes(packet[9:13], "big") + 1
            packet = packet[:9] + price.to_bytes(4, "big") + packet[13:]
        return packet

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = RequestFramer()
        while data := await reader.read(4096):
            if self.flaw == "mute":
                continue
            if self.flaw == "whole-requests-only" and (framer.pending or len(data) % 2):
                framer = RequestFramer()  # the piece, and what it started, is lost
                continue
            for request in framer.feed(data):
                if request.call_type == STREAM_ALL and self.flaw in ("garbage", "endless"):
                    await self._endless(writer)
                    return
                if request.call_type == STREAM_ALL:
                    writer.write(self._stream())
                    await writer.drain()
                    if self.flaw == "dies-mid-stream":
                        await self._die()
                    return
                if request.call_type == RESEND:
                    writer.write(self._resend(request.start))
                    await writer.drain()
                elif request.call_type == HELLO and self.flaw == "bad-hello":
                    writer.write(BAD_INFO)
                    await writer.drain()
                elif self.flaw == "dies-on-unknown":
                    await self._die()
                    return

    async def _endless(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):  # until the check hangs up
            if self.flaw == "endless":
                # Valid packets, sequences increasing, more than the check reads of a stream.
                writer.write(encode(synthetic(STREAM_MOST + 1000, 1)))
                await writer.drain()
                await asyncio.sleep(3600)
            while True:
                writer.write(b"\xff" * 65536)
                await writer.drain()

    async def _die(self) -> None:
        # As a process that crashed: the port closes and every connection with it.
        if self._server is not None:
            self._server.close()
        for other in list(self._writers):
            other.transport.abort()
