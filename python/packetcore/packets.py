"""Packets: a columnar batch of exchange packets backed by numpy arrays."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from .errors import FeedError

__all__ = [
    "COLUMNS",
    "JSON_KEYS",
    "SYMBOL_RULE",
    "Packet",
    "Packets",
    "packet_error",
    "shown_symbol",
    "symbol_error",
    "valid_symbol",
]

#: Column name -> numpy dtype, in wire order.  Symbols are 4 bytes on the wire,
#: right-padded with NUL bytes; numpy's ``S4`` strips that padding on read.
COLUMNS: dict[str, np.dtype[Any]] = {
    "symbol": np.dtype("S4"),
    "buysellindicator": np.dtype("S1"),
    "quantity": np.dtype(np.int32),
    "price": np.dtype(np.int32),
    "sequence": np.dtype(np.int32),
}

#: The keys of one packet in ``output.json``, in output order.
JSON_KEYS = ("symbol", "buysellindicator", "quantity", "price", "packetSequence")

# ---------------------------------------------------------------------------- symbols
# The one rule of what a symbol may be, everywhere: on the wire (the engines' decoders),
# in every file format read or written, in a feed served.  The protocol's symbol field
# is 4 bytes of ASCII: a symbol is 1 to 4 printable ASCII characters (space to tilde,
# 0x20-0x7E), right-padded with NUL bytes to 4 on the wire.  In an ``S4`` column the
# padding is gone, so a valid item is exactly those 1-4 characters.  The engines hold
# the same rule as a vectorised check over a column, ``engine.valid_symbols``.

#: The symbol rule, as every error message states it.
SYMBOL_RULE: Final = "1-4 printable ASCII characters"
_SYMBOL = re.compile(rb"[ -~]{1,4}\Z")
_SHOWN_MAX = 40
_ESCAPED_BYTE = re.compile(r"(?<!\\)\\udc([89a-f][0-9a-f])")


def valid_symbol(symbol: bytes) -> bool:
    """Whether ``symbol`` (its bytes without NUL padding) keeps :data:`SYMBOL_RULE`."""
    return _SYMBOL.match(symbol) is not None


def shown_symbol(raw: bytes) -> str:
    """Return how messages show a symbol's bytes: quoted, UTF-8 where they are, else escaped."""
    shown = repr(raw[:_SHOWN_MAX].decode("utf-8", "surrogateescape"))
    # A byte that is no UTF-8 shows as \xNN, as in a bytes literal.
    shown = _ESCAPED_BYTE.sub(r"\\x\1", shown)
    return shown + ("..." if len(raw) > _SHOWN_MAX else "")


def symbol_error(index: int, raw: bytes) -> FeedError:
    """Return the error naming record ``index`` whose symbol ``raw`` breaks the rule."""
    return FeedError(
        f"record {index}, field 'symbol': expected {SYMBOL_RULE}, got {shown_symbol(raw)}",
        index,
        "symbol",
    )


def packet_error(index: int, field: str, packet: bytes) -> FeedError:
    """Return the error naming record ``index``, a 17-byte wire packet bad in ``field``."""
    if field == "symbol":
        return symbol_error(index, packet[:4].rstrip(b"\0"))
    if field == "buysellindicator":
        got = shown_symbol(packet[4:5])
    else:
        got = str(int.from_bytes(packet[13:17], "big", signed=True))
    expected = "'B' or 'S'" if field == "buysellindicator" else "1 or above"
    return FeedError(
        f"record {index}, field {field!r}: expected {expected}, got {got}", index, field
    )


_EMPTY_OFFSETS = np.zeros(0, dtype=np.int64)
_EMPTY_OFFSETS.flags.writeable = False


class Packet(NamedTuple):
    """One packet, its fields named by their ``output.json`` keys."""

    symbol: str
    buysellindicator: str
    quantity: int
    price: int
    packetSequence: int

    def to_record(self) -> dict[str, str | int]:
        """Return the packet as an ``output.json`` object."""
        return dict(zip(JSON_KEYS, self, strict=True))


