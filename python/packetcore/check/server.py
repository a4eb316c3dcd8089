"""Grade any server of the feed protocol: ``packetcore-check server HOST:PORT``.

The check speaks to the server over raw asyncio streams and judges the bytes it gets
back against docs/protocol.md; it never uses the fetch (:mod:`packetcore.client`), so
that what checks does not share the faults of what is checked.  The scenarios run in
the order of :data:`SERVER_SCENARIOS`; the first stream-all passes learn the feed (a
record per sequence), and every later answer is compared with what was learned.

Each scenario has a deadline of ``time_limit`` seconds: an answer that is due and has
not come by then is a hang.  A connection that ends where an answer is due is probed
with a fresh connection: refused means the server is gone (crashed), anything else
means it closed too early (wrong).  The extension's scenarios (``hello``, ``ranges``,
``subscribe``) pass with the reason "not offered: base server" when the hello is not
answered: the model has no verdict for a scenario that does not apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import engine
from ..errors import ProtocolError, UserError
from ..packets import SYMBOL_RULE, shown_symbol, valid_symbol
from ..protocol import (
    BASE_RESEND_MAX,
    INFO_SIZE,
    FeedInfo,
    decode_info,
    hello_request,
    range_requests,
    resend_request,
    stream_all_request,
    subscribe_request,
)
from .model import CheckRun, Level, Mark, ScenarioResult, SequenceRun, Verdict, runs_of

__all__ = [
    "SERVER_SCENARIOS",
    "ServerScenario",
    "check_server",
    "check_server_async",
]

PACKET = 17
#: The callTypes that no version of the protocol defines, sent by ``unknown-calltype``.
UNKNOWN_CALL_TYPES = (0, 6, 200)
#: Clients of ``concurrent`` and of ``many-connections``.
CONCURRENT_CLIENTS = 8
MANY_CONNECTIONS = 64
#: Stream-all passes of ``stream-again``.
AGAIN_PASSES = 3
#: The most resends ``pipelined`` writes at once.
PIPELINED_MAX = 64
#: The most sequences a whole-feed range of ``ranges`` or ``slow-reader`` asks for.
RANGE_MAX = 100_000
#: The most sequences ``slow-reader`` asks for in one range (34 KB, read 512 bytes a time).
SLOW_MAX = 2000
_SIDES = (b"B", b"S")
#: The most packets a stream read by the check may carry (34 MB; what the check keeps
#: of a feed is about 100 bytes a packet): a server check is for feeds up to this size.
STREAM_MOST = 2_000_000
#: Bytes of a stream between two judgements of the packets received.
JUDGED_EVERY = 64 * 1024


@dataclass(frozen=True)
class ServerScenario:
    """One scenario of the server battery, as ``--list`` shows it."""

    name: str
    level: Level
    description: str
    extension: bool = False  #: judged only if the server answers the hello


_R, _H = Level.REQUIRED, Level.HARDENING

#: Every server scenario, in the order they run (``still-serving`` last).
SERVER_SCENARIOS: tuple[ServerScenario, ...] = (
    ServerScenario(
        "stream-all",
        _R,
        "stream-all: whole 17-byte packets, valid, strictly increasing sequences, then EOF",
    ),
    ServerScenario(
        "stream-again",
        _R,
        f"{AGAIN_PASSES} more stream-all passes: a sequence seen twice is the same record",
    ),
    ServerScenario(
        "resend",
        _R,
        f"a resend of each known sequence in 1..{BASE_RESEND_MAX} returns the stream's record",
    ),
    ServerScenario(
        "resend-missing",
        _R,
        "the sequences no stream pass carried, up to the highest seen, are answered by resend",
    ),
    ServerScenario(
        "split-requests",
        _R,
        "stream-all and resends sent one byte at a time are answered",
    ),
    ServerScenario(
        "pipelined",
        _R,
        "many resends in one write are answered in request order",
    ),
    ServerScenario(
        "unknown-calltype",
        _R,
        "callTypes 0, 6 and 200 get no answer, and the connection still answers after",
    ),
    ServerScenario(
        "absent-resend",
        _R,
        "a resend of a sequence the feed lacks: silence or that packet, and the server lives",
    ),
    ServerScenario(
        "concurrent",
        _R,
        f"{CONCURRENT_CLIENTS} clients stream at once and get the same records",
    ),
    ServerScenario(
        "hello",
        _R,
        "extension: the hello's info frame is sane (first <= last) and matches the stream",
        extension=True,
    ),
    ServerScenario(
        "ranges",
        _R,
        "extension: pipelined range requests return exactly the feed's records, clamped",
        extension=True,
    ),
    ServerScenario(
        "subscribe",
        _R,
        "extension: a subscription from the first sequence, in order, then EOF (or live)",
        extension=True,
    ),
    ServerScenario(
        "slow-reader",
        _H,
        "a client that reads slowly still gets every packet it asked for",
    ),
    ServerScenario(
        "garbage",
        _H,
        "random bytes on one connection, then a good request on a new one is answered",
    ),
    ServerScenario(
        "many-connections",
        _H,
        f"{MANY_CONNECTIONS} connections at once each get their answer",
    ),
    ServerScenario(
        "still-serving",
        _R,
        "at the end, a stream-all still works",
    ),
)

NOT_OFFERED = "not offered: base server"


# ------------------------------------------------------------------- how a step ends


class _Failure(Exception):
    """A step that decides the scenario: the verdict and its one-line reason."""

    verdict = Verdict.WRONG

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


class _Wrong(_Failure):
    verdict = Verdict.WRONG


class _Hung(_Failure):
    verdict = Verdict.HUNG


class _Gone(_Failure):
    verdict = Verdict.CRASHED


class _NoOutput(_Failure):
    verdict = Verdict.NO_OUTPUT


class _Unlearned(_Failure):
    """A scenario that needs the feed, where no stream-all pass could learn it."""

    def __init__(self, verdict: Verdict, reason: str) -> None:
        super().__init__(f"the feed is unknown, nothing to judge against: {reason}")
        self.verdict = verdict


class _Closed(Exception):
    """The server ended a connection where more was due (checked for a crash first)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Outcome:
    reason: str = ""
    marks: list[tuple[int, Mark]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    runs: list[SequenceRun] = field(default_factory=list)  #: instead of marks, for a stream


# ------------------------------------------------------------------ packets, records


def _sequence(packet: bytes | bytearray) -> int:
    return int.from_bytes(packet[13:17], "big", signed=True)


def _fault(packet: bytes) -> str:
    """Say why a 17-byte packet is invalid (the engine's rule), or "" if it is valid."""
    if not valid_symbol(packet[:4].rstrip(b"\0")):
        return f"symbol {shown_symbol(packet[:4])} is not {SYMBOL_RULE}"
    if packet[4:5] not in _SIDES:
        return f"buy/sell indicator {shown_symbol(packet[4:5])} is not 'B' or 'S'"
    if _sequence(packet) < 1:
        return f"sequence {_sequence(packet)} is below 1"
    return ""


def _record(packet: bytes) -> dict[str, Any]:
    """Return a packet's fields as plain data, for the details of a report."""
    return {
        "symbol": packet[:4].rstrip(b"\0").decode("latin-1"),
        "buysellindicator": packet[4:5].decode("latin-1"),
        "quantity": int.from_bytes(packet[5:9], "big", signed=True),
        "price": int.from_bytes(packet[9:13], "big", signed=True),
        "packetSequence": _sequence(packet),
    }


def _difference(expected: bytes, got: bytes) -> str:
    """Name the first field in which ``got`` differs from ``expected``."""
    want, have = _record(expected), _record(got)
    for key, value in want.items():
        if have[key] != value:
            return f"{key} {have[key]!r}, not {value!r}"
    return "the same fields, other bytes"  # a symbol's padding


def _first_difference(sequence: int, expected: bytes, got: bytes) -> dict[str, Any]:
    return {
        "first_difference": {
            "sequence": sequence,
            "expected": _record(expected),
            "got": _record(got),
        }
    }


def _valid(data: bytearray, start: int, end: int, what: str) -> None:
    """Raise :class:`_Wrong` for the first invalid packet of ``data[start:end]``."""
    batch = engine.decode(memoryview(data)[start:end])
    if len(batch.invalid):
        at = start + int(batch.invalid[0])
        fault = _fault(bytes(data[at : at + PACKET])) or "not a valid packet"
        number = at // PACKET + 1
        raise _Wrong(f"{what}: packet {number} (from byte {at}) is mis-framed or invalid: {fault}")


def _packets(data: bytes, what: str, *, whole: bool = True) -> list[tuple[int, bytes]]:
    """Split a stream of packets into ``(sequence, packet)``, judged on the way.

    Every packet must be valid and the sequences strictly increasing; with ``whole``
    the stream must end at a packet boundary.  Raise :class:`_Wrong` naming the first
    fault otherwise.
    """
    size = len(data) // PACKET * PACKET
    batch = engine.decode(memoryview(data)[:size])
    if len(batch.invalid):
        _valid(bytearray(data), 0, size, what)
    sequences = batch.sequence.astype(np.int64)
    if len(sequences) > 1:
        down = np.flatnonzero(np.diff(sequences) <= 0)
        if len(down):
            j = int(down[0])
            raise _Wrong(
                f"{what}: sequence {sequences[j + 1]} after {sequences[j]}: not increasing",
                {"out_of_order": [int(sequences[j + 1])]},
            )
    if whole and size != len(data):
        raise _Wrong(
            f"{what} ended mid-packet after {len(data)} bytes "
            f"({size // PACKET} whole packets and {len(data) - size} bytes)"
        )
    return [(int(s), data[i * PACKET : (i + 1) * PACKET]) for i, s in enumerate(sequences.tolist())]


# ----------------------------------------------------------------------- connections


class _Conn:
    """One connection of a scenario: writes, and reads bounded by the scenario's deadline."""

    def __init__(
        self, run: _Run, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, what: str
    ) -> None:
        self.run = run
        self.reader = reader
        self.writer = writer
        self.what = what
        self.sent = 0
        self.received = 0
        self.end = "open"
        run.timeline.append(self._trace())
        self._index = len(run.timeline) - 1

    def _trace(self) -> dict[str, Any]:
        return {
            "connection": self.what,
            "sent": self.sent,
            "received": self.received,
            "end": self.end,
        }

    def _note(self) -> None:
        self.run.timeline[self._index] = self._trace()

    async def send(self, data: bytes, *, one_byte_at_a_time: bool = False) -> None:
        """Write ``data`` (byte by byte, each its own segment, if asked)."""
        pieces = [data[i : i + 1] for i in range(len(data))] if one_byte_at_a_time else [data]
        try:
            for piece in pieces:
                self.writer.write(piece)
                await asyncio.wait_for(self.writer.drain(), self.run.remaining())
                self.sent += len(piece)
                if one_byte_at_a_time:
                    await asyncio.sleep(0.01)
        except asyncio.TimeoutError:
            raise _Hung(
                f"{self.what}: the server took no request bytes for {self.run.time_limit:g} s"
            ) from None
        except OSError as exc:
            self.end = "reset"
            raise _Closed(
                f"{self.what}: the server closed the connection while "
                f"the request was written ({exc.strerror or exc})"
            ) from None
        finally:
            self._note()

    async def _read(self, limit: float, most: int = 1 << 16) -> bytes:
        try:
            chunk = await asyncio.wait_for(self.reader.read(most), limit)
        except asyncio.TimeoutError:
            raise
        except OSError:  # a reset (asyncio.TimeoutError, an OSError too, is the caller's)
            self.end = "reset"
            self._note()
            return b""
        self.received += len(chunk)
        if not chunk:
            self.end = "eof"
        self._note()
        return chunk

    async def read_exact(self, size: int, awaited: str) -> bytes:
        """Read ``size`` bytes; a hang or an end before is the scenario's failure."""
        data = bytearray()
        while len(data) < size:
            try:
                chunk = await self._read(self.run.remaining(), size - len(data))
            except asyncio.TimeoutError:
                got = f"{len(data)} of {size} bytes" if data else "nothing"
                raise _Hung(f"{awaited}: {got} within {self.run.time_limit:g} s") from None
            if not chunk:
                how = "reset" if self.end == "reset" else "closed"
                raise _Closed(
                    f"{awaited}: the server {how} the connection after {len(data)} of {size} bytes"
                )
            data += chunk
        return bytes(data)

    async def read_to_end(self, awaited: str, *, slowly: bool = False) -> bytes:
        """Read until end of file.

        ``slowly``: pause after each read for the first quarter of the time limit, as a
        slow reader does (then read at full speed, so that a large feed still ends).
        """
        data = bytearray()
        slow_until = time.monotonic() + self.run.time_limit / 4 if slowly else 0.0
        judged = 0  # the bytes whose packets are known valid
        while True:
            try:
                most = 512 if time.monotonic() < slow_until else 1 << 16
                chunk = await self._read(self.run.remaining(), most)
            except asyncio.TimeoutError:
                got = f"after {len(data)} bytes" if data else "nothing at all"
                raise _Hung(
                    f"{awaited}: no end of file within {self.run.time_limit:g} s ({got})"
                ) from None
            if not chunk:
                if self.end == "reset":
                    raise _Closed(
                        f"{awaited}: the server reset the connection after {len(data)} bytes"
                    )
                return bytes(data)
            data += chunk
            # Each packet is judged as it comes (garbage fails at once, not at the end),
            # and what is kept is bounded: an endless stream is a fault, not a burden.
            whole = len(data) // PACKET * PACKET
            if whole - judged >= JUDGED_EVERY or len(data) > STREAM_MOST * PACKET:
                _valid(data, judged, whole, awaited)
                judged = whole
            if len(data) > STREAM_MOST * PACKET:
                raise _Wrong(
                    f"{awaited}: more than {STREAM_MOST:,} packets without end of file "
                    "(the check reads no more of a stream)"
                )
            if time.monotonic() < slow_until:
                await asyncio.sleep(0.005)

    async def quiet(self, seconds: float, enough: int = 0) -> tuple[bytes, bool]:
        """Return what comes within ``seconds`` (not past the deadline), and whether it ended.

        ``enough``: return as soon as that many bytes came.
        """
        data = bytearray()
        until = min(time.monotonic() + seconds, self.run.deadline)
        while (left := until - time.monotonic()) > 0 and not (enough and len(data) >= enough):
            try:
                chunk = await self._read(left, enough - len(data) if enough else 1 << 16)
            except asyncio.TimeoutError:
                break
            if not chunk:
                return bytes(data), True
            data += chunk
        return bytes(data), False

    async def close(self) -> None:
        """Close the connection (a reset one needs no goodbye)."""
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class _Run:
    """What a check knows while it runs: the server, the feed learned, the deadline."""

    def __init__(self, host: str, port: int, seed: int, time_limit: float) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.time_limit = time_limit
        self.known: dict[int, bytes] = {}
        self.info: FeedInfo | None = None
        self.hello_probed = False
        self.hello_fault = ""
        #: Why no stream-all pass could learn the feed (its verdict and reason), once tried.
        self.unlearned: tuple[Verdict, str] | None = None
        self.deadline = 0.0
        self.timeline: list[dict[str, Any]] = []
        self.rng = random.Random(seed)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self, name: str) -> None:
        """Begin a scenario: a fresh deadline, timeline and seeded draw."""
        self.deadline = time.monotonic() + self.time_limit
        self.timeline = []
        self.rng = random.Random(f"{self.seed}:{name}")

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def short_wait(self) -> float:
        """How long a silence must last to count as no answer."""
        return min(0.25, self.time_limit / 8)

    async def connect(self, what: str, *, receive_buffer: int = 0) -> _Conn:
        """Open a connection; refused or unreachable is a crash of the server."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.sock_connect(sock, (self.host, self.port)), max(self.remaining(), 0.5)
            )
            reader, writer = await asyncio.open_connection(sock=sock)
        except asyncio.TimeoutError:
            sock.close()
            raise _Hung(
                f"{what}: the connection was not accepted within {self.time_limit:g} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise _Gone(
                f"{what}: connection refused, the server is gone ({exc.strerror or exc})"
            ) from None
        return _Conn(self, reader, writer, what)

    async def alive(self) -> bool:
        """Return whether the server still accepts a connection."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 2.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        return True

    # -- the feed as known

    @property
    def first(self) -> int:
        return self.info.first if self.info is not None else 1

    @property
    def last(self) -> int:
        highest = max(self.known, default=self.first - 1)
        return max(highest, self.info.last) if self.info is not None else highest

    def base_nameable(self) -> list[int]:
        """Known sequences a base resend can name (1..127), in increasing order."""
        return sorted(s for s in self.known if 1 <= s <= BASE_RESEND_MAX)

    def compare(self, pairs: list[tuple[int, bytes]], what: str) -> None:
        """Hold each packet against the record learned for its sequence, then learn it."""
        known = self.known
        for sequence, packet in pairs:
            before = known.get(sequence)
            if before is None:
                known[sequence] = packet
            elif before != packet:
                raise _Wrong(
                    f"{what}: sequence {sequence} is another record than before: "
                    f"{_difference(before, packet)}",
                    _first_difference(sequence, before, packet),
                )

    async def stream_all(self, what: str, *, split: bool = False) -> list[tuple[int, bytes]]:
        """One stream-all pass on a new connection, judged and learned."""
        conn = await self.connect(what)
        try:
            await conn.send(stream_all_request(), one_byte_at_a_time=split)
            data = await conn.read_to_end(what)
        finally:
            await conn.close()
        pairs = _packets(data, what)
        self.compare(pairs, what)
        return pairs

    async def ensure_feed(self) -> None:
        """Learn the feed with one stream-all pass, if no scenario did yet.

        A server whose stream-all gives no packet leaves the feed unknown: each scenario
        that needs it fails with the reason (tried once: a silent server costs one time
        limit, not one a scenario).
        """
        if self.known:
            return
        if self.unlearned is None:
            try:
                await self.stream_all("stream-all (to learn the feed)")
            except (_Failure, _Closed) as exc:
                self.unlearn(exc)
                raise
            if self.known:
                return
            self.unlearned = (Verdict.NO_OUTPUT, "stream-all carried no packet")
        raise _Unlearned(*self.unlearned)

    def unlearn(self, exc: _Failure | _Closed) -> None:
        """Note that a stream-all pass meant to learn the feed ended with ``exc``."""
        if not self.known and self.unlearned is None:
            verdict = exc.verdict if isinstance(exc, _Failure) else Verdict.WRONG
            self.unlearned = (verdict, exc.reason)

    async def hello(self, what: str = "hello") -> FeedInfo | None:
        """Send a hello on a new connection; return the info frame, None if unanswered.

        An answer that is not one valid info frame raises :class:`_Wrong`.
        """
        conn = await self.connect(what)
        try:
            await conn.send(hello_request())
            data, ended = await conn.quiet(min(1.0, self.time_limit / 4), INFO_SIZE)
            if data and not ended:
                rest, ended = await conn.quiet(0.05)  # what follows the frame: nothing
                data += rest
            if not data:
                return None
            if len(data) != INFO_SIZE:
                raise _Wrong(
                    f"{what}: answered with {len(data)} bytes, not one {INFO_SIZE}-byte info frame"
                )
            try:
                info = decode_info(data)
            except ProtocolError as exc:
                raise _Wrong(f"{what}: {exc}") from None
            if ended:
                raise _Wrong(f"{what}: the server closed the connection after the info frame")
            return info
        finally:
            await conn.close()

    async def ensure_hello(self) -> FeedInfo | None:
        """Probe the extension once: the info frame, or None for a base server.

        An answer that is no valid info frame is kept in ``hello_fault`` (the ``hello``
        scenario's verdict) and offers no extension either.
        """
        if not self.hello_probed:
            self.hello_probed = True
            try:
                self.info = await self.hello()
            except _Wrong as exc:
                self.hello_fault = exc.reason
        return self.info


