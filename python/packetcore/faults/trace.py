"""A per-connection trace: what a client asked for and what it was sent, when.

A :class:`~packetcore.faults.proxy.Proxy` started with ``trace=True`` gives each
:class:`~packetcore.faults.proxy.ConnectionRecord` a :class:`Trace`: the client's
requests as framed from its bytes, and the packets and info frames it was sent after
the faults, framed from the bytes as they were handed to the socket (so latency and
split show as the real times).  Times are seconds since the proxy started
(``Proxy.origin``, a :func:`time.monotonic` reading).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import PACKET_SIZE
from ..protocol import CLOCK_MAGIC, CLOCK_SIZE, INFO_MAGIC, INFO_SIZE, Request

__all__ = ["MAX_EVENTS", "Trace", "TracedRequest"]

#: Requests, packets and info frames a trace keeps each (the first ones); the totals
#: count them all.
MAX_EVENTS = 10_000
#: An info frame starts with the magic and the high byte of version 1: no packet does.
_INFO_PREFIX = INFO_MAGIC + b"\0"
_CLOCK_PREFIX = CLOCK_MAGIC + b"\0"
#: What the info and clock frames start with alike ("PKC"), and the byte after the magic.
_FRAME_ARRAY = np.frombuffer(INFO_MAGIC[:3], dtype=np.uint8)
assert CLOCK_MAGIC[:3] == INFO_MAGIC[:3]


@dataclass(frozen=True, slots=True)
class TracedRequest:
    """One request of the client's, as framed from its bytes (unknown callTypes too)."""

    at: float  #: seconds since the proxy started
    call_type: int
    start: int
    count: int


class Trace:
    """What one connection's client asked for and was sent, with the times.

    ``requests`` and ``packets`` (``(time, sequence)``, in the order written) keep the
    first ``cap`` of each; ``requests_total`` and ``packets_total`` count all of them.
    ``info_frames`` holds the time of each info frame the client was sent.
    """

    def __init__(self, opened: float, cap: int = MAX_EVENTS) -> None:
        self.opened = opened
        self.closed: float | None = None
        self.cap = cap
        self.requests: list[TracedRequest] = []
        self.requests_total = 0
        self.packets: list[tuple[float, int]] = []
        self.packets_total = 0
        self.info_frames: list[float] = []
        self._buf = bytearray()  # the start of a packet or info frame, written in pieces

    def request(self, at: float, request: Request) -> None:
        """Record a request of the client's, framed at ``at``."""
        self.requests_total += 1
        if len(self.requests) < self.cap:
            self.requests.append(TracedRequest(at, request.call_type, request.start, request.count))

    def written(self, at: float, data: bytes | bytearray | memoryview) -> None:
        """Frame bytes handed to the client's socket at ``at``: packets and info frames."""
        buf = self._buf
        buf += data
        used = 0
        size = len(buf)
        prefix = len(_INFO_PREFIX)
        while size - used >= prefix:
            head = buf[used : used + prefix]
            if head == _INFO_PREFIX:
                if size - used < INFO_SIZE:
                    break
                if len(self.info_frames) < self.cap:
                    self.info_frames.append(at)
                used += INFO_SIZE
                continue
            if head == _CLOCK_PREFIX:
                if size - used < CLOCK_SIZE:
                    break
                used += CLOCK_SIZE
                continue
            whole = (size - used) // PACKET_SIZE
            if whole == 0:
                break
            rows = np.frombuffer(buf, np.uint8, whole * PACKET_SIZE, used)
            rows = rows.reshape(whole, PACKET_SIZE)
            # The packets up to the next frame (never the first row: checked above).
            found = np.flatnonzero((rows[:, :3] == _FRAME_ARRAY).all(axis=1) & (rows[:, 4] == 0))
            if found.size:
                whole = int(found[0])
                rows = rows[:whole]
            self.packets_total += whole
            room = self.cap - len(self.packets)
            if room > 0:
                sequences = rows[:room, 13:17].copy().view(">u4").ravel().tolist()
                self.packets.extend((at, sequence) for sequence in sequences)
            del rows  # the buffer cannot shrink while a view of it lives
            used += whole * PACKET_SIZE
        del buf[:used]

    def close(self, at: float) -> None:
        """Record when the connection ended (the first time only)."""
        if self.closed is None:
            self.closed = at

    def as_dict(self) -> dict[str, Any]:
        """Return the trace as plain, JSON-able values."""
        return {
            "opened": self.opened,
            "closed": self.closed,
            "requests": [
                {"at": r.at, "call_type": r.call_type, "start": r.start, "count": r.count}
                for r in self.requests
            ],
            "requests_total": self.requests_total,
            "packets": [[at, sequence] for at, sequence in self.packets],
            "packets_total": self.packets_total,
            "info_frames": list(self.info_frames),
        }

    def __repr__(self) -> str:
        return (
            f"<Trace {self.requests_total} requests, {self.packets_total} packets, "
            f"{len(self.info_frames)} info frames>"
        )