def _text(raw: bytes) -> str:
    # latin-1 maps every byte to one code point, so no symbol byte is ever lost.
    return raw.decode("latin-1")


class Packets:
    """A batch of packets held as five numpy columns of equal length.

    ``invalid`` holds the byte offsets, in the input they were decoded from, of
    packets that decoding rejected (see :func:`packetcore.decode`); it is empty for
    batches built any other way and plays no part in equality.
    """

    __slots__ = ("buysellindicator", "invalid", "price", "quantity", "sequence", "symbol")

    symbol: npt.NDArray[np.bytes_]
    buysellindicator: npt.NDArray[np.bytes_]
    quantity: npt.NDArray[np.int32]
    price: npt.NDArray[np.int32]
    sequence: npt.NDArray[np.int32]
    invalid: npt.NDArray[np.int64]

    def __init__(
        self,
        symbol: npt.ArrayLike = (),
        buysellindicator: npt.ArrayLike = (),
        quantity: npt.ArrayLike = (),
        price: npt.ArrayLike = (),
        sequence: npt.ArrayLike = (),
        *,
        invalid: npt.ArrayLike | None = None,
    ) -> None:
        columns = (symbol, buysellindicator, quantity, price, sequence)
        arrays = [
            _column(name, dtype, values)
            for (name, dtype), values in zip(COLUMNS.items(), columns, strict=True)
        ]
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {sorted(lengths)}")
        (self.symbol, self.buysellindicator, self.quantity, self.price, self.sequence) = arrays
        self.invalid = (
            _EMPTY_OFFSETS if invalid is None else np.ascontiguousarray(invalid, dtype=np.int64)
        )

    @classmethod
    def _from_columns(
        cls,
        symbol: npt.NDArray[np.bytes_],
        buysellindicator: npt.NDArray[np.bytes_],
        quantity: npt.NDArray[np.int32],
        price: npt.NDArray[np.int32],
        sequence: npt.NDArray[np.int32],
        invalid: npt.NDArray[np.int64] | None = None,
    ) -> Packets:
        # Trusted constructor for the engines: the columns are already contiguous
        # arrays of the right dtypes and one length, so nothing is checked or copied.
        self = cls.__new__(cls)
        self.symbol = symbol
        self.buysellindicator = buysellindicator
        self.quantity = quantity
        self.price = price
        self.sequence = sequence
        self.invalid = _EMPTY_OFFSETS if invalid is None else invalid
        return self

    @classmethod
    def empty(cls) -> Packets:
        """Return a batch with no packets."""
        return cls()

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Packets:
        """Build a batch from ``output.json`` objects (the inverse of :meth:`to_records`)."""
        rows = list(records)
        try:
            return cls(
                [_field_bytes(r["symbol"], 4) for r in rows],
                [_field_bytes(r["buysellindicator"], 1) for r in rows],
                [r["quantity"] for r in rows],
                [r["price"] for r in rows],
                [r["packetSequence"] for r in rows],
            )
        except KeyError as exc:
            raise ValueError(f"record lacks the key {exc.args[0]!r}") from None

    @classmethod
    def concat(cls, batches: Iterable[Packets]) -> Packets:
        """Return the batches one after another as one batch.

        Given an iterator (a file read block by block), the batches are not kept: their
        columns are, and each column's parts are freed once joined, so the peak is the
        packets once and one column more, not twice the packets.
        """
        parts: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in (*COLUMNS, "invalid")}
        first: Packets | None = None
        for count, batch in enumerate(batches):
            if count == 0:
                first = batch  # kept alone: one batch is returned as it is, not copied
            elif count == 1:
                assert first is not None
                for name, columns in parts.items():
                    columns.append(getattr(first, name))
                first = None
            if count:
                for name, columns in parts.items():
                    columns.append(getattr(batch, name))
        if first is not None:
            return first
        if not parts["sequence"]:
            return cls.empty()
        # One column at a time, its parts dropped as soon as it is joined.
        joined = [np.concatenate(parts.pop(name)) for name in (*COLUMNS, "invalid")]
        return cls._from_columns(*joined)

    def __add__(self, other: object) -> Packets:
        if not isinstance(other, Packets):
            return NotImplemented
        return Packets.concat((self, other))

    def __len__(self) -> int:
        return len(self.sequence)

    @overload
    def __getitem__(self, index: int) -> Packet: ...
    @overload
    def __getitem__(self, index: slice | Sequence[int] | npt.NDArray[Any]) -> Packets: ...
    def __getitem__(self, index: Any) -> Packet | Packets:
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"packet index {i} out of range for {len(self)} packets")
            return Packet(
                _text(self.symbol[i]),
                _text(self.buysellindicator[i]),
                int(self.quantity[i]),
                int(self.price[i]),
                int(self.sequence[i]),
            )
        return Packets._from_columns(
            *(np.ascontiguousarray(getattr(self, name)[index]) for name in COLUMNS)
        )

    def __iter__(self) -> Iterator[Packet]:
        columns = (
            map(_text, self.symbol.tolist()),
            map(_text, self.buysellindicator.tolist()),
            self.quantity.tolist(),
            self.price.tolist(),
            self.sequence.tolist(),
        )
        return map(Packet._make, zip(*columns, strict=True))

    def rows(self) -> Iterator[tuple[bytes, bytes, int, int, int]]:
        """Return the packets as raw ``(symbol, side, quantity, price, sequence)`` tuples."""
        return zip(
            self.symbol.tolist(),
            self.buysellindicator.tolist(),
            self.quantity.tolist(),
            self.price.tolist(),
            self.sequence.tolist(),
            strict=True,
        )

    def to_records(self) -> list[dict[str, str | int]]:
        """Return the packets as a list of ``output.json`` objects."""
        return [packet.to_record() for packet in self]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packets):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in COLUMNS)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays: unhashable

    def __repr__(self) -> str:
        if len(self) == 0:
            return "Packets([])"
        head = ", ".join(repr(tuple(p)) for p in self[:3])
        more = f", ... {len(self) - 3} more" if len(self) > 3 else ""
        return f"Packets([{head}{more}])"


