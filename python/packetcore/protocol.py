"""Requests and frames of the feed protocol (PROTOCOL.md), shared by server and client.

Response packets themselves are the engine's business (:mod:`packetcore.engine`);
this module holds the small fixed layouts around them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

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
    "FeedInfo",
    "Request",
    "RequestFramer",
    "decode_info",
    "encode_info",
    "hello_request",
    "range_request",
    "resend_request",
    "stream_all_request",
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
INFO_MAGIC = b"PKCI"
INFO_SIZE = 16
EXTENSION_VERSION = 1

_INFO = struct.Struct(">4sIII")
_RANGE = struct.Struct(">BBII")
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


def range_request(start: int, count: int) -> bytes:
    """Return the callType 4 request for sequences ``start <= seq < start + count``."""
    if not (0 <= start <= _UINT32_MAX and 0 <= count <= _UINT32_MAX):
        raise ValueError(f"range start {start} / count {count} do not fit uint32")
    return _RANGE.pack(RESEND_RANGE, 0, start, count)


class FeedInfo(NamedTuple):
    """What an extended server's info frame says of its feed."""

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
    if version < 1 or first < 1 or last < first or last > _SEQUENCE_MAX:
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

    Every callType but 4 frames as 2 bytes, unknown ones included, as the reference
    exchange reads them; at most one incomplete request (under 10 bytes) is ever held.
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
            if call_type == RESEND:
                requests.append(Request(RESEND, buffer[at + 1], 1))
            else:
                requests.append(Request(call_type))
            at += REQUEST_SIZE
        del buffer[:at]
        return requests
