"""The pure-Python engine: the twin of ``packetcore._engine``, same API and behaviour.

Loops here use only struct, bytearray and lists; numpy appears at the edges, where a
batch comes in or goes out.  ``PACKETCORE_NO_EXTENSIONS=1`` selects this module, and
the benchmarks measure the compiled engine against it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ._pure_text import TextParser, text_rows
from .errors import ProtocolError
from .packets import Packets

__all__ = [
    "MAX_SEQUENCE",
    "PACKET_SIZE",
    "Decoder",
    "GapTracker",
    "PacketStore",
    "TextParser",
    "decode",
    "encode",
    "gather",
    "text_rows",
    "to_json",
]

PACKET_SIZE = 17
MAX_SEQUENCE = 2**31 - 1

# Response packet: symbol[4] side[1] quantity:int32 price:int32 sequence:int32, big-endian.
_PACKET = struct.Struct(">4s1siii")
_PRINTABLE = frozenset(range(0x20, 0x7F))
_SIDES = (b"B", b"S")


def _invalid_field(symbol: bytes, side: bytes, sequence: int) -> str | None:
    # Checks run in wire order, so the field named is the first bad one.
    name = symbol.rstrip(b"\0")
    if not name or not _PRINTABLE.issuperset(name):
        return "symbol"
    if side not in _SIDES:
        return "buysellindicator"
    if sequence < 1:
        return "packetSequence"
    return None


def _batch(rows: list[tuple[bytes, bytes, int, int, int]], invalid: list[int]) -> Packets:
    if not rows:
        columns: list[Any] = [[], [], [], [], []]
    else:
        columns = [list(column) for column in zip(*rows, strict=True)]
    return Packets._from_columns(
        np.array(columns[0], dtype="S4"),
        np.array(columns[1], dtype="S1"),
        np.array(columns[2], dtype=np.int32),
        np.array(columns[3], dtype=np.int32),
        np.array(columns[4], dtype=np.int32),
        np.array(invalid, dtype=np.int64),
    )


class Decoder:
    """Decode a byte stream split into chunks at any byte."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._tail = b""
        self._offset = 0
        self._invalid_count = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held for the next chunk."""
        return len(self._tail)

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet decoded (the pending tail's start)."""
        return self._offset

    @property
    def invalid_count(self) -> int:
        """Packets rejected as invalid so far."""
        return self._invalid_count

    def feed(self, chunk: bytes | bytearray | memoryview) -> Packets:
        """Decode ``chunk`` and return the packets it completed."""
        held = self._tail
        data = held + bytes(chunk)
        whole = len(data) - len(data) % PACKET_SIZE
        self._tail = data[whole:]
        rows: list[tuple[bytes, bytes, int, int, int]] = []
        invalid: list[int] = []
        offset = self._offset
        for row in _PACKET.iter_unpack(memoryview(data)[:whole]):
            field = _invalid_field(row[0], row[1], row[4])
            if field is None:
                rows.append(row)
            elif self.strict:
                # A failed feed consumes nothing: the decoder stays as it was.
                self._tail = held
                raise ProtocolError(
                    f"invalid {field} in the packet at byte offset {offset}", offset, field
                )
            else:
                invalid.append(offset)
            offset += PACKET_SIZE
        self._offset = offset
        self._invalid_count += len(invalid)
        return _batch(rows, invalid)


def decode(buf: bytes | bytearray | memoryview, strict: bool = False) -> Packets:
    """Decode whole packets; invalid ones are skipped and listed in ``invalid``."""
    size = memoryview(buf).nbytes
    if size % PACKET_SIZE:
        raise ValueError(
            f"cannot decode {size} bytes: not a whole number of {PACKET_SIZE}-byte packets"
        )
    return Decoder(strict).feed(buf)


def encode(packets: Packets) -> bytes:
    """Encode packets as their wire bytes (the inverse of :func:`decode`)."""
    out = bytearray(PACKET_SIZE * len(packets))
    pack_into = _PACKET.pack_into
    columns = zip(
        packets.symbol.tolist(),
        packets.buysellindicator.tolist(),
        packets.quantity.tolist(),
        packets.price.tolist(),
        packets.sequence.tolist(),
        strict=True,
    )
    for i, (symbol, side, quantity, price, sequence) in enumerate(columns):
        pack_into(out, i * PACKET_SIZE, symbol, side, quantity, price, sequence)
    return bytes(out)


