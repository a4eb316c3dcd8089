"""The pure-Python engine: the twin of ``packetcore.engine._engine``, same API and behaviour.

Loops here use only struct, bytearray and lists; numpy appears at the edges, where a
batch comes in or goes out.  ``PACKETCORE_NO_EXTENSIONS=1`` selects this module, and
the benchmarks measure the compiled engine against it.
"""

from __future__ import annotations

import bisect
import operator
import struct
import sys
from array import array
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ..errors import ProtocolError
from ..packets import Packets, valid_symbol
from ._pure_text import TextParser, text_rows

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
    "valid_symbols",
]

PACKET_SIZE = 17
MAX_SEQUENCE = 2**31 - 1

# Response packet: symbol[4] side[1] quantity:int32 price:int32 sequence:int32, big-endian.
_PACKET = struct.Struct(">4s1siii")
_SIDES = (b"B", b"S")


def _invalid_field(symbol: bytes, side: bytes, sequence: int) -> str | None:
    # Checks run in wire order, so the field named is the first bad one.
    if not valid_symbol(symbol.rstrip(b"\0")):
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
    columns = packets.rows()
    for i, (symbol, side, quantity, price, sequence) in enumerate(columns):
        pack_into(out, i * PACKET_SIZE, symbol, side, quantity, price, sequence)
    return bytes(out)


