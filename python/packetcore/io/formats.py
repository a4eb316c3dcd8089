"""Output formats of a feed and their readers: json, ndjson, csv, parquet and bin.

A format is chosen by name or by the file's extension (:func:`format_for`).  Writers
stream: :func:`open_writer` gives one whose :meth:`FormatWriter.write` takes batches as
they come and whose :meth:`FormatWriter.close` finishes the document.  Readers stream
too: :func:`iter_packets` parses a file a block at a time, never all of it at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt

from ..engine import PACKET_SIZE, Decoder, TextParser, encode, text_rows, valid_symbols
from ..engine._pure import in_sequence_order
from ..errors import FeedError, MissingDependencyError, ProtocolError
from ..packets import (
    JSON_KEYS,
    Packets,
    packet_error,
    shown_symbol,
    symbol_error,
)
from . import is_nats
from .output import PARTIAL_SUFFIX, STDOUT, AtomicFile

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_FORMAT",
    "FORMATS",
    "ROW_GROUP_ROWS",
    "FormatWriter",
    "check_symbols",
    "format_for",
    "format_named_by",
    "iter_packets",
    "open_writer",
    "read",
    "write",
]

#: Every format, by the name ``--format`` takes.
FORMATS: Final = ("json", "ndjson", "csv", "parquet", "bin")
#: The format of a path whose extension names none.
DEFAULT_FORMAT: Final = "json"
#: Bytes read per step by :func:`iter_packets`.
BLOCK_SIZE: Final = 8 << 20
#: Rows a parquet row group holds before it is written (the last may hold fewer).
ROW_GROUP_ROWS: Final = 1 << 20

_EXTENSIONS = {
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".csv": "csv",
    ".parquet": "parquet",
    ".bin": "bin",
}
_CSV_HEADER = ",".join(JSON_KEYS).encode("ascii") + b"\n"
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_B, _S = ord("B"), ord("S")
_PARQUET_EXTRA = 'parquet needs pyarrow: pip install "packetcore[parquet]"'


def check_symbols(symbols: npt.ArrayLike, start: int = 0) -> None:
    """Raise :func:`symbol_error` for the first symbol of the column that breaks the rule.

    ``start`` is the record index of the column's first item, for the message.
    """
    mask = valid_symbols(symbols)
    if not mask.all():
        i = int(np.argmin(mask))
        raise symbol_error(start + i, bytes(np.asarray(symbols)[i]))


def format_for(path: str | os.PathLike[str], explicit: str | None = None) -> str:
    """Return the format to use for ``path``: ``explicit`` if given, else by extension."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise ValueError(f"unknown format {explicit!r}: choose one of {', '.join(FORMATS)}")
        return explicit
    return format_named_by(path) or DEFAULT_FORMAT


def format_named_by(path: str | os.PathLike[str]) -> str | None:
    """Return the format ``path``'s extension names (``.csv``: csv), None if it names none."""
    name = Path(path)
    if name.suffix == PARTIAL_SUFFIX:
        name = name.with_suffix("")  # out.csv.partial is what a fetch into out.csv saved
    return _EXTENSIONS.get(name.suffix.lower())


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    # Imported on first use only: pyarrow is an optional extra and slow to import.
    try:
        import pyarrow  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise MissingDependencyError(_PARQUET_EXTRA) from None
    return pyarrow, pyarrow.parquet


class FormatWriter:
    """Write one document to a binary stream, a batch of packets at a time.

    Only what every format reads back is written: a batch with a packet that breaks the
    protocol (a symbol outside :data:`~packetcore.packets.SYMBOL_RULE`, a side that is
    not B or S, a sequence below 1) raises ValueError naming it, and none of it is written.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.records = 0
        self._closed = False

    def write(self, packets: Packets) -> None:
        """Append the packets' records (in the order given) to the document."""
        if self._closed:
            raise ValueError("write() after close()")
        if len(packets):
            _check_writable(packets, self.records)
            self._write(packets)
            self.records += len(packets)

    def close(self) -> None:
        """Finish the document (the stream itself stays open)."""
        if not self._closed:
            self._closed = True
            self._finish()

    def abandon(self) -> None:
        """Give the document up: nothing more is written, not even at garbage collection."""
        self._closed = True

    def _write(self, packets: Packets) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass


class _JsonWriter(FormatWriter):
    def _write(self, packets: Packets) -> None:
        self.stream.write(b",\n" if self.records else b"[\n")
        self.stream.write(text_rows(packets, "json"))

    def _finish(self) -> None:
        self.stream.write(b"\n]\n" if self.records else b"[]\n")


class _NdjsonWriter(FormatWriter):
    def _write(self, packets: Packets) -> None:
        self.stream.write(text_rows(packets, "ndjson"))


class _CsvWriter(FormatWriter):
    # The header goes with the first rows (or alone at the end): nothing is written
    # before a batch passed its check.
    def _write(self, packets: Packets) -> None:
        if not self.records:
            self.stream.write(_CSV_HEADER)
        self.stream.write(text_rows(packets, "csv"))

    def _finish(self) -> None:
        if not self.records:
            self.stream.write(_CSV_HEADER)


class _BinWriter(FormatWriter):
    def _write(self, packets: Packets) -> None:
        self.stream.write(encode(packets))


class _ParquetWriter(FormatWriter):
    """Typed columns; a row group is written each time ``ROW_GROUP_ROWS`` rows are held."""

    def __init__(self, stream: BinaryIO, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        super().__init__(stream)
        pa, pq = _pyarrow()
        target: BinaryIO | _Appending = stream
        if not _seekable(stream):
            # pyarrow writes parquet front to back, but asks where it is: a pipe cannot
            # say, so the bytes written are counted here.
            target = _Appending(stream)
        self._pa = pa
        self._schema = pa.schema(
            [
                (JSON_KEYS[0], pa.string()),
                (JSON_KEYS[1], pa.string()),
                (JSON_KEYS[2], pa.int32()),
                (JSON_KEYS[3], pa.int32()),
                (JSON_KEYS[4], pa.int32()),
            ]
        )
        self._writer = pq.ParquetWriter(target, self._schema)  # type: ignore[arg-type,unused-ignore]
        self._rows = row_group_rows
        self._held: list[Packets] = []
        self._held_rows = 0

    def abandon(self) -> None:
        super().abandon()
        # pyarrow's writer would write its footer from __del__, into a closed file.
        self._writer.is_open = False

    def _write(self, packets: Packets) -> None:
        self._held.append(packets)
        self._held_rows += len(packets)
        while self._held_rows >= self._rows:
            held = Packets.concat(self._held)
            self._flush(held[: self._rows])
            rest = held[self._rows :]
            self._held = [rest] if len(rest) else []
            self._held_rows = len(rest)

    def _flush(self, packets: Packets) -> None:
        pa = self._pa
        columns = [
            pa.array(_latin1(packets.symbol), pa.string()),
            pa.array(_latin1(packets.buysellindicator), pa.string()),
            pa.array(packets.quantity, pa.int32()),
            pa.array(packets.price, pa.int32()),
            pa.array(packets.sequence, pa.int32()),
        ]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self._schema))

    def _finish(self) -> None:
        if self._held_rows:
            self._flush(Packets.concat(self._held))
            self._held = []
            self._held_rows = 0
        self._writer.close()