# ------------------------------------------------------------------------ scenarios


def _stream_runs(run: _Run, seen: set[int]) -> list[SequenceRun]:
    """Return the feed's runs, first..last, of sequences ``seen`` and missing.

    Computed from the sequences seen alone: a server that jumps from 1 to 2**31-1
    costs two runs, not two billion marks.
    """
    first, last = run.first, run.last
    out: list[SequenceRun] = []
    at = first
    for sequence in sorted(s for s in seen if first <= s <= last):
        if sequence > at:
            out.append(SequenceRun(Mark.MISSING, at, sequence - at))
        if out and out[-1].mark is Mark.RECEIVED and out[-1].last + 1 == sequence:
            out[-1] = SequenceRun(Mark.RECEIVED, out[-1].first, out[-1].count + 1)
        else:
            out.append(SequenceRun(Mark.RECEIVED, sequence, 1))
        at = sequence + 1
    if at <= last:
        out.append(SequenceRun(Mark.MISSING, at, last - at + 1))
    return out


def _missing(runs: list[SequenceRun]) -> int:
    return sum(r.count for r in runs if r.mark is Mark.MISSING)


async def _stream_all(run: _Run) -> _Outcome:
    try:
        conn = await run.connect("stream-all")
        try:
            await conn.send(stream_all_request())
            data = await conn.read_to_end("stream-all")
        finally:
            await conn.close()
        if not data:
            raise _NoOutput("stream-all: the server closed the connection without writing a byte")
        pairs = _packets(data, "stream-all")
        run.compare(pairs, "stream-all")
    except (_Failure, _Closed) as exc:
        run.unlearn(exc)  # the scenarios after it do not try again
        raise
    runs = _stream_runs(run, {s for s, _ in pairs})
    missing = _missing(runs)
    return _Outcome(
        f"{len(pairs)} packets, sequences {pairs[0][0]}..{pairs[-1][0]}, then end of file"
        + (f" ({missing:,} not carried this pass)" if missing else ""),
        runs=runs,
    )


