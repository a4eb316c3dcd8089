"""Feeds a server can serve: the reference book, synthetic feeds, files in every format.

A feed is a :class:`~packetcore.Packets` batch whose sequences run contiguously from
its first packet.  :func:`load_feed` turns the ``--feed`` option into one; a file is
read in any format of :mod:`packetcore.io.formats`, streamed, never whole in memory.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import MAX_SEQUENCE, PACKET_SIZE, decode
from ..errors import FeedError, ProtocolError
from ..packets import (
    JSON_KEYS,
    Packets,
    packet_error,
    symbol_error,
    valid_symbol,
)
from ..seeds import Streams
from . import is_nats
from .formats import FORMATS, check_symbols, format_for, iter_packets

__all__ = [
    "SYMBOLS",
    "FeedError",
    "MappedFeed",
    "book",
    "check_feed",
    "load_feed",
    "open_feed",
    "parse_records",
    "synthetic",
    "synthetic_count",
]

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_KEY_SET = frozenset(JSON_KEYS)
_SIDES = ("B", "S")

#: The symbols a synthetic feed draws from.
SYMBOLS = (
    "AAPL", "MSFT", "AMZN", "GOOG", "META", "NVDA", "TSLA", "IBM",
    "KO", "T", "F", "GE", "JPM", "XOM", "INTC", "ORCL",
)  # fmt: skip


def book() -> Packets:
    """Return the 14-packet order book the reference exchange serves."""
    text = resources.files("packetcore").joinpath("data", "orderbook.json").read_bytes()
    return parse_records(json.loads(text), "the packaged order book")


def synthetic(count: int, seed: int | None = None) -> Packets:
    """Return ``count`` random packets with sequences 1..count, drawn from ``seed``."""
    if not 0 <= count <= MAX_SEQUENCE:
        raise FeedError(f"a synthetic feed holds 0..{MAX_SEQUENCE} packets, not {count}")
    rng = Streams(seed).root()
    symbols = np.array(SYMBOLS, dtype="S4")
    sides = np.array(_SIDES, dtype="S1")
    # Whole columns at once: ten million packets take well under a second.
    return Packets._from_columns(
        symbols[rng.integers(0, len(symbols), count, dtype=np.uint8)],
        sides[rng.integers(0, 2, count, dtype=np.int8)],
        rng.integers(1, 10_000, count, dtype=np.int32, endpoint=True),
        rng.integers(1, 1_000_000, count, dtype=np.int32, endpoint=True),
        np.arange(1, count + 1, dtype=np.int32),
    )


def synthetic_count(spec: str) -> int:
    """Return the N of a ``synthetic:N`` spec; raise :class:`FeedError` if it is no count."""
    text = spec.partition(":")[2]
    try:
        count = int(text)
    except ValueError:
        raise FeedError(f"feed {spec!r}: {text!r} is not a packet count") from None
    if not 1 <= count <= MAX_SEQUENCE:
        raise FeedError(
            f"feed {spec!r}: a synthetic feed holds 1..{MAX_SEQUENCE} packets "
            f"(at least 1 packet, at most one per positive int32 sequence)"
        )
    return count


def load_feed(spec: str, seed: int | None = None) -> Packets:
    """Return the feed ``spec`` names: ``book``, ``synthetic:N``, a file in any format, or a
    JetStream stream (``nats://HOST:PORT/STREAM``, :mod:`packetcore.io.nats`)."""
    if spec == "book":
        return book()
    if spec.startswith("synthetic:"):
        count = synthetic_count(spec)
        return synthetic(count, seed)
    if is_nats(spec):
        from .nats import read_stream

        return read_stream(spec)
    path = Path(spec)
    source = f"feed file {os.fspath(path)!r}"
    try:
        form = format_for(path)
        # The blocks are not kept beside their copy: see concat.
        feed = Packets.concat(iter_packets(path, form, source=source))
    except FileNotFoundError:
        raise FeedError(
            f"feed {spec!r}: no such file (a feed is 'book', 'synthetic:N' or a file "
            f"in one of the formats {', '.join(FORMATS)})"
        ) from None
    except OSError as exc:
        raise FeedError(f"feed {spec!r}: cannot read it: {exc.strerror or exc}") from None
    return check_feed(feed, source)


def open_feed(spec: str, seed: int | None = None) -> Packets | MappedFeed:
    """Return the feed ``spec`` names, a ``.bin`` file mapped rather than read."""
    if is_nats(spec):
        return load_feed(spec, seed)
    if spec != "book" and not spec.startswith("synthetic:") and format_for(spec) == "bin":
        return MappedFeed(spec)
    return load_feed(spec, seed)


#: Packets a :class:`MappedFeed` decodes and checks, spread evenly over the file.
MAPPED_SAMPLE = 4096


class MappedFeed:
    """A ``.bin`` feed (raw packets in sequence order) mapped into memory, never copied.

    Opening it reads a sample, not the file: the size must be whole packets, and the
    first, the last and :data:`MAPPED_SAMPLE` packets between them must decode and
    carry the sequences of a run contiguous from the first.  The pages of the file are
    read as they are served, and the page cache, not the process, holds them.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        source = f"feed file {self.path!r}"
        try:
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size == 0:
                    raise FeedError(f"{source}: holds no packets")
                if size % PACKET_SIZE:
                    raise FeedError(
                        f"{source}: not a whole number of {PACKET_SIZE}-byte packets: "
                        f"{size % PACKET_SIZE} bytes left after record {size // PACKET_SIZE - 1}"
                    )
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
                try:
                    self.first, self.last = _check_sample(
                        file.fileno(), size // PACKET_SIZE, source
                    )
                except BaseException:
                    self._map.close()
                    raise
        except FileNotFoundError:
            raise FeedError(f"feed {self.path!r}: no such file") from None
        except OSError as exc:
            raise FeedError(f"feed {self.path!r}: cannot read it: {exc.strerror or exc}") from None
        self.wire = memoryview(self._map)
        self.count = size // PACKET_SIZE
        self._size = size
        # Kept open to watch the file's size: reading a mapped page that a truncation
        # took away kills the process (SIGBUS), so every read is checked first.
        self._watch = os.open(self.path, os.O_RDONLY)

    def check(self) -> None:
        """Raise :class:`FeedError` if the file shrank since it was mapped."""
        if os.fstat(self._watch).st_size < self._size:
            raise FeedError(f"feed file {self.path!r} shrank while being served")

    def __len__(self) -> int:
        return self.count

    def packets(self) -> Packets:
        """Return the whole feed decoded (as big in memory as the file: for small feeds)."""
        return decode(self.wire)

    def close(self) -> None:
        """Unmap the file, unless answers still being written hold views of it."""
        # A transport may still hold a slice: the mapping then goes with the last of them.
        with contextlib.suppress(OSError):
            os.close(self._watch)
        with contextlib.suppress(BufferError):
            self.wire.release()
            self._map.close()

    def __repr__(self) -> str:
        return f"<MappedFeed {self.path!r}, {self.count} packets>"


def _check_sample(fd: int, count: int, source: str) -> tuple[int, int]:
    """Return the first and last sequences of a mapped feed; raise :class:`FeedError`."""
    rows = np.unique(np.linspace(0, count - 1, min(count, MAPPED_SAMPLE + 2)).astype(np.int64))
    # Read with pread, not through the mapping: a fault on a mapped page can map a whole
    # large folio of the page cache (megabytes), and a few thousand of them map the file.
    sample = b"".join([os.pread(fd, PACKET_SIZE, i * PACKET_SIZE) for i in rows.tolist()])
    if len(sample) != len(rows) * PACKET_SIZE:
        raise FeedError(f"{source}: the file shrank while it was being checked")
    try:
        packets = decode(sample, strict=True)
    except ProtocolError as exc:
        index = int(rows[exc.offset // PACKET_SIZE])
        error = packet_error(index, exc.field, sample[exc.offset : exc.offset + PACKET_SIZE])
        raise FeedError(f"{source}: {error}", index, exc.field) from None
    first = int(packets.sequence[0])
    if first < 1:
        raise FeedError(
            f"{source}: record 0, field 'packetSequence': expected 1 or above, got {first}",
            0,
            "packetSequence",
        )
    wrong = np.flatnonzero(packets.sequence.astype(np.int64) != first + rows)
    if len(wrong):
        index = int(rows[wrong[0]])
        raise FeedError(
            f"{source}: record {index}, field 'packetSequence': expected {first + index} "
            f"(sequences run contiguously from {first}), got {int(packets.sequence[wrong[0]])}",
            index,
            "packetSequence",
        )
    return first, first + count - 1


def check_feed(feed: Packets, source: str = "feed") -> Packets:
    """Return ``feed`` if it can be served, else raise :class:`FeedError` naming the record.

    A feed holds packets, its symbols keep :data:`~packetcore.packets.SYMBOL_RULE` and
    its sequences run contiguously from the first.
    """
    count = len(feed)
    if count == 0:
        raise FeedError(f"{source}: holds no packets")
    try:
        check_symbols(feed.symbol)
    except FeedError as exc:
        raise FeedError(f"{source}: {exc}", exc.index, exc.field) from None
    first = int(feed.sequence[0])
    expected = np.arange(first, first + count, dtype=np.int64)
    wrong = np.flatnonzero(feed.sequence != expected)
    if len(wrong):
        i = int(wrong[0])
        raise FeedError(
            f"{source}: record {i}, field 'packetSequence': expected {first + i} "
            f"(sequences run contiguously from {first}), got {int(feed.sequence[i])}",
            i,
            "packetSequence",
        )
    return feed


def parse_records(records: Any, source: str = "feed") -> Packets:
    """Validate ``output.json`` records and return them as a feed; raise :class:`FeedError`."""
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise FeedError(f"{source}: expected a JSON array of packets, got {type(records).__name__}")
    if not records:
        raise FeedError(f"{source}: holds no packets")
    count = len(records)
    symbols: list[bytes] = [b""] * count
    sides: list[bytes] = [b""] * count
    quantities: list[int] = [0] * count
    prices: list[int] = [0] * count
    first = 0
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise FeedError(f"{source}: record {i} is a {type(record).__name__}, not an object", i)
        if record.keys() != _KEY_SET:
            _bad_keys(source, i, record)
        symbol = record["symbol"]
        if type(symbol) is not str:
            raise FeedError(
                f"{source}: record {i}, field 'symbol': expected a string, got {symbol!r}",
                i,
                "symbol",
            )
        if not valid_symbol(symbol.encode("utf-8")):
            raise FeedError(f"{source}: {symbol_error(i, symbol.encode('utf-8'))}", i, "symbol")
        side = record["buysellindicator"]
        if side not in _SIDES or type(side) is not str:
            raise FeedError(
                f"{source}: record {i}, field 'buysellindicator': expected 'B' or 'S', "
                f"got {side!r}",
                i,
                "buysellindicator",
            )
        quantity = record["quantity"]
        price = record["price"]
        sequence = record["packetSequence"]
        _check_int(source, i, "quantity", quantity, _INT32_MIN)
        _check_int(source, i, "price", price, _INT32_MIN)
        _check_int(source, i, "packetSequence", sequence, 1)
        if i == 0:
            first = sequence
        elif sequence != first + i:
            raise FeedError(
                f"{source}: record {i}, field 'packetSequence': expected {first + i} "
                f"(sequences run contiguously from {first}), got {sequence}",
                i,
                "packetSequence",
            )
        symbols[i] = symbol.encode("ascii")
        sides[i] = side.encode("ascii")
        quantities[i] = quantity
        prices[i] = price
    return Packets._from_columns(
        np.array(symbols, dtype="S4"),
        np.array(sides, dtype="S1"),
        np.array(quantities, dtype=np.int32),
        np.array(prices, dtype=np.int32),
        np.arange(first, first + count, dtype=np.int32),
    )


def _bad_keys(source: str, index: int, record: dict[str, Any]) -> None:
    missing = [key for key in JSON_KEYS if key not in record]
    if missing:
        raise FeedError(
            f"{source}: record {index}, field {missing[0]!r}: missing", index, missing[0]
        )
    extra = sorted(str(key) for key in record.keys() - _KEY_SET)
    raise FeedError(
        f"{source}: record {index}, field {extra[0]!r}: not a packet field "
        f"(expected {', '.join(JSON_KEYS)})",
        index,
        extra[0],
    )


def _check_int(source: str, index: int, field: str, value: object, low: int) -> None:
    # bool is an int subclass, and 3.0 is not an integer on the wire: both refused.
    if type(value) is not int or not low <= value <= _INT32_MAX:
        raise FeedError(
            f"{source}: record {index}, field {field!r}: expected an integer in "
            f"{low}..{_INT32_MAX}, got {value!r}",
            index,
            field,
        )