_INT32 = np.iinfo(np.int32)


def _column(name: str, dtype: np.dtype[Any], values: npt.ArrayLike) -> npt.NDArray[Any]:
    # One column as its dtype, refusing what numpy would silently change: a float or a
    # bool or a text as an integer, an integer beyond int32, a text longer than its field.
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"column {name!r} must be one-dimensional")
    if array.dtype != dtype and array.size:
        kind = array.dtype.kind
        if dtype.kind == "i":
            if kind == "O" and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array.tolist()
            ):
                kind = "i"
            if kind not in "iu":
                raise TypeError(f"column {name!r} must hold integers, got {array.dtype}")
            low, high = array.min(), array.max()
            if low < _INT32.min or high > _INT32.max:
                value = low if low < _INT32.min else high
                raise ValueError(f"column {name!r}: {value} does not fit int32")
        else:
            if kind not in "SU":
                raise TypeError(f"column {name!r} must hold bytes, got {array.dtype}")
            long = np.flatnonzero(np.char.str_len(array) > dtype.itemsize)
            if len(long):
                value = array[long[0]].item()
                raise ValueError(
                    f"column {name!r}: {value!r} is longer than {dtype.itemsize} byte(s)"
                )
    return np.ascontiguousarray(array, dtype=dtype)


def _field_bytes(value: Any, width: int) -> bytes:
    # The inverse of _text; refuses what numpy would silently truncate.
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{value!r} holds a character outside one byte") from None
    elif isinstance(value, bytes):
        raw = value
    else:
        raise TypeError(f"expected str or bytes, got {type(value).__name__}")
    if len(raw) > width:
        raise ValueError(f"{value!r} is longer than {width} byte(s)")
    return raw