async def _stream_again(run: _Run) -> _Outcome:
    await run.ensure_feed()
    before = len(run.known)
    seen: set[int] = set()
    for n in range(1, AGAIN_PASSES + 1):
        pairs = await run.stream_all(f"stream-all pass {n}")
        seen.update(s for s, _ in pairs)
    runs = _stream_runs(run, set(run.known))
    return _Outcome(
        f"{AGAIN_PASSES} passes agree; {len(run.known)} sequences known "
        f"({len(run.known) - before} new), {_missing(runs):,} never carried",
        runs=runs,
    )


async def _ask_resends(
    run: _Run, conn: _Conn, sequences: list[int], what: str, *, split: bool = False
) -> list[tuple[int, Mark]]:
    """Resend each sequence in turn on ``conn``, each answer judged before the next ask.

    ``what`` names one resend, ``{}`` standing for its sequence ("resend of {}").
    """
    marks: list[tuple[int, Mark]] = []
    for sequence in sequences:
        await conn.send(resend_request(sequence), one_byte_at_a_time=split)
        packet = await conn.read_exact(PACKET, what.format(sequence))
        _judge_resend(run, sequence, packet, what.format(sequence))
        marks.append((sequence, Mark.RECEIVED))
    return sorted(marks)


def _judge_resend(run: _Run, sequence: int, packet: bytes, what: str) -> None:
    fault = _fault(packet)
    if fault:
        raise _Wrong(f"{what} returned no valid packet: {fault}")
    got = _sequence(packet)
    if got != sequence:
        raise _Wrong(f"{what} returned sequence {got}", {"asked": sequence, "got": _record(packet)})
    expected = run.known.get(sequence)
    if expected is None:
        run.known[sequence] = packet
    elif expected != packet:
        raise _Wrong(
            f"{what} returned another record than the stream carried: "
            f"{_difference(expected, packet)}",
            _first_difference(sequence, expected, packet),
        )


