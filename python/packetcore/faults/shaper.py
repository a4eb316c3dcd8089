"""Shaping: one connection's byte stream as the peer gets it under its faults (no I/O).

:class:`Shaper` frames the stream as the protocol writes it, 17-byte packets and 16-byte
info frames (which pass untouched at a packet boundary after a hello; so does the clock
frame a subscription may open with), and applies the
faults to whole packets and to byte positions.  Its random draws come from the
connection's stream of the seed (:mod:`packetcore.seeds`), one stream per kind of draw,
one chunk's worth at a time: the same faults however the stream is cut.

It is told of every request of the peer's (:meth:`Shaper.request`), so that it can tell
an answer to a repair (a resend, or a range) from a stream packet, for the faults keyed
to sequences, and count the requests for ``close_at_request``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from ..engine import PACKET_SIZE
from ..protocol import (
    CLOCK_MAGIC,
    CLOCK_SIZE,
    INFO_MAGIC,
    INFO_SIZE,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    SUBSCRIBE,
    SUBSCRIBE_CLOCK,
    Request,
)
from ..seeds import split
from .model import Faults, Ledger

__all__ = ["REORDER_SPAN", "Shaper"]

#: An info frame starts with the magic and the high byte of version 1: no packet does.
_INFO_PREFIX = INFO_MAGIC + b"\0"
_CLOCK_PREFIX = CLOCK_MAGIC + b"\0"
#: How far ahead a randomly reordered packet may be swapped.
REORDER_SPAN = 3
#: The shaper's streams, one per kind of draw, split in this order from the connection's.
_STREAMS = (
    "loss",
    "good",
    "bad",
    "duplicate",
    "reorder",
    "reorder_span",
    "corrupt",
    "corrupt_byte",
)


class Shaper:
    """Turn one connection's stream into what the peer gets (pure, no I/O).

    ``feed`` returns the bytes to send now, ``finish`` what is held back at the end;
    ``counts`` gathers the injected faults by kind (shared with a server's or a
    proxy's stats when given).  Call :meth:`request` with every request of the peer's,
    :meth:`hello` when the peer sends a hello and :meth:`resend_mode` when it asks for
    resends before any stream (``swallow_resends``).  ``ledger`` (its plan's, shared by
    all its connections) records the sequences ``drop_sequences`` and ``drop_resends``
    dropped once already; without one, the shaper keeps its own.
    """

    def __init__(
        self,
        faults: Faults,
        rng: np.random.Generator | None = None,
        counts: dict[str, int] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.faults = faults
        self.counts: dict[str, int] = {} if counts is None else counts
        self.own: dict[str, int] = {}  # this connection's counts alone
        self.limit_hit = False
        self.info_frames = 0
        self.clock_frames = 0
        self.swallowing = False
        self.bytes_in = 0
        self.bytes_out = 0
        # One stream per kind of draw, so that each is the same whatever the chunks.
        base = rng if rng is not None else np.random.default_rng()
        self._rngs = dict(zip(_STREAMS, split(base, len(_STREAMS)), strict=True))
        self._framed = faults.packet_faults
        self._bytewise = faults.limit is not None or bool(faults.corrupt_at)
        self._hellos = 0
        self._early_hellos = 0
        self._clock = False  # a clock frame may follow the info frames due (a subscription)
        self._phase = 0  # bytes into a packet, where chunks pass unframed
        self._buf = bytearray()
        self._index = 0  # input packets framed so far
        self._held: tuple[npt.NDArray[np.uint8], int] | None = None
        self._swallowed = 0
        # Gilbert-Elliott state: in a burst or not, packets left in the current run.
        self._ge_started = False
        self._bad = False
        self._run = 0
        leave_bad = 1.0 / faults.burst
        enter_bad = faults.loss * leave_bad / (1.0 - faults.loss) if faults.loss < 1 else 1.0
        self._ge_p = {False: max(enter_bad, 1e-12), True: leave_bad}
        self._ge_buffer = {False: np.zeros(0, np.int64), True: np.zeros(0, np.int64)}
        # Faults keyed to sequences: the repairs asked for and not yet answered, in order,
        # each [first, end) (a resend is one sequence); None where a stream was asked for.
        self._ledger = ledger if ledger is not None else Ledger()
        self._keyed = faults.keyed
        self._repairs: deque[list[int] | None] = deque()
        self._listed = {
            kind: np.fromiter(sequences, dtype=np.int64, count=len(sequences))
            for kind, sequences in (
                ("drop_sequence", faults.drop_sequences),
                ("drop_resend", faults.drop_resends),
                ("corrupt_sequence", faults.corrupt_sequences),
            )
            if sequences
        }
        self.requests = 0  # requests of the peer's so far
        #: The request close_at_request names has come: nothing more is answered.
        self.cut = False

    def request(self, request: Request) -> bool:
        """Note a request of the peer's; return whether it is to be answered.

        From the ``close_at_request``-th request on, none is (counted once, as "close").
        """
        self.requests += 1
        at = self.faults.close_at_request
        if self.cut or (at is not None and self.requests >= at):
            if not self.cut:
                self.cut = True
                self._count("close")
            return False
        if request.call_type == SUBSCRIBE and request.flags & SUBSCRIBE_CLOCK and not self._phase:
            self._clock = True
        if self._keyed:
            call, start = request.call_type, request.start
            if call == RESEND:
                self._repairs.append([start, start + 1])
            elif call == RESEND_RANGE and request.count:
                self._repairs.append([start, start + request.count])
            elif call in (STREAM_ALL, SUBSCRIBE) and self._repairs:
                self._repairs.append(None)  # the repairs before it are answered before it
        return True

    def hello(self) -> None:
        """Expect an info frame (the peer sent a hello)."""
        self._hellos += 1
        if not self.swallowing:
            self._early_hellos += 1

    def resend_mode(self) -> None:
        """Swallow every packet from now on, if the faults say so."""
        if self.faults.swallow_resends:
            self.swallowing = True

    @property
    def pending(self) -> bool:
        """Return whether an info frame is due or bytes are held back."""
        return bool(self._hellos or self._clock or self._buf or self._held is not None)

    def passed(self, n: int) -> None:
        """Count ``n`` bytes that went past the shaper untouched (no fault, nothing due)."""
        self.bytes_in += n
        self.bytes_out += n
        self._phase = (self._phase + n) % PACKET_SIZE

    def _count(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n
            self.own[kind] = self.own.get(kind, 0) + n

    def feed(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Shape one chunk of the stream; return the bytes to send now."""
        self.bytes_in += len(data)
        if self.limit_hit:
            return b""
        if self._framed:
            self._buf += data
            data = self._frame(final=False)
        elif self._hellos or self._clock or self._buf:
            data = self._info_frames(data)
        else:
            # No packet faults and no info frame due: the chunk passes uncopied.
            self._phase = (self._phase + len(data)) % PACKET_SIZE
        return self._bytes(data)

    def _info_frames(self, data: bytes | bytearray | memoryview) -> bytearray:
        """Pass a chunk while an info frame is due, only to count (and never cut) it."""
        out = bytearray()
        if self._phase and not self._buf:
            # The rest of the packet in progress: the next boundary is after it.
            k = min(PACKET_SIZE - self._phase, len(data))
            out += data[:k]
            data = data[k:]
            self._phase = (self._phase + k) % PACKET_SIZE
        self._buf += data
        out += self._frame(final=False)
        if not (self._hellos or self._clock):
            self._phase = len(self._buf) % PACKET_SIZE
            out += self._buf
            self._buf.clear()
        return out

    def finish(self) -> bytes | bytearray | memoryview:
        """Return what is held back at the end of the stream."""
        if self.limit_hit or not (self._framed or self._buf):
            return b""
        out = self._frame(final=True)
        if self._buf:
            out += bytes(self._buf)  # a partial trailing packet passes as it is
            self._buf.clear()
        return self._bytes(out)

    # -- framing: info frames and packets --------------------------------------------------

    def _frame(self, final: bool) -> bytearray:
        out = bytearray()
        buf = self._buf
        while buf:
            if self._clock and not self._hellos:
                head = bytes(buf[: len(_CLOCK_PREFIX)])
                if head == _CLOCK_PREFIX and len(buf) >= CLOCK_SIZE:
                    out += self._release() + buf[:CLOCK_SIZE]
                    self.clock_frames += 1
                    del buf[:CLOCK_SIZE]
                    self._clock = False
                    continue
                if not final and _CLOCK_PREFIX.startswith(head):
                    break  # maybe the clock frame: wait for the rest
                self._clock = False  # packets first: the server sent no clock frame
            if self._hellos:
                head = bytes(buf[: len(_INFO_PREFIX)])
                if _INFO_PREFIX.startswith(head):
                    if len(buf) >= INFO_SIZE and head == _INFO_PREFIX:
                        # Swallowing, only the hellos sent before the switch are answered.
                        if not self.swallowing or self._early_hellos:
                            out += self._release() + buf[:INFO_SIZE]
                            self.info_frames += 1
                            self._early_hellos = max(0, self._early_hellos - 1)
                        del buf[:INFO_SIZE]
                        self._hellos -= 1
                        continue
                    if not final:
                        break  # maybe an info frame: wait for the rest
            whole = len(buf) // PACKET_SIZE
            if self._hellos and whole:
                # An info frame can follow the answers already pipelined: stop there.
                heads = np.frombuffer(buf, dtype=np.uint8, count=whole * PACKET_SIZE)
                heads = heads.reshape(whole, PACKET_SIZE)[:, : len(_INFO_PREFIX)]
                magic = np.frombuffer(_INFO_PREFIX, dtype=np.uint8)
                found = np.flatnonzero((heads == magic).all(axis=1))
                del heads  # the buffer cannot shrink while a view of it lives
                if found.size:
                    whole = int(found[0])
            if whole == 0:
                break
            size = whole * PACKET_SIZE
            if self._framed:
                # A slice of a bytearray is a writable copy: the packets change in place.
                rows = np.frombuffer(buf[:size], dtype=np.uint8).reshape(whole, PACKET_SIZE)
                out += self._packets(rows)
            else:
                out += buf[:size]
                self._index += whole
            del buf[:size]
        if final:
            out += self._release()
        return out

    def _release(self) -> bytes:
        held, self._held = self._held, None
        if held is None:
            return b""
        row, index = held
        if index in self.faults.duplicate_at:
            self._count("duplicate")
            return row.tobytes() * 2
        return row.tobytes()

    def _packets(self, rows: npt.NDArray[np.uint8]) -> bytes:
        """Apply the packet faults to whole packets; return their bytes."""
        faults, n = self.faults, len(rows)
        first = self._index
        self._index += n
        if self.swallowing:
            self._swallowed += n
            self._count("swallow", n)
            return b""
        index = np.arange(first, first + n)
        if self._keyed:
            keep = self._keyed_keep(rows)
            rows, index = rows[keep], index[keep]
        if faults.loss:
            keep = ~self._loss_mask(n)
            self._count("loss", n - int(keep.sum()))
            rows, index = rows[keep], index[keep]
        if faults.reorder or faults.reorder_at or self._held is not None:
            rows, index = self._reorder(rows, index)
        if faults.duplicate or faults.duplicate_at:
            twice = np.zeros(len(rows), dtype=bool)
            if faults.duplicate:
                twice |= self._rngs["duplicate"].random(len(rows)) < faults.duplicate
            if faults.duplicate_at:
                twice |= np.isin(index, np.fromiter(faults.duplicate_at, dtype=np.int64))
            self._count("duplicate", int(twice.sum()))
            rows = np.repeat(rows, 1 + twice.astype(np.intp), axis=0)
        if faults.corrupt and len(rows):
            hit = np.flatnonzero(self._rngs["corrupt"].random(len(rows)) < faults.corrupt)
            if hit.size:
                # Two draws per hit, in turn: which byte, and what it is XORed with.
                where = self._rngs["corrupt_byte"].random((hit.size, 2))
                columns = (where[:, 0] * PACKET_SIZE).astype(np.intp)
                rows[hit, columns] ^= (1 + where[:, 1] * 255).astype(np.uint8)
                self._count("corrupt", int(hit.size))
        return rows.tobytes()

    def _keyed_keep(self, rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        """Return which packets pass drop_sequences and drop_resends (False: dropped).

        A stream packet that corrupt_sequences names is changed in place instead: its
        sequence field claims 65,536 more.
        """
        sequences = rows[:, 13:17].copy().view(">u4").ravel().astype(np.int64)
        repair = self._classify(sequences)
        keep = np.ones(len(rows), dtype=bool)
        for kind, listed in self._listed.items():
            chosen = repair if kind == "drop_resend" else ~repair
            hits = np.flatnonzero(chosen & np.isin(sequences, listed))
            for i in hits.tolist():  # per listed packet, not per packet
                if self._ledger.first(kind, int(sequences[i])):
                    if kind == "corrupt_sequence":
                        rows[i, 14] ^= 0x01  # the field's 2**16 bit
                    else:
                        keep[i] = False
                    self._count(kind)
        return keep

    def _classify(self, sequences: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Return which packets answer a repair asked for (the rest are stream packets).

        Answers come in request order: a packet in the first pending repair that holds
        it ends the repairs before that one; a packet in none, once a stream was asked
        for, is the stream's, and ends every repair asked for before it.
        """
        repair = np.zeros(len(sequences), dtype=bool)
        repairs = self._repairs
        if not repairs:
            return repair
        for i, sequence in enumerate(sequences.tolist()):
            if not repairs:
                break
            for k, entry in enumerate(repairs):
                if entry is None:
                    for _ in range(k + 1):
                        repairs.popleft()
                    break
                if entry[0] <= sequence < entry[1]:
                    for _ in range(k):
                        repairs.popleft()
                    entry[0] = sequence + 1  # a range is answered in sequence order
                    if entry[0] >= entry[1]:
                        repairs.popleft()
                    repair[i] = True
                    break
        return repair

    def _loss_mask(self, n: int) -> npt.NDArray[np.bool_]:
        faults = self.faults
        if faults.burst <= 1:
            return self._rngs["loss"].random(n) < faults.loss
        # Gilbert-Elliott, drawn as alternating run lengths: a burst ends with chance
        # 1/burst per packet, one starts with the chance that makes the mean loss `loss`.
        # Good and bad runs come from streams of their own, taken in order and never
        # dropped: the same runs whatever the chunks.
        parts: list[npt.NDArray[np.bool_]] = []
        if self._run:
            take = min(n, self._run)
            parts.append(np.full(take, self._bad))
            self._run -= take
            n -= take
        while n:
            first = not self._bad if self._ge_started else False
            self._ge_started = True
            k = max(16, int(n / (self.faults.burst + 1 / self._ge_p[False])) + 16)
            a, b = self._ge_peek(first, k), self._ge_peek(not first, k)
            lengths = np.empty(2 * k, dtype=np.int64)
            lengths[0::2], lengths[1::2] = a, b
            states = np.zeros(2 * k, dtype=bool)
            states[0::2], states[1::2] = first, not first
            ends = np.cumsum(lengths)
            last = int(np.searchsorted(ends, n))  # the run that holds packet n - 1
            used = min(last + 1, 2 * k)
            self._ge_take(first, (used + 1) // 2)
            self._ge_take(not first, used // 2)
            parts.append(np.repeat(states[:used], lengths[:used])[:n])
            self._bad = bool(states[used - 1])
            self._run = int(ends[used - 1]) - n if last < 2 * k else 0
            n -= min(n, int(ends[used - 1]))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def _ge_peek(self, bad: bool, k: int) -> npt.NDArray[np.int64]:
        buffer = self._ge_buffer[bad]
        if len(buffer) < k:
            more = self._rngs["bad" if bad else "good"].geometric(self._ge_p[bad], max(k, 1024))
            buffer = self._ge_buffer[bad] = np.concatenate([buffer, more])
        return buffer[:k]

    def _ge_take(self, bad: bool, k: int) -> None:
        self._ge_buffer[bad] = self._ge_buffer[bad][k:]

    def _reorder(
        self, rows: npt.NDArray[np.uint8], index: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """Swap chosen packets with one of the next few; a last one waits for the next."""
        faults, n = self.faults, len(rows)
        if n == 0:
            return rows, index
        chosen = np.zeros(n, dtype=bool)
        if faults.reorder:
            chosen |= self._rngs["reorder"].random(n) < faults.reorder
        if faults.reorder_at:
            chosen |= np.isin(index, np.fromiter(faults.reorder_at, dtype=np.int64))
        picks = np.flatnonzero(chosen)
        order = np.arange(n)
        touched = np.zeros(n, dtype=bool)
        # A packet that releases a held one is never held or swapped itself.
        touched[0] = self._held is not None
        hold: int | None = None
        # How far each pick moves: 1 for an exact reorder, up to REORDER_SPAN for a random one.
        spans = (
            1 + (self._rngs["reorder_span"].random(picks.size) * REORDER_SPAN).astype(np.int64)
            if faults.reorder
            else np.ones(picks.size, dtype=np.int64)
        )
        swaps = 0
        for k, i in enumerate(picks.tolist()):  # per reordered packet, not per packet
            if touched[i]:
                continue
            exact = not faults.reorder or int(index[i]) in faults.reorder_at
            j = min(i + (1 if exact else int(spans[k])), n - 1)
            if j == i:
                # The chunk's last packet.  An exact reorder holds it for the next chunk's
                # first; a random one does not: a resend answer would wait for ever.
                if exact:
                    hold = i
                break
            if touched[j]:
                continue
            order[i], order[j] = order[j], order[i]
            touched[i] = touched[j] = True
            swaps += 1
        new_held = None
        if hold is not None:
            new_held = (rows[hold].copy(), int(index[hold]))
            order = order[order != hold]
        rows, index_out = rows[order], index[order]
        if self._held is not None:
            held_row, held_index = self._held
            self._held = None
            rows = np.concatenate([rows[:1], held_row[None, :], rows[1:]])
            index_out = np.concatenate([index_out[:1], [held_index], index_out[1:]])
            swaps += 1
        self._held = new_held
        self._count("reorder", swaps)
        return rows, index_out

    # -- byte positions: ends and exact corruption -----------------------------------------

    def _bytes(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        if not self._bytewise or not data:
            self.bytes_out += len(data)
            return data
        faults, start = self.faults, self.bytes_out
        limit = faults.limit
        if limit is not None and start + len(data) >= limit:
            data = data[: limit - start]
            self.limit_hit = True
            self._count(faults.limit_kind)
        if faults.corrupt_at:
            buf = bytearray(data)
            for offset in faults.corrupt_at:
                if start <= offset < start + len(buf):
                    buf[offset - start] ^= faults.corrupt_xor
                    self._count("corrupt")
            data = buf
        self.bytes_out += len(data)
        return data