def valid_symbols(symbols: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Return a mask of a symbol column: True where a symbol keeps the protocol's rule.

    The rule is :data:`packetcore.packets.SYMBOL_RULE`: 1-4 printable ASCII characters,
    NUL-padded to 4 bytes.  ``symbols`` is a numpy bytes column of width 4 at most.
    """
    raw = symbol_column(symbols).view(np.uint8).reshape(-1, 4)
    printable = (raw >= 0x20) & (raw <= 0x7E)
    padding = raw == 0
    # A character first, then characters or padding, and no character after padding.
    mask: npt.NDArray[np.bool_] = printable[:, 0] & (printable | padding).all(axis=1)
    mask &= ~(padding[:, :-1] & ~padding[:, 1:]).any(axis=1)
    return mask


def symbol_column(symbols: npt.ArrayLike) -> npt.NDArray[np.bytes_]:
    """Return ``symbols`` as a contiguous ``S4`` column, never truncating one (both engines)."""
    column = np.asarray(symbols)
    if column.dtype.kind != "S" or column.dtype.itemsize > 4 or column.ndim != 1:
        raise TypeError(
            f"symbols must be a one-dimensional column of up to 4 bytes each (S4), "
            f"got {column.ndim} dimension(s) of {column.dtype}"
        )
    return np.ascontiguousarray(column, dtype="S4")


def integer(value: object, name: str) -> int:
    """Return ``value`` if it is an integer (a numpy one too), else raise TypeError.

    Both engines check their integer arguments here: a float (even 2.0), a bool or a
    string is refused, never truncated or parsed.
    """
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")


def sequence_array(sequences: Iterable[int] | npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Return sequences as a contiguous int64 array (both engines take them through here).

    An integer array's dtype is checked once, not its items; anything else is taken item
    by item through :func:`integer`.  A value no int64 holds is out of every feed's range,
    so it becomes 0 (below every first).
    """
    if isinstance(sequences, np.ndarray):
        kind = sequences.dtype.kind
        if kind == "i" or kind == "u":
            if kind == "u" and sequences.dtype.itemsize == 8:
                sequences = np.where(sequences > MAX_SEQUENCE, 0, sequences)
            return np.ascontiguousarray(sequences.ravel(), dtype=np.int64)
        if kind != "O":
            raise TypeError(f"sequences must be integers, got an array of {sequences.dtype}")
        sequences = sequences.ravel().tolist()
    values = [integer(s, "a sequence") for s in cast("Iterable[object]", sequences)]
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return np.array([v if -(2**63) <= v < 2**63 else 0 for v in values], dtype=np.int64)


def _optional(value: int | None, name: str) -> int | None:
    return None if value is None else integer(value, name)


def gather(wire: bytes | bytearray | memoryview, keep: npt.ArrayLike) -> bytes:
    """Return the wire bytes of the packets whose ``keep`` flag is set, in order."""
    flags = keep_flags(keep)
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


def keep_flags(keep: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Return ``keep`` as bool flags: bools or integers only, never floats (both engines)."""
    flags = np.asarray(keep)
    if flags.size and flags.dtype.kind not in "biu":
        raise TypeError(f"keep must be bools or integers, got an array of {flags.dtype}")
    return np.ascontiguousarray(flags, dtype=np.bool_)


def _as_ints(sequences: Iterable[int] | npt.ArrayLike) -> list[int]:
    values: list[int] = sequence_array(sequences).tolist()
    return values


class GapTracker:
    """A bitmap of the sequences seen, one bit per sequence from ``first`` to ``last``.

    ``last`` may be unknown (``None``) at first: the bitmap then grows with the
    highest sequence seen, and ``last`` reads as that until it is set.
    """

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        first = integer(first, "first")
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
        value = integer(value, "last")
        if not self._first <= value <= MAX_SEQUENCE:
            raise ValueError(f"last must be in {self._first}..{MAX_SEQUENCE}, got {value}")
        if self._highest is not None and value < self._highest:
            raise ValueError(f"last {value} is below sequence {self._highest}, already seen")
        # No allocation here: bits past the bitmap read as clear, and it grows only
        # with the sequences added, so a hostile 2**31 - 1 costs nothing until seen.
        self._fixed = value

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
        span = last - self._first + 1
        end = min(span, len(bits) * 8)
        runs: list[tuple[int, int]] = []
        start = -1
        i = 0
        while i < end:
            byte = bits[i >> 3]
            # A whole byte that neither ends nor starts a run is skipped in one step.
            if not i & 7 and i + 8 <= end and byte == (0 if start >= 0 else 0xFF):
                i += 8
                continue
            if byte & (1 << (i & 7)):
                if start >= 0:
                    runs.append((start + self._first, i - start))
                    start = -1
            elif start < 0:
                start = i
            i += 1
        if start < 0 and end < span:
            start = end  # never allocated: nothing there was seen
        if start >= 0:
            runs.append((start + self._first, span - start))
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


# ---- PacketStore -----------------------------------------------------------------
# Dense chunks of 2**16 sequences (a flag per slot plus the payload columns), allocated
# lazily and only inside the window ahead of the cursor; anything else waits in a sparse
# open-addressing table keyed by sequence.  The compiled engine follows the same logic.

_CHUNK_SHIFT = 16
_CHUNK = 1 << _CHUNK_SHIFT
_MIN_WINDOW = 1 << 23
# A chunk inside the window is allocated once this many of its packets wait in the
# sparse table: a random-bytes server never makes chunks, an in-order feed does at once.
_PROMOTE = 1024
_MIN_TABLE = 1024
_GOLDEN = 2654435761
# Bytes per sparse slot: key int32, symbol u32, side u8, quantity i32, price i32.
_SLOT_BYTES = 17

_Payload = tuple[int, int, int, int]


class _Chunk:
    """One dense chunk: a held flag and the four payload columns per slot."""

    __slots__ = ("count", "flags", "price", "quantity", "side", "symbol")

    def __init__(self) -> None:
        self.flags = bytearray(_CHUNK)
        self.symbol = array("I", bytes(4 * _CHUNK))
        self.side = bytearray(_CHUNK)
        self.quantity = array("i", bytes(4 * _CHUNK))
        self.price = array("i", bytes(4 * _CHUNK))
        self.count = 0

    @staticmethod
    def nbytes() -> int:
        return 14 * _CHUNK


def _payloads(packets: Packets) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    # Symbols and sides as the integers their bytes make, as the compiled engine holds them.
    symbol = np.ascontiguousarray(packets.symbol, dtype="S4").view(np.uint32)
    side = np.ascontiguousarray(packets.buysellindicator, dtype="S1").view(np.uint8)
    columns = (symbol, side, packets.quantity, packets.price, packets.sequence)
    if len({len(column) for column in columns}) > 1:
        raise ValueError("packet columns differ in length")
    return (
        symbol.tolist(),
        side.tolist(),
        np.asarray(packets.quantity, dtype=np.int32).tolist(),
        np.asarray(packets.price, dtype=np.int32).tolist(),
        np.asarray(packets.sequence, dtype=np.int64).tolist(),
    )


def _row(payload: _Payload, sequence: int) -> tuple[bytes, bytes, int, int, int]:
    # A symbol's integer is its 4 bytes in native order (a view of the S4 column).
    symbol = int(payload[0]).to_bytes(4, sys.byteorder).rstrip(b"\0")
    side = bytes([payload[1]]).rstrip(b"\0")
    return (symbol, side, payload[2], payload[3], sequence)


class PacketStore:
    """Put packets arriving in any order into sequence order, without sorting.

    The first arrival of a sequence wins; a later one with the same payload counts as a
    duplicate, one with a different payload as a conflict and is kept for the report
    (:meth:`conflicting`).  :meth:`take` hands out the packets below a sequence and
    forgets them, so memory follows the packets held, not the span of sequences seen.
    """

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        first = integer(first, "first")
        last = _optional(last, "last")
        if not 1 <= first <= MAX_SEQUENCE:
            raise ValueError(f"first must be in 1..{MAX_SEQUENCE}, got {first}")
        # Chunk c covers sequences base + c * 2**16 onwards; base never moves.
        self._base = first
        self._first = first
        self._fixed: int | None = None
        self._highest = 0
        self._cursor = first
        self._received = 0
        self._duplicates = 0
        self._conflicts = 0
        self._out_of_range = 0
        self._count = 0
        self._held = 0
        self._chunks: dict[int, _Chunk] = {}
        # Packets of each chunk waiting in the sparse table.
        self._waiting: dict[int, int] = {}
        self._keys = array("i")
        self._symbol = array("I")
        self._side = bytearray()
        self._quantity = array("i")
        self._price = array("i")
        self._bits = 0
        self._used = 0
        # Runs (start, stop) below the cursor that take() passed without a packet.
        self._skipped: list[tuple[int, int]] = []
        # Sequences discard() forgot: still counted by len() until a fresh copy comes.
        self._discarded: set[int] = set()
        self._conflicting: list[tuple[bytes, bytes, int, int, int]] = []
        if last is not None:
            self.bound(first, last)

    # -- state -------------------------------------------------------------------

    @property
    def first(self) -> int:
        """The lowest sequence of the feed."""
        return self._first

    @property
    def last(self) -> int | None:
        """The last sequence: as fixed, else the highest seen, else ``None``."""
        if self._fixed is not None:
            return self._fixed
        return self._highest or None

    @last.setter
    def last(self, value: int) -> None:
        self.bound(self._first, value)

    @property
    def last_known(self) -> bool:
        """Whether ``last`` was fixed rather than inferred from the sequences seen."""
        return self._fixed is not None

    @property
    def highest(self) -> int | None:
        """The highest sequence ever held, taken ones included, or ``None``."""
        return self._highest or None

    @property
    def cursor(self) -> int:
        """The sequence the next :meth:`take` starts from."""
        return self._cursor

    @property
    def pending(self) -> int:
        """Packets held and not yet taken."""
        return self._held

    @property
    def complete(self) -> bool:
        """Whether ``last`` is known and every sequence up to it was held or taken."""
        if self._fixed is None or self.missing_count():
            return False
        return not any(a <= self._fixed and b > self._first for a, b in self._skipped)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for packets: dense chunks plus the sparse table."""
        return len(self._chunks) * _Chunk.nbytes() + _SLOT_BYTES * len(self._keys)

    @property
    def received(self) -> int:
        """Packets received within ``first..last``, duplicates included (read-only)."""
        return self._received

    @property
    def duplicates(self) -> int:
        """Later arrivals of a sequence with the payload held (or already taken)."""
        return self._duplicates

    @property
    def conflicts(self) -> int:
        """Later arrivals whose payload differed from the one held."""
        return self._conflicts

    @property
    def out_of_range(self) -> int:
        """Packets outside ``first..last`` (or in a run :meth:`take` passed), dropped."""
        return self._out_of_range

    def __len__(self) -> int:
        return self._count

    def __contains__(self, sequence: object, /) -> bool:
        if not isinstance(sequence, (int, np.integer)):
            return False
        s = int(sequence)
        if s < self._first or s > (MAX_SEQUENCE if self._fixed is None else self._fixed):
            return False
        if s < self._cursor:
            return not self._was_skipped(s)
        return self._held_at(s)

    def _was_skipped(self, sequence: int) -> bool:
        i = bisect.bisect_right(self._skipped, (sequence, MAX_SEQUENCE + 1)) - 1
        return i >= 0 and self._skipped[i][0] <= sequence < self._skipped[i][1]

    def _held_at(self, sequence: int) -> bool:
        offset = sequence - self._base
        chunk = self._chunks.get(offset >> _CHUNK_SHIFT)
        if chunk is not None:
            return bool(chunk.flags[offset & (_CHUNK - 1)])
        return self._find(sequence) >= 0

    def _end(self) -> int:
        # One past the highest sequence that may be held.
        return (self._fixed if self._fixed is not None else self._highest) + 1

    # -- the sparse table ----------------------------------------------------------

    def _home(self, key: int) -> int:
        return ((key * _GOLDEN) & 0xFFFFFFFF) >> (32 - self._bits)

    def _find(self, key: int) -> int:
        keys = self._keys
        if not keys:
            return -1
        mask = len(keys) - 1
        i = self._home(key)
        while keys[i]:
            if keys[i] == key:
                return i
            i = (i + 1) & mask
        return -1

    def _resize(self, bits: int) -> None:
        old = (self._keys, self._symbol, self._side, self._quantity, self._price)
        size = 1 << bits if bits else 0
        self._bits = bits
        self._keys = array("i", bytes(4 * size))
        self._symbol = array("I", bytes(4 * size))
        self._side = bytearray(size)
        self._quantity = array("i", bytes(4 * size))
        self._price = array("i", bytes(4 * size))
        self._used = 0
        for i, key in enumerate(old[0]):
            if key:
                self._put(key, (old[1][i], old[2][i], old[3][i], old[4][i]))

    def _put(self, key: int, payload: _Payload) -> None:
        if 10 * (self._used + 1) > 7 * len(self._keys):
            self._resize(max(self._bits + 1, _MIN_TABLE.bit_length() - 1))
        keys = self._keys
        mask = len(keys) - 1
        i = self._home(key)
        while keys[i]:
            i = (i + 1) & mask
        keys[i] = key
        self._symbol[i], self._side[i], self._quantity[i], self._price[i] = payload
        self._used += 1

    def _delete(self, i: int) -> None:
        # Backward-shift deletion: linear probing needs no tombstones.
        keys = self._keys
        mask = len(keys) - 1
        j = i
        while True:
            j = (j + 1) & mask
            key = keys[j]
            if not key:
                break
            home = self._home(key)
            if (i < j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            keys[i] = key
            self._symbol[i] = self._symbol[j]
            self._side[i] = self._side[j]
            self._quantity[i] = self._quantity[j]
            self._price[i] = self._price[j]
            i = j
        keys[i] = 0
        self._used -= 1

    def _shrink(self) -> None:
        # Memory follows the packets held: a table four times too big is rebuilt smaller.
        if self._used == 0:
            if self._keys:
                self._resize(0)
        elif len(self._keys) > _MIN_TABLE and 8 * self._used < len(self._keys):
            bits = _MIN_TABLE.bit_length() - 1
            while 10 * self._used > 5 * (1 << bits):
                bits += 1
            self._resize(bits)

    def _sparse_in(self, lo: int, hi: int) -> list[int]:
        # Slots of the sparse keys in lo..hi-1, in sequence order.
        keys = self._keys
        slots = [i for i, key in enumerate(keys) if key and lo <= key < hi]
        slots.sort(key=keys.__getitem__)
        return slots

    def _promote(self, c: int) -> _Chunk:
        chunk = self._chunks[c] = _Chunk()
        lo = self._base + (c << _CHUNK_SHIFT)
        for i in self._sparse_in(lo, lo + _CHUNK):
            j = self._keys[i] - lo
            chunk.flags[j] = 1
            chunk.symbol[j] = self._symbol[i]
            chunk.side[j] = self._side[i]
            chunk.quantity[j] = self._quantity[i]
            chunk.price[j] = self._price[i]
            chunk.count += 1
        # Deleting shifts entries between slots: look each key up again.
        for key in [self._keys[i] for i in self._sparse_in(lo, lo + _CHUNK)]:
            self._delete(self._find(key))
        self._waiting.pop(c, None)
        return chunk

    # -- adding --------------------------------------------------------------------

    def bound(self, first: int, last: int | None) -> None:
        """Narrow the feed to ``first..last``; held packets outside are dropped."""
        first = integer(first, "first")
        if not 1 <= first <= MAX_SEQUENCE:
            raise ValueError(f"first must be in 1..{MAX_SEQUENCE}, got {first}")
        if first < self._first:
            raise ValueError(f"first may only rise: {first} is below {self._first}")
        fixed = self._fixed if last is None else integer(last, "last")
        if fixed is not None and not first <= fixed <= MAX_SEQUENCE:
            raise ValueError(f"last must be in {first}..{MAX_SEQUENCE}, got {fixed}")
        if self._fixed is not None and fixed is not None and fixed > self._fixed:
            raise ValueError(f"last may only be lowered: {fixed} is above {self._fixed}")
        dropped = self._remove(self._cursor, first)
        if fixed is not None:
            dropped += self._remove(max(fixed + 1, self._cursor), self._end())
            self._highest = min(self._highest, fixed)
        gone = {s for s in self._discarded if s < first or (fixed is not None and s > fixed)}
        self._discarded -= gone
        self._out_of_range += dropped
        self._count -= dropped + len(gone)
        self._first = first
        self._fixed = fixed
        self._cursor = max(self._cursor, first)

    def add(self, packets: Packets) -> int:
        """Store the packets; return how many sequences were new."""
        symbols, sides, quantities, prices, sequences = _payloads(packets)
        first = self._first
        top = MAX_SEQUENCE if self._fixed is None else self._fixed
        cursor = self._cursor
        base = self._base
        window = -(-max(_MIN_WINDOW, 2 * self._held) // _CHUNK) * _CHUNK
        dense_end = cursor + window
        chunks = self._chunks
        new = 0
        for k, s in enumerate(sequences):
            if s < first or s > top:
                self._out_of_range += 1
                continue
            payload = (symbols[k], sides[k], quantities[k], prices[k])
            if s < cursor:
                if self._was_skipped(s):
                    self._out_of_range += 1
                else:
                    # Taken already: nothing is left to compare it with.
                    self._received += 1
                    self._duplicates += 1
                continue
            self._received += 1
            offset = s - base
            c = offset >> _CHUNK_SHIFT
            chunk = chunks.get(c)
            if chunk is None:
                slot = self._find(s)
                if slot >= 0:
                    self._compare(self._payload_at(slot), payload, s)
                    continue
                waiting = self._waiting.get(c, 0)
                if s < dense_end and waiting + 1 >= _PROMOTE:
                    chunk = self._promote(c)
                else:
                    self._put(s, payload)
                    self._waiting[c] = waiting + 1
            if chunk is not None:
                j = offset & (_CHUNK - 1)
                if chunk.flags[j]:
                    self._compare(
                        (chunk.symbol[j], chunk.side[j], chunk.quantity[j], chunk.price[j]),
                        payload,
                        s,
                    )
                    continue
                chunk.flags[j] = 1
                chunk.symbol[j], chunk.side[j], chunk.quantity[j], chunk.price[j] = payload
                chunk.count += 1
            new += 1
            self._held += 1
            self._highest = max(self._highest, s)
            if s in self._discarded:
                self._discarded.discard(s)
            else:
                self._count += 1
        return new

    def _payload_at(self, slot: int) -> _Payload:
        return (self._symbol[slot], self._side[slot], self._quantity[slot], self._price[slot])

    def _compare(self, held: _Payload, payload: _Payload, sequence: int) -> None:
        if held == payload:
            self._duplicates += 1
        else:
            self._conflicts += 1
            self._conflicting.append(_row(payload, sequence))

    # -- queries -------------------------------------------------------------------

    def _held_between(self, lo: int, hi: int) -> npt.NDArray[np.int64]:
        # The held sequences in lo..hi-1, ascending (chunks and sparse keys never share
        # a chunk, so each part is sorted and a merge sort joins them).
        parts = [np.array([self._keys[i] for i in self._sparse_in(lo, hi)], dtype=np.int64)]
        base = self._base
        for c in sorted(self._chunks):
            start = base + (c << _CHUNK_SHIFT)
            if start + _CHUNK <= lo or start >= hi:
                continue
            a, b = max(lo - start, 0), min(hi - start, _CHUNK)
            flags = np.frombuffer(self._chunks[c].flags, dtype=np.uint8)[a:b]
            parts.append(np.flatnonzero(flags).astype(np.int64) + (start + a))
        return np.sort(np.concatenate(parts), kind="stable")

    def _missing_between(self, lo: int, hi: int) -> npt.NDArray[np.int64]:
        if hi <= lo:
            return np.zeros((0, 2), dtype=np.int64)
        held = self._held_between(lo, hi)
        starts = np.concatenate(([lo], held + 1))
        stops = np.concatenate((held, [hi]))
        runs = stops > starts
        return np.stack((starts[runs], stops[runs] - starts[runs]), axis=1).astype(np.int64)

    def _query_end(self, stop: int | None) -> int:
        end = self._end() if (self._fixed is not None or self._highest) else self._cursor
        return end if stop is None else min(end, integer(stop, "stop"))

    def contiguous(self) -> int:
        """Return the first sequence from the cursor on that is not held."""
        end = self._query_end(None)
        runs = self._missing_between(self._cursor, end)
        return int(runs[0, 0]) if len(runs) else max(end, self._cursor)

    def missing_ranges(self, stop: int | None = None) -> npt.NDArray[np.int64]:
        """Return the missing runs from the cursor on as ``(n, 2)`` ``(start, count)``."""
        return self._missing_between(self._cursor, self._query_end(stop))

    def missing_count(self) -> int:
        """Return how many sequences from the cursor to ``last`` are not held."""
        end = self._query_end(None)
        if end <= self._cursor:
            return 0
        return end - self._cursor - len(self._held_between(self._cursor, end))

    # -- taking and changing -------------------------------------------------------

    def _gather(self, lo: int, hi: int) -> Packets:
        # The packets held in lo..hi-1, in sequence order.
        parts: list[tuple[Any, ...]] = []
        slots = self._sparse_in(lo, hi)
        if slots:
            parts.append(
                (
                    np.array([self._symbol[i] for i in slots], dtype=np.uint32),
                    np.array([self._side[i] for i in slots], dtype=np.uint8),
                    np.array([self._quantity[i] for i in slots], dtype=np.int32),
                    np.array([self._price[i] for i in slots], dtype=np.int32),
                    np.array([self._keys[i] for i in slots], dtype=np.int32),
                )
            )
        base = self._base
        for c in sorted(self._chunks):
            start = base + (c << _CHUNK_SHIFT)
            if start + _CHUNK <= lo or start >= hi:
                continue
            chunk = self._chunks[c]
            a, b = max(lo - start, 0), min(hi - start, _CHUNK)
            at = np.flatnonzero(np.frombuffer(chunk.flags, dtype=np.uint8)[a:b]) + a
            parts.append(
                (
                    np.frombuffer(chunk.symbol, dtype=np.uint32)[at],
                    np.frombuffer(chunk.side, dtype=np.uint8)[at],
                    np.frombuffer(chunk.quantity, dtype=np.int32)[at],
                    np.frombuffer(chunk.price, dtype=np.int32)[at],
                    (at + start).astype(np.int32),
                )
            )
        if not parts:
            return _batch([], [])
        columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
        order = np.argsort(columns[4], kind="stable")
        return Packets._from_columns(
            np.ascontiguousarray(columns[0][order]).view("S4"),
            np.ascontiguousarray(columns[1][order]).view("S1"),
            np.ascontiguousarray(columns[2][order]),
            np.ascontiguousarray(columns[3][order]),
            np.ascontiguousarray(columns[4][order]),
            np.empty(0, dtype=np.int64),
        )

    def _remove(self, lo: int, hi: int) -> int:
        # Forget the packets held in lo..hi-1; return how many there were.
        if hi <= lo:
            return 0
        removed = 0
        # Deleting shifts entries between slots: collect the keys first.
        for key in [self._keys[i] for i in self._sparse_in(lo, hi)]:
            self._delete(self._find(key))
            c = (key - self._base) >> _CHUNK_SHIFT
            self._waiting[c] -= 1
            if not self._waiting[c]:
                del self._waiting[c]
            removed += 1
        base = self._base
        for c in sorted(self._chunks):
            start = base + (c << _CHUNK_SHIFT)
            if start + _CHUNK <= lo or start >= hi:
                continue
            chunk = self._chunks[c]
            a, b = max(lo - start, 0), min(hi - start, _CHUNK)
            flags = np.frombuffer(chunk.flags, dtype=np.uint8)
            n = int(np.count_nonzero(flags[a:b]))
            chunk.count -= n
            removed += n
            if chunk.count == 0:
                del self._chunks[c]
            else:
                chunk.flags[a:b] = bytes(b - a)
        self._held -= removed
        self._shrink()
        return removed

    def take(self, stop: int) -> Packets:
        """Return the held packets below ``stop`` from the cursor on, and forget them."""
        stop = min(integer(stop, "stop"), MAX_SEQUENCE + 1)
        lo = self._cursor
        if stop <= lo:
            return _batch([], [])
        hi = min(stop, self._query_end(None))
        taken = self._gather(lo, hi)
        for start, count in self._missing_between(lo, hi).tolist():
            self._skip(start, start + count)
        top = MAX_SEQUENCE + 1 if self._fixed is None else self._fixed + 1
        self._skip(max(lo, hi), min(stop, top))
        self._remove(lo, hi)
        self._cursor = stop
        gone = {s for s in self._discarded if s < stop}
        self._discarded -= gone
        self._count -= len(gone)
        return taken

    def _skip(self, start: int, stop: int) -> None:
        if start >= stop:
            return
        if self._skipped and self._skipped[-1][1] == start:
            self._skipped[-1] = (self._skipped[-1][0], stop)
        else:
            self._skipped.append((start, stop))

    def _slot_of(self, sequence: int) -> tuple[_Chunk | None, int]:
        # Where a held, untaken sequence's payload is; KeyError if it is not held.
        if sequence >= self._cursor and self._first <= sequence < self._end():
            offset = sequence - self._base
            chunk = self._chunks.get(offset >> _CHUNK_SHIFT)
            if chunk is not None:
                if chunk.flags[offset & (_CHUNK - 1)]:
                    return chunk, offset & (_CHUNK - 1)
            else:
                slot = self._find(sequence)
                if slot >= 0:
                    return None, slot
        raise KeyError(f"sequence {sequence} is not held")

    def replace(self, packets: Packets) -> None:
        """Overwrite the payload of held sequences not yet taken."""
        symbols, sides, quantities, prices, sequences = _payloads(packets)
        places = [self._slot_of(s) for s in sequences]
        for k, (chunk, i) in enumerate(places):
            payload = (symbols[k], sides[k], quantities[k], prices[k])
            if chunk is None:
                self._symbol[i], self._side[i], self._quantity[i], self._price[i] = payload
            else:
                chunk.symbol[i], chunk.side[i], chunk.quantity[i], chunk.price[i] = payload

    def discard(self, sequences: npt.ArrayLike) -> int:
        """Forget held sequences not yet taken, so they are missing again; count them."""
        forgotten = 0
        for s in _as_ints(sequences):
            try:
                chunk, i = self._slot_of(s)
            except KeyError:
                continue
            if chunk is None:
                self._remove(s, s + 1)
            else:
                chunk.flags[i] = 0
                chunk.count -= 1
                self._held -= 1
                if chunk.count == 0:
                    del self._chunks[(s - self._base) >> _CHUNK_SHIFT]
            self._discarded.add(s)
            forgotten += 1
        return forgotten

    def conflicting(self) -> Packets:
        """Return the later arrivals whose payload differed from the packet held."""
        return _batch(list(self._conflicting), [])

    def peek(self, sequences: npt.ArrayLike) -> Packets:
        """Return the packets held and not yet taken among ``sequences``, in order."""
        wanted = sorted(set(_as_ints(sequences)))
        return Packets.concat([self._gather(s, s + 1) for s in wanted if s in self])


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
    packets = in_sequence_order(packets)
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


def in_sequence_order(packets: Packets) -> Packets:
    """Return ``packets`` in sequence order: themselves if so already (the common case).

    A stable sort: packets of one sequence keep their order.  Shared with the writers
    of every format (:mod:`packetcore.io.formats`), as the compiled engine's to_json does.
    """
    sequence = packets.sequence
    if len(sequence) < 2 or bool(np.all(sequence[1:] >= sequence[:-1])):
        return packets
    return packets[np.argsort(sequence, kind="stable")]