class _Appending:
    """A write-only stream that knows its position: parquet onto a pipe."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        written = self._stream.write(data)
        self._position += len(data)
        return written

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        # The stream is the caller's to close; pyarrow closes its wrapper only.
        self.closed = True


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _latin1(column: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # The columns written hold ASCII only (_check_writable): each byte its character.
    return np.char.decode(column, "latin-1")


def _check_writable(packets: Packets, start: int) -> None:
    # One pass per column: what read() would refuse is never written.
    symbol_ok = valid_symbols(packets.symbol)
    side = np.ascontiguousarray(packets.buysellindicator).view(np.uint8)  # bytes compare slowly
    side_ok = (side == _B) | (side == _S)
    wrong = ~(symbol_ok & side_ok) | (packets.sequence < 1)
    if not wrong.any():
        return
    i = int(np.argmax(wrong))
    if not symbol_ok[i]:
        reason = str(symbol_error(start + i, bytes(packets.symbol[i])))
    elif not side_ok[i]:
        reason = (
            f"record {start + i}, field 'buysellindicator': expected 'B' or 'S', "
            f"got {shown_symbol(bytes(packets.buysellindicator[i]))}"
        )
    else:
        reason = f"record {start + i}, field 'packetSequence': expected 1 or above"
    raise ValueError(f"cannot write {reason} (packetSequence {int(packets.sequence[i])})")


_WRITERS: dict[str, type[FormatWriter]] = {
    "json": _JsonWriter,
    "ndjson": _NdjsonWriter,
    "csv": _CsvWriter,
    "parquet": _ParquetWriter,
    "bin": _BinWriter,
}


def open_writer(stream: BinaryIO, form: str) -> FormatWriter:
    """Return a writer of a ``form`` document onto ``stream``."""
    return _WRITERS[format_for("", form)](stream)


def write(path: str | os.PathLike[str], packets: Packets, format: str | None = None) -> None:
    """Write ``packets`` to ``path`` (``-``: stdout) in sequence order, atomically.

    Packets that break the protocol (a symbol outside
    :data:`~packetcore.packets.SYMBOL_RULE`, among others) raise ValueError naming the
    file and the first such record; ``path`` is then left as it was.
    ``nats://HOST:PORT/STREAM``: published after what the stream holds (docs/nats.md).
    """
    if not isinstance(packets, Packets):
        raise TypeError(f"write() takes Packets, not {type(packets).__name__}")
    if is_nats(path):
        from .nats import write_stream

        if format not in (None, "bin"):
            raise ValueError(f"a stream holds raw packets (bin), not {format}")
        write_stream(path, in_sequence_order(packets))
        return
    form = format_for(path, format)
    packets = in_sequence_order(packets)
    repeated = np.flatnonzero(np.diff(packets.sequence) == 0)
    if len(repeated):
        raise ValueError(f"packet sequence {packets.sequence[repeated[0]]} appears twice")
    if os.fspath(path) == STDOUT:
        out = sys.stdout.buffer
        writer = open_writer(out, form)
        _write_named(writer, packets, "stdout")
        writer.close()
        out.flush()
        return
    with AtomicFile(path) as file:
        writer = open_writer(file.stream, form)
        _write_named(writer, packets, os.fspath(path))
        writer.close()


def _write_named(writer: FormatWriter, packets: Packets, name: str) -> None:
    try:
        writer.write(packets)
    except BaseException as exc:
        writer.abandon()
        if isinstance(exc, ValueError):
            raise ValueError(f"{name}: {exc}") from None
        raise


def iter_packets(
    path: str | os.PathLike[str],
    form: str | None = None,
    block: int = BLOCK_SIZE,
    source: str | None = None,
) -> Iterator[Packets]:
    """Yield the packets of the file at ``path``, parsed ``block`` bytes at a time.

    A file that breaks its format or the protocol (a symbol outside
    :data:`~packetcore.packets.SYMBOL_RULE`, ...) raises :class:`FeedError`, one line
    that starts with ``source`` (default: the path) and names the record.
    """
    form = format_for(path, form)
    try:
        if form == "parquet":
            yield from _iter_parquet(path, block)
            return
        with open(path, "rb") as file:
            if form == "bin":
                yield from _iter_bin(file, block)
                return
            parser = TextParser(form)
            while chunk := file.read(block):
                batch = parser.feed(chunk)
                if len(batch):
                    yield batch
            batch = parser.close()
            if len(batch):
                yield batch
    except FeedError as exc:
        where = os.fspath(path) if source is None else source
        raise FeedError(f"{where}: {exc}", exc.index, exc.field) from None


def _iter_bin(file: BinaryIO, block: int) -> Iterator[Packets]:
    decoder = Decoder(strict=True)
    while chunk := file.read(block):
        try:
            batch = decoder.feed(chunk)
        except ProtocolError as exc:
            file.seek(exc.offset)
            raise packet_error(
                exc.offset // PACKET_SIZE, exc.field, file.read(PACKET_SIZE)
            ) from None
        if len(batch):
            yield batch
    if decoder.pending:
        raise FeedError(
            f"not a whole number of {PACKET_SIZE}-byte packets: {decoder.pending} bytes "
            f"left after record {decoder.offset // PACKET_SIZE - 1}"
        )


def _iter_parquet(path: str | os.PathLike[str], block: int) -> Iterator[Packets]:
    if os.stat(path).st_size == 0:
        return  # a 0-byte file is an empty feed, in every format
    pa, pq = _pyarrow()
    try:
        file = pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise FeedError(f"not a readable parquet file ({exc})") from None
    names = file.schema_arrow.names
    if names != list(JSON_KEYS):
        raise FeedError(f"parquet columns are {names}, expected {list(JSON_KEYS)}")
    start = 0
    batches = file.iter_batches(batch_size=max(1, block // 32))
    while True:
        try:
            batch = next(batches, None)
        except pa.ArrowException as exc:
            raise FeedError(f"a broken parquet file ({exc})") from None
        if batch is None:
            return
        packets = _from_arrow(pa, batch, start)
        start += len(packets)
        yield packets


def _from_arrow(pa: ModuleType, batch: Any, start: int) -> Packets:
    columns = [batch.column(i) for i in range(5)]
    for i, key in enumerate(JSON_KEYS):
        if columns[i].null_count:
            index = start + int(np.flatnonzero(columns[i].is_null().to_numpy(False))[0])
            raise FeedError(f"record {index}, field {key!r}: missing", index, key)
    symbol = _symbols_from_arrow(pa, columns[0], start)
    texts = np.asarray(columns[1].to_numpy(zero_copy_only=False)).astype(str)
    side = _encode_latin1(texts, 1, start, JSON_KEYS[1])
    bad_side = np.flatnonzero((side != b"B") & (side != b"S"))
    if len(bad_side):
        _bad_value(start + int(bad_side[0]), JSON_KEYS[1], "'B' or 'S'")
    ints = []
    for column, key in zip(columns[2:], JSON_KEYS[2:], strict=True):
        values = np.asarray(column.to_numpy(False))
        # Whole numbers only, each within int32: never a silent cast (2**40 read as 0).
        if values.dtype.kind not in "iu":
            raise FeedError(
                f"field {key!r}: expected an integer column, got {column.type}", -1, key
            )
        outside = np.flatnonzero((values < _INT32_MIN) | (values > _INT32_MAX))
        if len(outside):
            _bad_value(start + int(outside[0]), key, "an int32")
        ints.append(np.ascontiguousarray(values, dtype=np.int32))
    bad_sequence = np.flatnonzero(ints[2] < 1)
    if len(bad_sequence):
        _bad_value(start + int(bad_sequence[0]), JSON_KEYS[4], "an integer >= 1")
    return Packets._from_columns(symbol, side, ints[0], ints[1], ints[2])


def _symbols_from_arrow(pa: ModuleType, column: Any, start: int) -> np.ndarray[Any, Any]:
    # Text to an S4 column, then the one symbol rule; what the conversion would lose (a
    # character beyond ASCII, a fifth one, a trailing NUL) is refused first.
    import pyarrow.compute as pc  # type: ignore[import-untyped,unused-ignore]

    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise FeedError(
            f"field 'symbol': expected a string column, got {column.type}", -1, "symbol"
        )
    ascii_ok = np.asarray(pc.string_is_ascii(column).to_numpy(zero_copy_only=False))
    lengths = np.asarray(pc.binary_length(column).to_numpy(zero_copy_only=False))
    lossy = ~ascii_ok | (lengths > 4)
    if not lossy.any():
        symbol = np.asarray(column.to_numpy(zero_copy_only=False)).astype("S4")
        lossy = np.char.str_len(symbol) != lengths
        if not lossy.any():
            check_symbols(symbol, start)
            return symbol
    i = int(np.argmax(lossy))
    raise symbol_error(start + i, str(column[i].as_py()).encode("utf-8"))


def _encode_latin1(
    texts: np.ndarray[Any, Any], width: int, start: int, key: str
) -> np.ndarray[Any, Any]:
    lengths = np.char.str_len(texts)
    bad = np.flatnonzero((lengths < 1) | (lengths > width))
    if not len(bad):
        try:
            return np.char.encode(texts, "latin-1").astype(f"S{width}")
        except UnicodeEncodeError:
            bad = np.array([i for i, text in enumerate(texts.tolist()) if max(text) > "\xff"])
    _bad_value(start + int(bad[0]), key, f"1-{width} characters in \\u0001..\\u00ff")
    raise AssertionError("unreachable")


def _bad_value(index: int, key: str, expected: str) -> None:
    raise FeedError(f"record {index}, field {key!r}: expected {expected}", index, key)


def read(path: str | os.PathLike[str], format: str | None = None) -> Packets:
    """Return the packets of the file at ``path``, its format named or by extension.

    ``nats://HOST:PORT/STREAM``: the packets a JetStream stream holds (docs/nats.md).
    """
    if is_nats(path):
        from .nats import read_stream

        return read_stream(path)
    return Packets.concat(iter_packets(path, format))  # blocks not kept: see concat