def gather(wire: bytes | bytearray | memoryview, keep: npt.ArrayLike) -> bytes:
    """Return the wire bytes of the packets whose ``keep`` flag is set, in order."""
    flags = np.asarray(keep, dtype=np.bool_)
    view = memoryview(wire).cast("B")
    if flags.ndim != 1 or len(flags) * PACKET_SIZE != view.nbytes:
        raise ValueError(
            f"keep has {len(flags)} flags for {view.nbytes} bytes: "
            f"one flag per {PACKET_SIZE}-byte packet"
        )
    return b"".join(
        [
            view[i * PACKET_SIZE : (i + 1) * PACKET_SIZE]
            for i, kept in enumerate(flags.tolist())
            if kept
        ]
    )


def _as_ints(sequences: Iterable[int] | npt.ArrayLike) -> list[int]:
    if isinstance(sequences, np.ndarray):
        values: list[int] = sequences.ravel().tolist()
        return values
    return [int(s) for s in cast("Iterable[int]", sequences)]


class GapTracker:
    """A bitmap of the sequences seen, one bit per sequence from ``first`` to ``last``.

    ``last`` may be unknown (``None``) at first: the bitmap then grows with the
    highest sequence seen, and ``last`` reads as that until it is set.
    """

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        if not 1 <= first <= MAX_SEQUENCE:
            raise ValueError(f"first must be in 1..{MAX_SEQUENCE}, got {first}")
        self._first = first
        self._fixed: int | None = None
        self._bits = bytearray()
        self._highest: int | None = None
        self.received = 0
        self.duplicates = 0
        self.out_of_range = 0
        if last is not None:
            self.last = last

    @property
    def first(self) -> int:
        """The lowest sequence of the feed."""
        return self._first

    @property
    def last(self) -> int | None:
        """The last sequence: as set, else the highest seen, else ``None``."""
        return self._fixed if self._fixed is not None else self._highest

    @last.setter
    def last(self, value: int) -> None:
        value = int(value)
        if not self._first <= value <= MAX_SEQUENCE:
            raise ValueError(f"last must be in {self._first}..{MAX_SEQUENCE}, got {value}")
        if self._highest is not None and value < self._highest:
            raise ValueError(f"last {value} is below sequence {self._highest}, already seen")
        self._fixed = value
        self._reserve(value - self._first + 1)

    @property
    def last_known(self) -> bool:
        """Whether ``last`` was set rather than inferred from the sequences seen."""
        return self._fixed is not None

    @property
    def highest(self) -> int | None:
        """The highest sequence seen, or ``None``."""
        return self._highest

    @property
    def complete(self) -> bool:
        """Whether ``last`` is known and every sequence up to it was seen."""
        return self._fixed is not None and self.received == self._fixed - self._first + 1

    def _reserve(self, bits: int) -> None:
        size = (bits + 7) >> 3
        if size > len(self._bits):
            grown = max(size, min(2 * len(self._bits), (MAX_SEQUENCE + 8) >> 3))
            self._bits.extend(bytes(grown - len(self._bits)))

    def __contains__(self, sequence: object) -> bool:
        if not isinstance(sequence, (int, np.integer)):
            return False
        i = int(sequence) - self._first
        return 0 <= i < len(self._bits) * 8 and bool(self._bits[i >> 3] & (1 << (i & 7)))

    def __len__(self) -> int:
        return self.received

    def add(self, sequences: Iterable[int] | npt.ArrayLike) -> int:
        """Mark sequences seen; return how many were new."""
        first = self._first
        limit = (self._fixed if self._fixed is not None else MAX_SEQUENCE) - first
        bits = self._bits
        new = duplicates = out_of_range = 0
        highest = self._highest if self._highest is not None else 0
        for sequence in _as_ints(sequences):
            i = sequence - first
            if i < 0 or i > limit:
                out_of_range += 1
                continue
            if i >= len(bits) * 8:
                self._reserve(i + 1)
                bits = self._bits
            mask = 1 << (i & 7)
            if bits[i >> 3] & mask:
                duplicates += 1
            else:
                bits[i >> 3] |= mask
                new += 1
                if sequence > highest:
                    highest = sequence
        if new:
            self._highest = highest
        self.received += new
        self.duplicates += duplicates
        self.out_of_range += out_of_range
        return new

    def _missing_runs(self) -> list[tuple[int, int]]:
        last = self.last
        if last is None:
            return []
        bits = self._bits
        runs: list[tuple[int, int]] = []
        start = -1
        for i in range(last - self._first + 1):
            if bits[i >> 3] & (1 << (i & 7)):
                if start >= 0:
                    runs.append((start + self._first, i - start))
                    start = -1
            elif start < 0:
                start = i
        if start >= 0:
            runs.append((start + self._first, last - self._first + 1 - start))
        return runs

    def missing(self) -> npt.NDArray[np.int64]:
        """Return the sequences from ``first`` to ``last`` not seen, ascending."""
        out: list[int] = []
        for start, count in self._missing_runs():
            out.extend(range(start, start + count))
        return np.array(out, dtype=np.int64)

    def missing_ranges(self) -> npt.NDArray[np.int64]:
        """Return the missing runs as an ``(n, 2)`` array of ``(start, count)``."""
        return np.array(self._missing_runs(), dtype=np.int64).reshape(-1, 2)

    def missing_count(self) -> int:
        """Return how many sequences from ``first`` to ``last`` were not seen."""
        last = self.last
        return 0 if last is None else last - self._first + 1 - self.received


