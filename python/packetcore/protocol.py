"""Requests and frames of the feed protocol (docs/protocol.md), shared by server and client.

Response packets themselves are the engine's business (:mod:`packetcore.engine`);
this module holds the small fixed layouts around them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .errors import ProtocolError

__all__ = [
    "BASE_RESEND_MAX",
    "CLOCK_MAGIC",
    "CLOCK_SIZE",
    "DEFAULT_PORT",
    "EXTENSION_VERSION",
    "HELLO",
    "INFO_MAGIC",
    "INFO_SIZE",
    "RANGE_REQUEST_SIZE",
    "REQUEST_SIZE",
    "RESEND",
    "RESEND_RANGE",
    "STREAM_ALL",
    "SUBSCRIBE",
    "SUBSCRIBE_CLOCK",
    "SUBSCRIBE_REQUEST_SIZE",
    "FeedClock",
    "FeedInfo",
    "Request",
    "RequestFramer",
    "ResponseFramer",
    "decode_clock",
    "decode_info",
    "encode_clock",
    "encode_info",
    "hello_request",
    "range_requests",
    "resend_request",
    "stream_all_request",
    "subscribe_request",
]

DEFAULT_PORT = 3000

# Base protocol: 2-byte requests [callType][resendSeq].
STREAM_ALL = 1
RESEND = 2
REQUEST_SIZE = 2
#: The highest sequence a base-protocol client may name: the reference exchange reads
#: resendSeq as a signed byte.  packetcore-serve reads it unsigned (up to 255).
BASE_RESEND_MAX = 127

# Extension: hello [3][0] answered by a 16-byte info frame; range [4][0][start][count].
HELLO = 3
RESEND_RANGE = 4
RANGE_REQUEST_SIZE = 10
# Live feeds: subscribe [5][flags][from], answered by packets as they are published.
SUBSCRIBE = 5
SUBSCRIBE_REQUEST_SIZE = 6
#: The subscribe flag that asks a live server for its clock frame before the packets.
SUBSCRIBE_CLOCK = 1
INFO_MAGIC = b"PKCI"
INFO_SIZE = 16
EXTENSION_VERSION = 1
#: The clock frame: when a live server publishes each sequence.
CLOCK_MAGIC = b"PKCT"
CLOCK_SIZE = 32
CLOCK_VERSION = 1

_INFO = struct.Struct(">4sIII")
_CLOCK = struct.Struct(">4sIIIQd")
assert _CLOCK.size == CLOCK_SIZE
_RANGE = struct.Struct(">BBII")
_SUBSCRIBE = struct.Struct(">BBI")
_UINT32_MAX = 2**32 - 1
_SEQUENCE_MAX = 2**31 - 1


def stream_all_request() -> bytes:
    """Return the callType 1 request: stream every packet, then close."""
    return bytes((STREAM_ALL, 0))


def resend_request(sequence: int) -> bytes:
    """Return the callType 2 request for one sequence (0..255 on the wire)."""
    if not 0 <= sequence <= 0xFF:
        raise ValueError(f"the base protocol cannot name sequence {sequence} (0..255)")
    return bytes((RESEND, sequence))


def hello_request() -> bytes:
    """Return the callType 3 request: ask an extended server for its feed info."""
    return bytes((HELLO, 0))


# The same layout as a numpy record, so that many gaps are framed in one call.
_RANGE_RECORD = np.dtype([("call", "u1"), ("zero", "u1"), ("start", ">u4"), ("count", ">u4")])
assert _RANGE_RECORD.itemsize == _RANGE.size == RANGE_REQUEST_SIZE


def range_requests(ranges: npt.ArrayLike) -> bytes:
    """Return one range request per ``(start, count)`` row, back to back."""
    rows = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    if len(rows) and (rows.min() < 0 or rows.max() > _UINT32_MAX):
        raise ValueError("a range start or count does not fit uint32")
    requests = np.zeros(len(rows), dtype=_RANGE_RECORD)
    requests["call"] = RESEND_RANGE
    requests["start"] = rows[:, 0]
    requests["count"] = rows[:, 1]
    return requests.tobytes()


def subscribe_request(first: int, *, clock: bool = False) -> bytes:
    """Return the callType 5 request: every packet with ``seq >= first``, as published.

    ``clock``: ask a live server for its clock frame (:class:`FeedClock`) before the
    packets; a server that has none, or does not know the flag, sends packets only.
    """
    if not 0 <= first <= _UINT32_MAX:
        raise ValueError(f"subscribe sequence {first} does not fit uint32")
    return _SUBSCRIBE.pack(SUBSCRIBE, SUBSCRIBE_CLOCK if clock else 0, first)


class FeedInfo(NamedTuple):
    """What an extended server's info frame says of its feed.

    On a live server ``last`` is the highest sequence published when it answered:
    ``first - 1`` while nothing is published yet.
    """

    first: int
    last: int
    version: int = EXTENSION_VERSION


def encode_info(info: FeedInfo) -> bytes:
    """Return the 16-byte info frame that answers a hello."""
    return _INFO.pack(INFO_MAGIC, info.version, info.first, info.last)


def decode_info(frame: bytes) -> FeedInfo:
    """Parse an info frame; raise :class:`ProtocolError` if it is not one."""
    if len(frame) != INFO_SIZE:
        raise ProtocolError(f"an info frame is {INFO_SIZE} bytes, got {len(frame)}", 0, "info")
    magic, version, first, last = _INFO.unpack(frame)
    if magic != INFO_MAGIC:
        raise ProtocolError(f"bad info frame magic {magic!r}", 0, "magic")
    # Sequences are int32 in a packet: an info frame naming more cannot be true.
    # A live server that has published nothing yet says last = first - 1.
    if version < 1 or first < 1 or last < first - 1 or last > _SEQUENCE_MAX:
        raise ProtocolError(
            f"implausible info frame: version {version}, sequences {first}..{last}", 0, "info"
        )
    return FeedInfo(first, last, version)


class FeedClock(NamedTuple):
    """When a live server publishes each packet: sequence ``first`` at ``epoch_ns``.

    Sequence ``s`` (``first <= s <= final``) is published ``(s - first) / rate`` seconds
    after ``epoch_ns``, nanoseconds since the Unix epoch by the server's clock.
    """

    first: int
    final: int
    epoch_ns: int
    rate: float
    version: int = CLOCK_VERSION

    def published(self, sequences: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float64]:
        """Return when ``sequences`` were published, in seconds since the Unix epoch."""
        return self.epoch_ns / 1e9 + (sequences - self.first) / self.rate


def encode_clock(clock: FeedClock) -> bytes:
    """Return the 32-byte clock frame a subscription with the clock flag starts with."""
    return _CLOCK.pack(
        CLOCK_MAGIC, clock.version, clock.first, clock.final, clock.epoch_ns, clock.rate
    )


def decode_clock(frame: bytes) -> FeedClock:
    """Parse a clock frame; raise :class:`ProtocolError` if it is not one."""
    if len(frame) != CLOCK_SIZE:
        raise ProtocolError(f"a clock frame is {CLOCK_SIZE} bytes, got {len(frame)}", 0, "clock")
    magic, version, first, final, epoch_ns, rate = _CLOCK.unpack(frame)
    if magic != CLOCK_MAGIC:
        raise ProtocolError(f"bad clock frame magic {magic!r}", 0, "magic")
    if version != CLOCK_VERSION:
        raise ProtocolError(f"clock frame version {version} is not understood", 0, "clock")
    if not 1 <= first <= final <= _SEQUENCE_MAX or not (math.isfinite(rate) and rate > 0):
        raise ProtocolError(
            f"implausible clock frame: sequences {first}..{final}, rate {rate}",
            0,
            "clock",
        )
    return FeedClock(first, final, epoch_ns, rate, version)


@dataclass(frozen=True, slots=True)
class Request:
    """One framed request.  ``start``/``count`` name the sequences it asks for."""

    call_type: int
    start: int = 0
    count: int = 0
    #: A subscription's flags (:data:`SUBSCRIBE_CLOCK`); 0 for every other request.
    flags: int = 0


class RequestFramer:
    """Frame requests out of one connection's byte stream, split or coalesced anyhow.

    callType 4 frames as 10 bytes and 5 as 6; every other callType as 2 bytes, unknown
    ones included, as the reference exchange reads them; at most one incomplete request
    (under 10 bytes) is ever held.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete request held for the next chunk."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Request]:
        """Return the requests that ``chunk`` completed, in order.

        An unknown callType is returned as a 2-byte request of its own, with no
        sequences: the server ignores it and framing carries on after it.
        """
        buffer = self._buffer
        buffer += chunk
        requests: list[Request] = []
        at = 0
        size = len(buffer)
        while size - at >= REQUEST_SIZE:
            call_type = buffer[at]
            if call_type == RESEND_RANGE:
                if size - at < RANGE_REQUEST_SIZE:
                    break
                _, _, start, count = _RANGE.unpack_from(buffer, at)
                requests.append(Request(RESEND_RANGE, start, count))
                at += RANGE_REQUEST_SIZE
                continue
            if call_type == SUBSCRIBE:
                if size - at < SUBSCRIBE_REQUEST_SIZE:
                    break
                _, flags, first = _SUBSCRIBE.unpack_from(buffer, at)
                requests.append(Request(SUBSCRIBE, first, flags=flags))
                at += SUBSCRIBE_REQUEST_SIZE
                continue
            if call_type == RESEND:
                requests.append(Request(RESEND, buffer[at + 1], 1))
            else:
                requests.append(Request(call_type))
            at += REQUEST_SIZE
        del buffer[:at]
        return requests