async def _no_more(conn: _Conn, run: _Run, after: str) -> None:
    """Nothing more may come after the last answer, and the connection stays open."""
    extra, ended = await conn.quiet(run.short_wait())
    if extra:
        raise _Wrong(f"{after} was followed by {len(extra)} bytes nobody asked for")
    if ended:
        raise _Closed(f"the server closed the connection after {after}")


async def _resend(run: _Run) -> _Outcome:
    await run.ensure_feed()
    sequences = run.base_nameable()
    if not sequences:
        return _Outcome(f"no known sequence in 1..{BASE_RESEND_MAX}: nothing a resend can name")
    run.rng.shuffle(sequences)
    conn = await run.connect("resend")
    try:
        marks = await _ask_resends(run, conn, sequences, "resend of {}")
        await _no_more(conn, run, f"the resend of {sequences[-1]}")
    finally:
        await conn.close()
    return _Outcome(
        f"{len(sequences)} resends, each the stream's record", marks, {"asked": sequences}
    )


async def _resend_missing(run: _Run) -> _Outcome:
    await run.ensure_feed()
    highest = max(run.known)
    # Counted, not listed: a server that jumps to 2**31-1 leaves two billion unseen.
    held = sum(1 for s in run.known if run.first <= s <= highest)
    nameable = [
        s for s in range(max(run.first, 1), min(highest, BASE_RESEND_MAX) + 1)
        if s not in run.known
    ]  # fmt: skip
    beyond = (highest - run.first + 1 - held) - len(nameable)
    note = f"; {beyond:,} unseen above {BASE_RESEND_MAX}, which a resend cannot name" * bool(beyond)
    if not nameable:
        upto = min(highest, BASE_RESEND_MAX)
        return _Outcome(f"no sequence up to {upto} missing from the stream passes{note}")
    run.rng.shuffle(nameable)
    conn = await run.connect("resend-missing")
    try:
        marks = await _ask_resends(run, conn, nameable, "resend of unseen {}")
    finally:
        await conn.close()
    whole = "" if beyond else f"; the feed {run.first}..{highest} is known whole"
    return _Outcome(
        f"{len(nameable)} sequence(s) no stream carried were resent{whole}{note}", marks
    )


