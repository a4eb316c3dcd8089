"""Requests and frames of the feed protocol (docs/protocol.md), shared by server and client.

Response packets themselves are the engine's business (:mod:`packetcore.engine`);
this module holds the small fixed layouts around them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .errors import ProtocolError

__all__ = [
    "BASE_RESEND_MAX",
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
    "SUBSCRIBE_REQUEST_SIZE",
    "FeedInfo",
    "Request",
    "RequestFramer",
    "ResponseFramer",
    "decode_info",
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
# Live feeds: subscribe [5][0][from], answered by packets as they are published.
SUBSCRIBE = 5
SUBSCRIBE_REQUEST_SIZE = 6
INFO_MAGIC = b"PKCI"
INFO_SIZE = 16
EXTENSION_VERSION = 1

_INFO = struct.Struct(">4sIII")
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


def subscribe_request(first: int) -> bytes:
    """Return the callType 5 request: every packet with ``seq >= first``, as published."""
    if not 0 <= first <= _UINT32_MAX:
        raise ValueError(f"subscribe sequence {first} does not fit uint32")
    return _SUBSCRIBE.pack(SUBSCRIBE, 0, first)


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


@dataclass(frozen=True, slots=True)
class Request:
    """One framed request.  ``start``/``count`` name the sequences it asks for."""

    call_type: int
    start: int = 0
    count: int = 0


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
                _, _, first = _SUBSCRIBE.unpack_from(buffer, at)
                requests.append(Request(SUBSCRIBE, first))
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
_PACKET_SIZE = 17


class ResponseFramer:
    """Split one connection's response bytes into runs of packet bytes and info frames.

    Packets are the engine's to decode; this framer only cuts the stream where an info
    frame (the answer to a hello) stands at a packet boundary.  While no info frame is
    due, every chunk passes through whole and uncopied.  ``expect()`` announces one more
    due frame (a hello was sent); ``expect_late()`` says the connection's very first
    bytes may be a late answer to a hello that was given up on.
    """

    def __init__(self) -> None:
        self.due = 0
        self._late = False
        self._passed = 0  # packet bytes passed through, to know where boundaries are
        self._held = bytearray()

    def expect(self) -> None:
        """Announce one more info frame due (a hello was sent)."""
        self.due += 1

    def expect_late(self) -> None:
        """Let the connection's first bytes be a late info frame."""
        self._late = True

    def give_up(self) -> None:
        """Stop waiting for the info frame due: only the very first bytes may still be it.

        Answers come in request order, so a late answer to a hello sent first can only
        open the stream; anything else there is packets.
        """
        if self.due and not self._passed and not self._held:
            self.due -= 1
            self._late = True

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview | FeedInfo]:
        """Return, in order, the packet byte runs and the info frames ``data`` completed.

        Raise :class:`ProtocolError` for a malformed info frame.
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
            return self._pass(memoryview(data)) if len(data) else []
        return self._frames(bytes(data))

    def _pass(self, run: memoryview) -> list[memoryview | FeedInfo]:
        self._passed += len(run)
        return [run]

    def _frames(self, data: bytes) -> list[memoryview | FeedInfo]:
        out: list[memoryview | FeedInfo] = []
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
            else:
                out += self._pass(view[at:])
        return out