# An info frame at a packet boundary is told from a packet by its fifth byte: the
# version's high byte is 0, which no packet's buy/sell indicator ('B'/'S') can be.
_INFO_START = INFO_MAGIC + b"\0"
_CLOCK_START = CLOCK_MAGIC + b"\0"
_PACKET_SIZE = 17
#: What a :class:`ResponseFramer` cuts a connection's bytes into.
Frame = memoryview | FeedInfo | FeedClock


class ResponseFramer:
    """Split one connection's response bytes into runs of packet bytes and info frames.

    Packets are the engine's to decode; this framer only cuts the stream where an info
    frame (the answer to a hello) stands at a packet boundary.  While no info frame is
    due, every chunk passes through whole and uncopied.  ``expect()`` announces one more
    due frame (a hello was sent); ``expect_late()`` says the connection's very first
    bytes may be a late answer to a hello that was given up on; ``expect_clock()`` that
    a clock frame may follow the info frames due, before any packet (a subscription
    that asked for it: a server without a clock sends none).
    """

    def __init__(self) -> None:
        self.due = 0
        self._late = False
        self._clock = False
        #: Why a clock frame was passed over (malformed, a version not understood): the
        #: connection goes on without a clock.
        self.clock_refused: str | None = None
        self._passed = 0  # packet bytes passed through, to know where boundaries are
        self._held = bytearray()

    def expect(self) -> None:
        """Announce one more info frame due (a hello was sent)."""
        self.due += 1

    def expect_late(self) -> None:
        """Let the connection's first bytes be a late info frame."""
        self._late = True

    def expect_clock(self) -> None:
        """Let a clock frame follow the info frames due, if no packet came first."""
        if not self._passed:
            self._clock = True

    def give_up(self) -> None:
        """Stop waiting for the info frame due: only the very first bytes may still be it.

        Answers come in request order, so a late answer to a hello sent first can only
        open the stream; anything else there is packets.
        """
        if self.due and not self._passed and not self._held:
            self.due -= 1
            self._late = True

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Return, in order, the packet byte runs and the frames ``data`` completed.

        Raise :class:`ProtocolError` for a malformed info frame; a malformed clock frame
        is passed over (``clock_refused`` says why).
        """
        held = self._held
        if self._late:
            held += data
            if len(held) < len(_INFO_START) and _INFO_START.startswith(held):
                return []
            self._late = False
            if held.startswith(_INFO_START):
                self.due += 1
            data = bytes(held)
            held.clear()
        elif held:
            data = bytes(held) + data
            held.clear()
        if not self.due:
            if self._clock:
                return self._clock_frame(bytes(data))
            return self._pass(memoryview(data)) if len(data) else []
        return self._frames(bytes(data))

    def _pass(self, run: memoryview) -> list[Frame]:
        self._passed += len(run)
        return [run]

    def _clock_frame(self, data: bytes) -> list[Frame]:
        """Take the clock frame ``data`` may start with; pass on the rest."""
        if len(data) < len(_CLOCK_START) and _CLOCK_START.startswith(data):
            self._held += data  # could be the start of the clock frame: wait for more
            return []
        if data.startswith(_CLOCK_START):
            if len(data) < CLOCK_SIZE:
                self._held += data
                return []
            self._clock = False
            out: list[Frame] = []
            try:
                out.append(decode_clock(data[:CLOCK_SIZE]))
            except ProtocolError as exc:
                self.clock_refused = str(exc)  # its 32 bytes are skipped all the same
            if len(data) > CLOCK_SIZE:
                out += self._pass(memoryview(data)[CLOCK_SIZE:])
            return out
        self._clock = False  # packets came first: no clock frame on this connection
        return self._pass(memoryview(data))

    def _frames(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        view = memoryview(data)
        at = 0
        while self.due:
            boundary = at + (-self._passed) % _PACKET_SIZE
            found = data.find(INFO_MAGIC, boundary)
            while found >= 0 and (found - boundary) % _PACKET_SIZE:
                found = data.find(INFO_MAGIC, found + 1)
            if found < 0:
                keep = end = len(data)
                if boundary < end:
                    tail = boundary + (end - boundary) // _PACKET_SIZE * _PACKET_SIZE
                    if tail < end and _INFO_START.startswith(data[tail:end]):
                        keep = tail  # could be the start of an info frame: wait for more
                if keep > at:
                    out += self._pass(view[at:keep])
                at = keep
                break
            if found > at:
                out += self._pass(view[at:found])
            at = found
            if len(data) - at < len(_INFO_START):
                break
            if data[at + len(INFO_MAGIC)] != 0:
                step = min(_PACKET_SIZE, len(data) - at)  # a packet whose symbol is PKCI
                out += self._pass(view[at : at + step])
                at += step
                continue
            if len(data) - at < INFO_SIZE:
                break
            out.append(decode_info(data[at : at + INFO_SIZE]))
            at += INFO_SIZE
            self.due -= 1
        if at < len(data):
            if self.due:
                self._held += view[at:]
            elif self._clock:
                out += self._clock_frame(data[at:])
            else:
                out += self._pass(view[at:])
        return out