async def _split_requests(run: _Run) -> _Outcome:
    await run.ensure_feed()
    pairs = await run.stream_all("stream-all sent byte by byte", split=True)
    if not pairs:
        raise _NoOutput("stream-all sent byte by byte: nothing written, then end of file")
    sequences = run.base_nameable()
    asked = run.rng.sample(sequences, min(5, len(sequences)))
    if asked:
        conn = await run.connect("resends sent byte by byte")
        try:
            await _ask_resends(run, conn, asked, "resend of {} sent byte by byte", split=True)
        finally:
            await conn.close()
    return _Outcome(
        f"a stream-all ({len(pairs)} packets) and {len(asked)} resends, "
        "each request sent one byte at a time"
    )


async def _pipelined(run: _Run) -> _Outcome:
    await run.ensure_feed()
    sequences = run.base_nameable()
    if not sequences:
        return _Outcome(f"no known sequence in 1..{BASE_RESEND_MAX}: nothing a resend can name")
    asked = [run.rng.choice(sequences) for _ in range(min(PIPELINED_MAX, 4 * len(sequences)))]
    conn = await run.connect("pipelined")
    try:
        await conn.send(b"".join(resend_request(s) for s in asked))
        data = await conn.read_exact(
            PACKET * len(asked), f"{len(asked)} pipelined resends: the answers"
        )
        for n, sequence in enumerate(asked):
            packet = data[n * PACKET : (n + 1) * PACKET]
            got = _sequence(packet)
            if not _fault(packet) and got != sequence:
                raise _Wrong(
                    f"pipelined answer {n + 1} of {len(asked)} was sequence {got}, "
                    f"not {sequence} (answers come in request order)"
                )
            _judge_resend(run, sequence, packet, f"pipelined resend {n + 1} (of {sequence})")
        await _no_more(conn, run, f"{len(asked)} pipelined resends")
    finally:
        await conn.close()
    marks = [(s, Mark.RECEIVED) for s in sorted(set(asked))]
    return _Outcome(
        f"{len(asked)} resends in one write, answered in request order", marks, {"asked": asked}
    )


async def _after_a_fault(run: _Run, conn: _Conn, what: str) -> str:
    """Show that ``conn`` (or, if it was closed, the server) still answers."""
    sequences = run.base_nameable()
    if sequences:
        sequence = run.rng.choice(sequences)
        await _ask_resends(run, conn, [sequence], f"resend of {{}} after {what}")
        return f"a resend of {sequence} after it was answered"
    await conn.send(stream_all_request())
    data = await conn.read_to_end(f"stream-all after {what}")
    run.compare(_packets(data, f"stream-all after {what}"), f"stream-all after {what}")
    return "a stream-all after it was answered"


async def _closed_after(run: _Run, what: str) -> _Failure:
    if not await run.alive():
        return _Gone(f"the server stopped accepting connections after {what}")
    return _Wrong(f"the server closed the connection after {what}")


async def _unknown_calltype(run: _Run) -> _Outcome:
    await run.ensure_feed()
    conn = await run.connect("unknown callTypes")
    try:
        for call_type in UNKNOWN_CALL_TYPES:
            await conn.send(bytes((call_type, 0)))
            answer, ended = await conn.quiet(run.short_wait())
            if answer:
                raise _Wrong(f"callType {call_type} was answered with {len(answer)} bytes")
            if ended:
                raise await _closed_after(run, f"callType {call_type}")
        after = await _after_a_fault(run, conn, "the unknown callTypes")
    finally:
        await conn.close()
    return _Outcome(f"callTypes {', '.join(map(str, UNKNOWN_CALL_TYPES))} got no answer; {after}")


