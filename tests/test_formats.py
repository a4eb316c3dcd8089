"""Formats: text_rows and TextParser on both engines, the writers and readers of formats."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packetcore.engine._pure_text import CSV_HEADER
from packetcore.errors import FeedError, MissingDependencyError
from packetcore.io import formats
from packetcore.io.feeds import book

from packetcore import Packets, read, to_json, write

INT32 = st.integers(-(2**31), 2**31 - 1)
# Symbols are 1-4 printable ASCII characters (packets.SYMBOL_RULE): these are the ones
# that need quoting or escaping somewhere.
TRICKY = [b'A"B', b"\\", b"a,b", b" \\/~", b"{}[]", b"X", b'""""', b" ,;"]
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))


def tricky() -> Packets:
    n = len(TRICKY)
    return Packets(
        TRICKY,
        [b"B", b"S"] * (n // 2),
        np.arange(n, dtype=np.int64) - 2**31,
        np.full(n, 2**31 - 1, dtype=np.int32),
        np.arange(1, n + 1, dtype=np.int32),
    )


@st.composite
def packet_batches(draw: st.DrawFn) -> Packets:
    n = draw(st.integers(0, 30))
    symbol = st.text(PRINTABLE, min_size=1, max_size=4).map(str.encode)
    return Packets(
        draw(st.lists(symbol, min_size=n, max_size=n)),
        draw(st.lists(st.sampled_from([b"B", b"S"]), min_size=n, max_size=n)),
        draw(st.lists(INT32, min_size=n, max_size=n)),
        draw(st.lists(INT32, min_size=n, max_size=n)),
        draw(st.lists(st.integers(1, 2**31 - 1), min_size=n, max_size=n)),
    )


def document(engine: ModuleType, packets: Packets, form: str) -> bytes:
    rows = engine.text_rows(packets, form)
    if form == "json":
        return b"[\n" + rows + b"\n]\n" if len(packets) else b"[]\n"
    if form == "csv":
        return CSV_HEADER + b"\n" + rows
    return bytes(rows)


def parse(engine: ModuleType, form: str, *chunks: bytes) -> Packets:
    parser = engine.TextParser(form)
    batches = [parser.feed(chunk) for chunk in chunks]
    return Packets.concat([*batches, parser.close()])


def test_json_rows_frame_to_the_to_json_document(engine: ModuleType) -> None:
    feed = book()
    assert document(engine, feed, "json") == to_json(feed)
    assert engine.text_rows(Packets.empty(), "json") == b""


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
def test_engines_write_the_same_bytes(engine: ModuleType, form: str) -> None:
    from packetcore.engine import _pure

    assert engine.text_rows(tricky(), form) == _pure.text_rows(tricky(), form)


def test_text_against_independent_readers(engine: ModuleType) -> None:
    packets = tricky()
    records = packets.to_records()
    assert json.loads(document(engine, packets, "json")) == records
    lines = engine.text_rows(packets, "ndjson").decode("ascii").splitlines()
    assert [json.loads(line) for line in lines] == records
    assert engine.text_rows(packets, "ndjson").split(b"\n")[:-1] == [
        json.dumps(r).encode() for r in records
    ]
    text = document(engine, packets, "csv").decode("latin-1")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(records[0])
    assert rows[1:] == [[str(v) for v in r.values()] for r in records]
    # Quoted only where RFC 4180 needs it.
    assert b"AAPL,B,50,100,1\n" in engine.text_rows(book(), "csv")


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
@settings(max_examples=60, deadline=None)
@given(packets=packet_batches())
def test_round_trip_exact(engine: ModuleType, form: str, packets: Packets) -> None:
    assert parse(engine, form, document(engine, packets, form)) == packets


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
def test_split_at_every_byte(engine: ModuleType, form: str) -> None:
    packets = tricky()[:4]
    doc = document(engine, packets, form)
    for k in range(len(doc) + 1):
        assert parse(engine, form, doc[:k], doc[k:]) == packets, k
    assert parse(engine, form, *[doc[i : i + 1] for i in range(len(doc))]) == packets


def test_any_whitespace_key_order_and_escapes(engine: ModuleType) -> None:
    raw = Path(__file__).parent.parent / "python" / "packetcore" / "data" / "orderbook.json"
    assert parse(engine, "json", raw.read_bytes()) == book()
    doc = (
        b' [ {"price" :-7,\r\n"packetSequence":9 ,"quantity": 0,"buysellindicator":"\\u0053",'
        b'"symbol":"\\"\\\\\\/\\u0041"} ]\n'
    )
    got = parse(engine, "json", doc)
    assert got == Packets([b'"\\/A'], [b"S"], [0], [-7], [9])
    line = b'{"symbol": "~", "buysellindicator": "S", "quantity": 0, "price": -7, '
    line += b'"packetSequence": 9} \r\n\n'
    assert parse(engine, "ndjson", b"\n" + line) == Packets([b"~"], [b"S"], [0], [-7], [9])


GOOD = b'{"symbol": "A", "buysellindicator": "B", "quantity": 1, "price": 2, "packetSequence": %d}'


def records(*bodies: bytes) -> bytes:
    return b"[" + b",".join(bodies) + b"]"


@pytest.mark.parametrize(
    ("doc", "index", "field"),
    [
        (records(GOOD % 1, GOOD.replace(b'"A"', b'"ABCDE"') % 2), 1, "symbol"),
        (records(GOOD % 1, GOOD.replace(b'"A"', b"12") % 2), 1, "symbol"),
        (records(GOOD.replace(b'"A"', b'"\\u0100"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"A"', b'"\\u0000"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"A"', b'"\\u00e9"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"A"', b'"\xc3\x84PL"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"A"', b'"\xe9"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"A"', b'"A\\tB"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"A"', b'"\x7f"') % 1), 0, "symbol"),
        (records(GOOD.replace(b'"B"', b'"b"') % 1), 0, "buysellindicator"),
        (records(GOOD.replace(b": 1,", b": 1.5,") % 1), 0, "quantity"),
        (records(GOOD.replace(b": 1,", b": true,") % 1), 0, "quantity"),
        (records(GOOD.replace(b": 1,", b': "1",') % 1), 0, "quantity"),
        (records(GOOD.replace(b": 2,", b": 2147483648,") % 1), 0, "price"),
        (records(GOOD.replace(b": 2,", b": 01,") % 1), 0, "price"),
        (records(GOOD % 0), 0, "packetSequence"),
        (records(GOOD.replace(b'"price"', b'"venue"') % 1), 0, "venue"),
        (records(GOOD.replace(b'"price": 2', b'"quantity": 2') % 1), 0, "quantity"),
        (records(GOOD.replace(b', "price": 2', b"") % 1), 0, "price"),
        (records(GOOD % 1, b"[1]"), 1, ""),
        (records(GOOD % 1, b'{"symbol" "A"}'), 1, ""),
        (records(GOOD % 1) + b" x", -1, ""),
        (records(GOOD % 1)[:-1], -1, ""),
        (records(GOOD % 1)[:-3], 0, ""),
        (b'{"a": 1}', -1, ""),
        (b" \n", -1, ""),
        (records(GOOD % 1, b""), -1, ""),
    ],
)
def test_malformed_json(engine: ModuleType, doc: bytes, index: int, field: str) -> None:
    from packetcore.engine import _pure

    with pytest.raises(FeedError) as info:
        parse(engine, "json", doc)
    assert (info.value.index, info.value.field) == (index, field)
    if index >= 0:
        assert f"record {index}" in str(info.value)
    with pytest.raises(FeedError) as twin:
        parse(_pure, "json", doc[:7], doc[7:])
    assert str(twin.value) == str(info.value)


@pytest.mark.parametrize(
    ("doc", "index", "field"),
    [
        (b"symbol,side\nA,B,1,2,3\n", -1, ""),
        (b"A,B,1,2,3\n", -1, ""),
        (b"\n", -1, ""),
        (CSV_HEADER + b"\nA,B,1,2,3\nA,B,1,2\n", 1, ""),
        (CSV_HEADER + b"\nA,B,1,2,3,4\n", 0, ""),
        (CSV_HEADER + b"\nABCDE,B,1,2,3\n", 0, "symbol"),
        (CSV_HEADER + b"\nA,B,1,2,1\n\xc3\x84PL,B,1,2,3\n", 1, "symbol"),
        (CSV_HEADER + b"\n\xe9,B,1,2,3\n", 0, "symbol"),
        (CSV_HEADER + b"\nA\tB,B,1,2,3\n", 0, "symbol"),
        (CSV_HEADER + b'\n"A\nB",B,1,2,3\n', 0, "symbol"),
        (CSV_HEADER + b"\nA\x00,B,1,2,3\n", 0, "symbol"),
        (CSV_HEADER + b'\n"A""B,S,1,2,3\n', 0, ""),
        (CSV_HEADER + b'\nA"B,S,1,2,3\n', 0, ""),
        (CSV_HEADER + b"\nA,X,1,2,3\n", 0, "buysellindicator"),
        (CSV_HEADER + b"\nA,B,1.0,2,3\n", 0, "quantity"),
        (CSV_HEADER + b"\nA,B,1,2,0\n", 0, "packetSequence"),
    ],
)
def test_malformed_csv(engine: ModuleType, doc: bytes, index: int, field: str) -> None:
    from packetcore.engine import _pure

    with pytest.raises(FeedError) as info:
        parse(engine, "csv", doc)
    assert (info.value.index, info.value.field) == (index, field)
    with pytest.raises(FeedError) as twin:
        parse(_pure, "csv", doc[:60], doc[60:])
    assert str(twin.value) == str(info.value)


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
def test_a_symbol_beyond_ascii_is_one_line_naming_it(engine: ModuleType, form: str) -> None:
    # A UTF-8 file's "ÄPL" was read as the four latin-1 characters "Ã\x84PL".
    good = Packets([b"A"], [b"B"], [1], [2], [1])
    doc = document(engine, good + Packets([b"XPL"], [b"S"], [3], [4], [2]), form)
    doc = doc.replace(b"XPL", "ÄPL".encode())
    with pytest.raises(FeedError) as info:
        parse(engine, form, doc)
    assert (info.value.index, info.value.field) == (1, "symbol")
    message = str(info.value)
    assert "\n" not in message
    assert "record 1, field 'symbol': expected 1-4 printable ASCII characters" in message
    assert "ÄPL" in message


def test_ndjson_needs_one_record_a_line(engine: ModuleType) -> None:
    with pytest.raises(FeedError) as info:
        parse(engine, "ndjson", (GOOD % 1) + b" " + (GOOD % 2) + b"\n")
    assert "not valid NDJSON" in str(info.value)


def test_unknown_form(engine: ModuleType) -> None:
    with pytest.raises(ValueError, match="ndjson"):
        engine.TextParser("xml")
    with pytest.raises(ValueError, match="ndjson"):
        engine.text_rows(book(), "xml")


def test_format_for() -> None:
    assert formats.format_for("a/b.JSONL") == "ndjson"
    assert formats.format_for("out.csv") == "csv"
    assert formats.format_for("out.parquet") == "parquet"
    assert formats.format_for("orderbook.bin") == "bin"
    assert formats.format_for("out.txt") == "json"
    assert formats.format_for("-") == "json"
    assert formats.format_for("out.csv", "bin") == "bin"
    with pytest.raises(ValueError, match="json, ndjson, csv, parquet, bin"):
        formats.format_for("out.csv", "xml")


@pytest.mark.parametrize("form", formats.FORMATS)
def test_write_read_round_trip(tmp_path: Path, form: str) -> None:
    if form == "parquet":
        pytest.importorskip("pyarrow")
    packets = tricky() if form != "bin" else book()
    path = tmp_path / f"out.{form}"
    write(path, packets[::-1])
    assert read(path) == packets
    # A block smaller than one record still reads every record.
    assert Packets.concat(list(formats.iter_packets(path, block=5))) == packets


def test_bin_is_the_wire_bytes(tmp_path: Path) -> None:
    from serverutil import reference_bytes

    write(tmp_path / "orderbook.bin", book())
    assert (tmp_path / "orderbook.bin").read_bytes() == reference_bytes()
    (tmp_path / "cut.bin").write_bytes(reference_bytes()[:-3])
    with pytest.raises(FeedError, match="whole number"):
        read(tmp_path / "cut.bin")


def test_empty_documents(tmp_path: Path) -> None:
    write(tmp_path / "e.json", Packets.empty())
    assert (tmp_path / "e.json").read_bytes() == b"[]\n"
    write(tmp_path / "e.csv", Packets.empty())
    assert (tmp_path / "e.csv").read_bytes() == CSV_HEADER + b"\n"
    for name in ("e.json", "e.csv"):
        assert len(read(tmp_path / name)) == 0


@pytest.mark.parametrize("form", ["json", "ndjson", "csv"])
def test_a_0_byte_document_is_an_empty_feed(engine: ModuleType, form: str) -> None:
    # One rule for every format: 0 bytes hold no packets (the ndjson and bin writers
    # write them for an empty feed; json and csv, which write [] and a header, read them).
    assert len(parse(engine, form)) == 0
    assert len(parse(engine, form, b"", b"")) == 0


@pytest.mark.parametrize("form", formats.FORMATS)
def test_a_0_byte_file_is_an_empty_feed_in_every_format(form: str, tmp_path: Path) -> None:
    if form == "parquet":
        pytest.importorskip("pyarrow")
    (tmp_path / f"empty.{form}").write_bytes(b"")
    assert len(read(tmp_path / f"empty.{form}")) == 0


def test_streaming_writer_matches_to_json() -> None:
    feed = book()
    stream = io.BytesIO()
    writer = formats.open_writer(stream, "json")
    for start in range(0, 14, 5):
        writer.write(feed[start : start + 5])
    writer.close()
    assert stream.getvalue() == to_json(feed)
    assert writer.records == 14


def test_parquet_against_pyarrow(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    packets = tricky()
    stream = io.BytesIO()
    writer = formats._ParquetWriter(stream, row_group_rows=3)
    writer.write(packets[:5])
    writer.write(packets[5:])
    writer.close()
    table = pq.read_table(io.BytesIO(stream.getvalue()))
    assert table.schema.names == list(packets[0]._fields)
    assert table.schema.field("quantity").type == pa.int32()
    assert table.schema.field("symbol").type == pa.string()
    assert table.to_pylist() == packets.to_records()
    assert pq.ParquetFile(io.BytesIO(stream.getvalue())).num_row_groups == 3


def test_parquet_onto_a_pipe() -> None:
    pytest.importorskip("pyarrow")
    import subprocess

    code = (
        "import sys; from packetcore.io import formats; from packetcore.io.feeds import book; "
        "w = formats.open_writer(sys.stdout.buffer, 'parquet'); w.write(book()); w.close()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert out.startswith(b"PAR1") and out.endswith(b"PAR1")


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError) as info:
        write(tmp_path / "out.parquet", book())
    message = str(info.value)
    assert "\n" not in message
    assert 'pip install "packetcore[parquet]"' in message
    assert not (tmp_path / "out.parquet").exists()
    assert list(tmp_path.iterdir()) == []


def test_parquet_values_outside_int32_are_refused_not_cast(tmp_path: Path) -> None:
    # int64 2**40 used to be read as 0, a float 2.9 as 2.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from packetcore.errors import FeedError
    from packetcore.io.formats import read

    def table(quantity: object) -> object:
        return pa.table({
            "symbol": ["AAPL", "MSFT"], "buysellindicator": ["B", "S"],
            "quantity": quantity, "price": pa.array([1, 2], pa.int32()),
            "packetSequence": pa.array([1, 2], pa.int32()),
        })  # fmt: skip

    for bad, expected in [
        (pa.array([1, 2**40], pa.int64()), "int32"),
        (pa.array([1.0, 2.9], pa.float64()), "integer column"),
    ]:
        path = tmp_path / "bad.parquet"
        pq.write_table(table(bad), path)
        with pytest.raises(FeedError, match=expected):
            read(path)
    path = tmp_path / "fine.parquet"
    pq.write_table(table(pa.array([5, -7], pa.int64())), path)
    assert read(path).quantity.tolist() == [5, -7]


def test_a_broken_parquet_file_is_a_feed_error_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from packetcore.errors import FeedError
    from packetcore.io.formats import read

    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(FeedError, match=r"broken\.parquet"):
        read(path)


def test_the_partial_file_keeps_its_format(tmp_path: Path) -> None:
    from packetcore.io.formats import format_for

    assert format_for("out.csv.partial") == "csv"
    assert format_for("out.bin.partial") == "bin"
    assert format_for("out.partial") == "json"


def bad_symbol_file(path: Path) -> None:
    # Record 1 of the file holds the symbol "ÄPL", in UTF-8 as an editor saves it.
    form = formats.format_for(path)
    if form == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        table = pa.table({
            "symbol": ["A", "ÄPL"], "buysellindicator": ["B", "S"],
            "quantity": pa.array([1, 2], pa.int32()), "price": pa.array([3, 4], pa.int32()),
            "packetSequence": pa.array([1, 2], pa.int32()),
        })  # fmt: skip
        pq.write_table(table, path)
        return
    good = Packets([b"A", b"XPL"], [b"B", b"S"], [1, 2], [3, 4], [1, 2])
    write(path, good)
    path.write_bytes(path.read_bytes().replace(b"XPL", "ÄPL".encode()))


@pytest.mark.parametrize("form", formats.FORMATS)
def test_read_refuses_a_symbol_beyond_ascii_in_one_line(tmp_path: Path, form: str) -> None:
    path = tmp_path / f"in.{form}"
    bad_symbol_file(path)
    with pytest.raises(FeedError) as info:
        read(path)
    assert (info.value.index, info.value.field) == (1, "symbol")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: record 1, field 'symbol': expected ")
    assert "1-4 printable ASCII characters" in message
    assert "ÄPL" in message


@pytest.mark.parametrize("form", formats.FORMATS)
def test_write_refuses_a_symbol_outside_the_rule(tmp_path: Path, form: str) -> None:
    # write() used to make a .bin that read() refused, and a latin-1 CSV.
    if form == "parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"out.{form}"
    path.write_bytes(b"before")
    for symbol, shown in (("ÄPL".encode(), "'ÄPL'"), (b"A\tB", "'A\\tB'"), (b"\xe9", "'\\xe9'")):
        bad = Packets([b"A", symbol], [b"B", b"S"], [1, 2], [3, 4], [1, 2])
        with pytest.raises(ValueError) as info:
            write(path, bad)
        message = str(info.value)
        assert "\n" not in message
        assert message == (
            f"{path}: cannot write record 1, field 'symbol': expected 1-4 printable ASCII "
            f"characters, got {shown} (packetSequence 2)"
        )
        assert path.read_bytes() == b"before"
    stream = io.BytesIO()
    writer = formats.open_writer(stream, form)
    opened = stream.getvalue()  # parquet's magic bytes; nothing for the others
    with pytest.raises(ValueError, match="record 1, field 'symbol'"):
        writer.write(bad)
    writer.abandon()
    assert stream.getvalue() == opened


@pytest.mark.parametrize("form", formats.FORMATS)
def test_every_printable_character_round_trips(tmp_path: Path, form: str) -> None:
    if form == "parquet":
        pytest.importorskip("pyarrow")
    symbols = [PRINTABLE[i : i + 4].encode() for i in range(0, len(PRINTABLE), 4)]
    symbols += [b" ", b"  A", b"A  "]
    n = len(symbols)
    packets = Packets(symbols, [b"B"] * n, [0] * n, [0] * n, range(1, n + 1))
    write(tmp_path / f"out.{form}", packets)
    assert read(tmp_path / f"out.{form}") == packets


def test_write_refuses_a_sequence_twice(tmp_path: Path) -> None:
    from packetcore.io.formats import write

    twice = Packets([b"A", b"B"], [b"B", b"S"], [1, 2], [3, 4], [7, 7])
    with pytest.raises(ValueError, match="7 appears twice"):
        write(tmp_path / "out.json", twice)
    assert not (tmp_path / "out.json").exists()