class PacketStore:
    """Put packets arriving in any order into sequence order, without sorting.

    A packet's slot is ``sequence - first``.  The first arrival of a sequence wins;
    a later one with the same payload counts as a duplicate, one with a different
    payload as a conflict and is kept for the report (:meth:`conflicting`).
    """

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        self.tracker = GapTracker(first, last)
        self.conflicts = 0
        self._rows: list[tuple[bytes, bytes, int, int] | None] = []
        self._conflicting: list[tuple[bytes, bytes, int, int, int]] = []
        if last is not None:
            self._grow(last - first + 1)

    @property
    def duplicates(self) -> int:
        """Later arrivals identical to the packet already held."""
        return self.tracker.duplicates - self.conflicts

    @property
    def out_of_range(self) -> int:
        """Packets dropped for a sequence outside ``first..last``."""
        return self.tracker.out_of_range

    @property
    def last(self) -> int | None:
        """The tracker's ``last``; setting it fixes the end of the feed."""
        return self.tracker.last

    @last.setter
    def last(self, value: int) -> None:
        self.tracker.last = value
        self._grow(value - self.tracker.first + 1)

    def __len__(self) -> int:
        return self.tracker.received

    def _grow(self, slots: int) -> None:
        if slots > len(self._rows):
            self._rows.extend([None] * (max(slots, 2 * len(self._rows)) - len(self._rows)))

    def add(self, packets: Packets) -> int:
        """Store the packets; return how many sequences were new."""
        tracker = self.tracker
        first = tracker.first
        new = 0
        columns = zip(
            packets.symbol.tolist(),
            packets.buysellindicator.tolist(),
            packets.quantity.tolist(),
            packets.price.tolist(),
            packets.sequence.tolist(),
            strict=True,
        )
        for symbol, side, quantity, price, sequence in columns:
            if not tracker.add((sequence,)):
                if sequence in tracker:
                    held = self._rows[sequence - first]
                    if held != (symbol, side, quantity, price):
                        self.conflicts += 1
                        self._conflicting.append((symbol, side, quantity, price, sequence))
                continue
            self._grow(sequence - first + 1)
            self._rows[sequence - first] = (symbol, side, quantity, price)
            new += 1
        return new

    def to_packets(self) -> Packets:
        """Return the packets held, in sequence order."""
        first = self.tracker.first
        rows = [(*row, first + slot) for slot, row in enumerate(self._rows) if row is not None]
        return _batch(rows, [])

    def conflicting(self) -> Packets:
        """Return the later arrivals whose payload differed from the packet held."""
        return _batch(list(self._conflicting), [])


# JSON string escapes exactly as json.dumps (ensure_ascii) writes them, per byte; a
# byte is read as the latin-1 code point it stands for.
_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES[0x09] = "\\t"
_JSON_CHAR = [_ESCAPES.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\u{b:04x}") for b in range(256)]


def _json_string(raw: bytes) -> str:
    return "".join([_JSON_CHAR[b] for b in raw])


def to_json(packets: Packets) -> bytes:
    """Return the ``output.json`` document: one object per packet, in sequence order.

    Each line is what ``json.dumps`` writes for that packet's record.
    """
    if len(packets) == 0:
        return b"[]\n"
    order = _sequence_order(packets)
    if order is not None:
        packets = packets[order]
    lines = [
        f'{{"symbol": "{_json_string(symbol)}", "buysellindicator": "{_json_string(side)}", '
        f'"quantity": {quantity}, "price": {price}, "packetSequence": {sequence}}}'
        for symbol, side, quantity, price, sequence in zip(
            packets.symbol.tolist(),
            packets.buysellindicator.tolist(),
            packets.quantity.tolist(),
            packets.price.tolist(),
            packets.sequence.tolist(),
            strict=True,
        )
    ]
    return ("[\n" + ",\n".join(lines) + "\n]\n").encode("ascii")


def _sequence_order(packets: Packets) -> npt.NDArray[np.intp] | None:
    # None when already in order, the common case; else a stable sort's permutation.
    sequence = packets.sequence
    if len(sequence) < 2 or bool(np.all(sequence[1:] >= sequence[:-1])):
        return None
    return np.argsort(sequence, kind="stable")