async def _absent_resend(run: _Run) -> _Outcome:
    await run.ensure_feed()
    beyond = max(run.known) + 1
    absent = [0] + ([beyond] if beyond <= 0xFF else [])
    notes: list[str] = []
    for sequence in absent:
        what = f"a resend of absent sequence {sequence}"
        conn = await run.connect(what)
        try:
            await conn.send(resend_request(sequence))
            answer, ended = await conn.quiet(run.short_wait())
            if answer:
                if len(answer) != PACKET or _fault(answer) or _sequence(answer) != sequence:
                    shown = (
                        f"sequence {_sequence(answer)}"
                        if len(answer) == PACKET and not _fault(answer)
                        else f"{len(answer)} bytes"
                    )
                    raise _Wrong(f"{what} was answered with {shown}")
                run.known[sequence] = answer  # a live feed published it meanwhile
            if ended:
                if not await run.alive():
                    raise _Gone(f"the server stopped accepting connections after {what}")
                notes.append(f"{sequence}: connection closed")
                continue
            await _after_a_fault(run, conn, what)
            notes.append(f"{sequence}: {'answered' if answer else 'silence'}")
        finally:
            await conn.close()
    return _Outcome("resends of absent sequences survived (" + ", ".join(notes) + ")")


async def _concurrent(run: _Run) -> _Outcome:
    await run.ensure_feed()

    async def client(n: int, ready: asyncio.Event) -> bytes:
        what = f"concurrent client {n}"
        conn = await run.connect(what)
        try:
            await ready.wait()
            await conn.send(stream_all_request())
            return await conn.read_to_end(what)
        finally:
            await conn.close()

    ready = asyncio.Event()
    tasks = [asyncio.ensure_future(client(n, ready)) for n in range(1, CONCURRENT_CLIENTS + 1)]
    await asyncio.sleep(0)
    ready.set()
    answers = await _gathered(tasks)
    seen: set[int] = set()
    for n, data in enumerate(answers, 1):
        pairs = _packets(data, f"concurrent client {n}")
        if not pairs:
            raise _NoOutput(f"concurrent client {n}: stream-all wrote nothing")
        run.compare(pairs, f"concurrent client {n}")
        seen.update(s for s, _ in pairs)
    return _Outcome(
        f"{CONCURRENT_CLIENTS} clients streamed at once and agree", runs=_stream_runs(run, seen)
    )


async def _gathered(tasks: Sequence[asyncio.Future[bytes]]) -> list[bytes]:
    """Wait for every task; the first failure (in task order) is raised, the rest stopped."""
    try:
        await asyncio.wait(tasks)
    finally:
        for task in tasks:
            task.cancel()
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure
    return [task.result() for task in tasks]


async def _hello(run: _Run) -> _Outcome:
    await run.ensure_feed()
    info = await run.ensure_hello()
    if run.hello_fault:
        raise _Wrong(run.hello_fault)
    if info is None:
        return _Outcome(NOT_OFFERED)
    if info.last < info.first:
        # decode_info allows first - 1 for a live feed with nothing published yet.
        raise _Wrong(f"hello: the info frame says first {info.first} > last {info.last}")
    lowest, highest = min(run.known), max(run.known)
    if lowest < info.first:
        raise _Wrong(
            f"hello: the info frame says first {info.first}, "
            f"but the stream carried sequence {lowest}"
        )
    fresh = await run.hello("a second hello")
    if fresh is None:
        raise _Hung(f"a second hello: no info frame within {min(1.0, run.time_limit / 4):g} s")
    if fresh.first != info.first or fresh.last < info.last:
        raise _Wrong(
            f"a second hello says {fresh.first}..{fresh.last}, "
            f"the first said {info.first}..{info.last}"
        )
    if highest > fresh.last:
        raise _Wrong(
            f"hello: the info frame says last {fresh.last}, "
            f"but the stream carried sequence {highest}"
        )
    run.info = fresh
    return _Outcome(f"info frame: version {fresh.version}, sequences {fresh.first}..{fresh.last}")


def _not_offered(run: _Run) -> str:
    return "not offered: no valid info frame" if run.hello_fault else NOT_OFFERED


def _ranges_asked(run: _Run, info: FeedInfo) -> list[tuple[int, int]]:
    first, last = info.first, info.last
    size = last - first + 1
    ranges = [(first, min(size, RANGE_MAX))]
    middle = run.rng.randint(first, last)
    ranges.append((middle, min(5, last - middle + 1)))
    ranges.append((max(0, first - 3), 5))  # clamped at the start
    ranges.append((middle, 0))  # asks for nothing
    ranges.append((max(first, last - 2), 10))  # clamped at the end: last
    return ranges


async def _ranges(run: _Run) -> _Outcome:
    await run.ensure_feed()
    info = await run.ensure_hello()
    if info is None:
        return _Outcome(_not_offered(run))
    if info.last < info.first:
        return _Outcome("the feed has nothing published yet: no range to ask")
    asked = _ranges_asked(run, info)
    expected = [
        s
        for start, count in asked
        for s in range(max(start, info.first), min(start + count, info.last + 1))
    ]
    conn = await run.connect("ranges")
    try:
        await conn.send(range_requests(asked))
        awaited = f"{len(asked)} pipelined range requests ({len(expected)} packets)"
        data = await conn.read_exact(PACKET * len(expected), awaited)
        extra, ended = await conn.quiet(run.short_wait())
    finally:
        await conn.close()
    at = 0
    for start, count in asked:
        what = f"range ({start}, {count})"
        want = list(range(max(start, info.first), min(start + count, info.last + 1)))
        chunk = data[at : at + PACKET * len(want)]
        at += len(chunk)
        for n, (sequence, packet) in enumerate(zip(want, _chunks(chunk), strict=True)):
            fault = _fault(packet)
            if fault:
                raise _Wrong(f"{what}: answer {n + 1} is no valid packet: {fault}")
            if _sequence(packet) != sequence:
                raise _Wrong(
                    f"{what}: answer {n + 1} was sequence {_sequence(packet)}, not {sequence}"
                )
        run.compare(list(zip(want, _chunks(chunk), strict=True)), what)
    if extra:
        await _past_the_end(run, info, asked[-1], extra)
    if ended:
        raise await _closed_after(run, "the range requests")
    marks = [(s, Mark.RECEIVED) for s in sorted(set(expected))]
    return _Outcome(
        f"{len(asked)} pipelined ranges, clamped to {info.first}..{info.last}: "
        f"{len(expected)} packets, each the feed's record",
        marks,
    )


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + PACKET] for i in range(0, len(data), PACKET)]


async def _past_the_end(run: _Run, info: FeedInfo, asked: tuple[int, int], extra: bytes) -> None:
    """Packets past the hello's ``last``: allowed only as a live feed's newly published."""
    start, count = asked
    what = f"range ({start}, {count})"
    pairs = _packets(extra, f"{what} past the last sequence {info.last}", whole=False)
    sequences = [s for s, _ in pairs]
    expected = list(range(info.last + 1, info.last + 1 + len(sequences)))
    fresh = await run.hello("a hello after the ranges")
    published = fresh.last if fresh is not None else info.last
    if (
        len(extra) % PACKET
        or sequences != expected
        or sequences[-1] >= start + count
        or sequences[-1] > published
    ):
        raise _Wrong(
            f"{what} was answered past the feed's last {info.last}: {len(extra)} more bytes"
        )
    run.compare(pairs, what)


async def _subscribe(run: _Run) -> _Outcome:
    await run.ensure_feed()
    info = await run.ensure_hello()
    if info is None:
        return _Outcome(_not_offered(run))
    what = f"subscribe from {info.first}"
    conn = await run.connect(what)
    data = bytearray()
    ended = False
    began = time.monotonic()
    # A finished feed has until the deadline to end; a live one is watched this long
    # once it has written packets past the hello's last.
    watch = min(1.0, run.time_limit / 4)
    try:
        await conn.send(subscribe_request(info.first))
        while not ended and run.remaining() > 0:
            chunk, ended = await conn.quiet(0.1)
            data += chunk
            whole = len(data) // PACKET * PACKET
            newest = _sequence(data[whole - PACKET : whole]) if whole else 0
            if newest > info.last and time.monotonic() - began >= watch:
                break
    finally:
        await conn.close()
    window = time.monotonic() - began
    if conn.end == "reset":
        raise _Closed(f"{what}: the server reset the connection after {len(data)} bytes")
    pairs = _packets(bytes(data), what, whole=ended)
    if pairs and pairs[0][0] < info.first:
        raise _Wrong(f"{what}: sequence {pairs[0][0]} came first")
    run.compare(pairs, what)
    highest = pairs[-1][0] if pairs else info.first - 1
    marks = [(s, Mark.RECEIVED) for s, _ in pairs]
    if ended:
        fresh = await run.hello("a hello after the subscription")
        last = fresh.last if fresh is not None else info.last
        if highest > last:
            raise _Wrong(f"{what}: sequence {highest} came, past the feed's last {last}")
        if not pairs and last >= info.first:
            raise _NoOutput(f"{what}: end of file before any packet of {info.first}..{last}")
        return _Outcome(f"{len(pairs)} packets in order up to {highest}, then end of file", marks)
    if highest > info.last:
        return _Outcome(
            f"live: {len(pairs)} packets in order up to {highest} within {window:.1f} s", marks
        )
    got = f"after sequence {highest}" if pairs else "and no packet"
    raise _Hung(
        f"{what}: no end of file within {window:g} s {got}, and the feed's last is {info.last}"
    )


async def _slow_reader(run: _Run) -> _Outcome:
    await run.ensure_feed()
    info = await run.ensure_hello()
    conn = await run.connect("slow reader", receive_buffer=4096)
    try:
        if info is not None and info.last >= info.first:
            count = min(info.last - info.first + 1, SLOW_MAX)
            await conn.send(range_requests([(info.first, count)]))
            data = bytearray()
            while len(data) < count * PACKET:
                piece = await conn.read_exact(
                    min(512, count * PACKET - len(data)), f"a range of {count} packets, read slowly"
                )
                data += piece
                await asyncio.sleep(0.005)
            pairs = _packets(bytes(data), "a range read slowly")
            want = list(range(info.first, info.first + count))
            if [s for s, _ in pairs] != want:
                raise _Wrong(
                    f"a range read slowly: {len(pairs)} packets, not {info.first}.."
                    f"{info.first + count - 1} whole"
                )
        else:
            await conn.send(stream_all_request())
            data = bytearray(await conn.read_to_end("stream-all read slowly", slowly=True))
            pairs = _packets(bytes(data), "stream-all read slowly")
            if not pairs:
                raise _NoOutput("stream-all read slowly: nothing written")
    finally:
        await conn.close()
    run.compare(pairs, "slow reader")
    return _Outcome(
        f"{len(pairs)} packets to a reader with a 4 KiB buffer, in small reads",
        [(s, Mark.RECEIVED) for s, _ in pairs],
    )


async def _garbage(run: _Run) -> _Outcome:
    await run.ensure_feed()
    noise = bytes(run.rng.randrange(256) for _ in range(256))
    conn = await run.connect("garbage")
    try:
        with contextlib.suppress(_Closed):
            await conn.send(noise)
            await conn.quiet(run.short_wait())
    finally:
        await conn.close()
    pairs = await run.stream_all("stream-all after garbage")
    if not pairs:
        raise _NoOutput("stream-all after garbage: nothing written")
    return _Outcome(
        f"256 random bytes, then a stream-all on a new connection: {len(pairs)} packets"
    )


async def _many_connections(run: _Run) -> _Outcome:
    await run.ensure_feed()
    sequences = run.base_nameable()

    async def client(n: int) -> bytes:
        what = f"connection {n} of {MANY_CONNECTIONS}"
        conn = await run.connect(what)
        try:
            if sequences:
                sequence = sequences[n % len(sequences)]
                await _ask_resends(run, conn, [sequence], f"{what}: resend of {{}}")
                return b""
            await conn.send(stream_all_request())
            data = await conn.read_to_end(what)
            run.compare(_packets(data, what), what)
            return data
        finally:
            await conn.close()

    tasks = [asyncio.ensure_future(client(n)) for n in range(1, MANY_CONNECTIONS + 1)]
    await _gathered(tasks)
    asked = "a resend" if sequences else "a stream-all"
    return _Outcome(f"{MANY_CONNECTIONS} connections at once, each answered {asked}")


async def _still_serving(run: _Run) -> _Outcome:
    pairs = await run.stream_all("stream-all at the end")
    if not pairs:
        raise _NoOutput("stream-all at the end: nothing written, then end of file")
    return _Outcome(
        f"a last stream-all: {len(pairs)} packets, then end of file",
        runs=_stream_runs(run, {s for s, _ in pairs}),
    )


_STEPS: dict[str, Callable[[_Run], Awaitable[_Outcome]]] = {
    "stream-all": _stream_all,
    "stream-again": _stream_again,
    "resend": _resend,
    "resend-missing": _resend_missing,
    "split-requests": _split_requests,
    "pipelined": _pipelined,
    "unknown-calltype": _unknown_calltype,
    "absent-resend": _absent_resend,
    "concurrent": _concurrent,
    "hello": _hello,
    "ranges": _ranges,
    "subscribe": _subscribe,
    "slow-reader": _slow_reader,
    "garbage": _garbage,
    "many-connections": _many_connections,
    "still-serving": _still_serving,
}
assert set(_STEPS) == {s.name for s in SERVER_SCENARIOS}


# ------------------------------------------------------------------------------ run


def _selected(level: Level, only: Sequence[str], skip: Sequence[str]) -> list[ServerScenario]:
    names = {s.name for s in SERVER_SCENARIOS}
    unknown = sorted({*only, *skip} - names)
    if unknown:
        raise UserError(
            f"no server scenario named {unknown[0]!r} (known: {', '.join(sorted(names))})", 2
        )
    chosen = [
        s
        for s in SERVER_SCENARIOS
        if (s.name in only if only else s.level.counts_at(level)) and s.name not in skip
    ]
    return chosen


async def _run_one(run: _Run, scenario: ServerScenario) -> ScenarioResult:
    run.start(scenario.name)
    began = time.monotonic()
    verdict, outcome = Verdict.PASS, _Outcome()
    try:
        outcome = await asyncio.wait_for(_STEPS[scenario.name](run), run.time_limit + 5.0)
    except _Failure as exc:
        verdict, outcome = exc.verdict, _Outcome(exc.reason, details=exc.details)
    except _Closed as exc:
        if await run.alive():
            verdict, outcome = Verdict.WRONG, _Outcome(exc.reason)
        else:
            verdict = Verdict.CRASHED
            outcome = _Outcome(f"{exc.reason}; the server refuses connections since")
    except asyncio.TimeoutError:
        verdict = Verdict.HUNG
        outcome = _Outcome(f"{scenario.name}: not done within {run.time_limit + 5.0:g} s")
    if verdict in (Verdict.WRONG, Verdict.NO_OUTPUT) and not await run.alive():
        # A wrong end that was the server dying (a crash closes its connections too).
        verdict = Verdict.CRASHED
        outcome.reason += "; then the server refused connections"
    marks: list[SequenceRun] = outcome.runs or runs_of(outcome.marks)
    return ScenarioResult(
        name=scenario.name,
        level=scenario.level,
        description=scenario.description,
        seed=run.seed,
        verdict=verdict,
        reason=outcome.reason,
        duration=time.monotonic() - began,
        time_limit=run.time_limit,
        feed_first=run.first,
        feed_last=run.last,
        sequence_map=marks,
        details=outcome.details,
        timeline=list(run.timeline),
    )


async def check_server_async(
    host: str,
    port: int,
    *,
    seed: int = 0,
    level: Level = Level.REQUIRED,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    time_limit: float = 10.0,
    on_start: Callable[[str, int, int], None] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
    stop: asyncio.Event | None = None,
) -> CheckRun:
    """Grade the server at ``host:port`` against the server battery; return the run.

    ``only`` runs just the scenarios named (any level), ``skip`` leaves some out; at
    ``Level.REQUIRED`` the hardening scenarios are not run unless named.  Each scenario
    gets ``time_limit`` seconds.  ``on_start(label, i, total)`` is called before each
    scenario (``i`` from 1), ``on_result`` after.  Raise :class:`UserError` if no server
    listens at the start (or a scenario name is unknown, with exit code 2).  ``stop``,
    once set, ends the run: the scenario running is not counted, and the run returns
    marked ``interrupted``.
    """
    if time_limit <= 0:
        raise UserError(f"the time limit must be above 0 seconds, got {time_limit:g}", 2)
    if not 1 <= port <= 0xFFFF:
        raise UserError(f"port {port} is not in 1..65535", 2)
    if seed < 0:
        raise UserError("--seed must be 0 or more", 2)
    chosen = _selected(level, only, skip)
    run = _Run(host, port, seed, time_limit)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    began = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), time_limit)
    except socket.gaierror as exc:
        raise UserError(f"cannot find the host {host!r}: {exc.strerror or exc}") from None
    except (OSError, asyncio.TimeoutError) as exc:
        why = "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
        raise UserError(f"nothing is listening on {run.target} ({why})") from None
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    checked = CheckRun("server", run.target, level, seed, started, planned=len(chosen))
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        for i, scenario in enumerate(chosen, 1):
            if on_start is not None:
                on_start(scenario.name, i, len(chosen))
            one = asyncio.ensure_future(_run_one(run, scenario))
            await asyncio.wait({one, *([stopping] if stopping else [])},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if not one.done():
                one.cancel()
                await asyncio.gather(one, return_exceptions=True)
                checked.interrupted = True
                break
            result = one.result()
            checked.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if stopping is not None:
            stopping.cancel()
    checked.duration = time.monotonic() - began
    return checked


def check_server(host: str, port: int, **options: Any) -> CheckRun:
    """Grade the server at ``host:port``; return the run and its verdicts.

    The options are :func:`check_server_async`'s, run on a new event loop.
    """
    return asyncio.run(check_server_async(host, port, **options))
