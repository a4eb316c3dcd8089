"""Feeds: the packaged book, synthetic feeds, and validated output.json files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packetcore.io.feeds import SYMBOLS, FeedError, book, load_feed, synthetic
from serverutil import reference_bytes

from packetcore import Packets, encode, to_json


def good_record(sequence: int = 1) -> dict[str, Any]:
    return {
        "symbol": "MSFT",
        "buysellindicator": "S",
        "quantity": 5,
        "price": 310,
        "packetSequence": sequence,
    }


def write_json(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_book_is_the_reference_order_book() -> None:
    feed = book()
    assert len(feed) == 14
    assert feed.sequence.tolist() == list(range(1, 15))
    assert encode(feed) == reference_bytes()
    assert load_feed("book") == feed


def test_synthetic_is_contiguous_valid_and_seeded() -> None:
    feed = synthetic(10_000, seed=1)
    assert len(feed) == 10_000
    assert feed.sequence.tolist() == list(range(1, 10_001))
    assert set(feed.symbol.tolist()) <= {s.encode() for s in SYMBOLS}
    assert set(feed.buysellindicator.tolist()) == {b"B", b"S"}
    assert feed.quantity.min() >= 1
    assert feed.price.min() >= 1
    assert synthetic(10_000, seed=1) == feed
    assert synthetic(10_000, seed=2) != feed
    assert load_feed("synthetic:10000", seed=1) == feed
    assert len(synthetic(0)) == 0


def test_synthetic_ten_million_is_vectorized() -> None:
    # Whole columns at once; a per-packet loop would take tens of seconds here.
    feed = synthetic(10_000_000, seed=3)
    assert len(feed) == 10_000_000
    assert int(feed.sequence[-1]) == 10_000_000


@pytest.mark.parametrize("feed", [book(), synthetic(5000, seed=4)], ids=["book", "synthetic"])
def test_feed_file_round_trip(tmp_path: Path, feed: Packets) -> None:
    path = tmp_path / "output.json"
    path.write_bytes(to_json(feed))
    loaded = load_feed(str(path))
    assert loaded == feed
    assert encode(loaded) == encode(feed)


def test_a_file_may_start_above_one(tmp_path: Path) -> None:
    path = write_json(tmp_path / "f.json", [good_record(7), good_record(8)])
    assert load_feed(path).sequence.tolist() == [7, 8]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:", "not a packet count"),
        ("synthetic:ten", "not a packet count"),
        ("synthetic:0", "at least 1 packet"),
        ("synthetic:-4", "at least 1 packet"),
        ("no/such/feed.json", "no such file"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        load_feed(spec)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("[{")
    with pytest.raises(FeedError, match="not valid JSON"):
        load_feed(str(path))


@pytest.mark.parametrize(
    ("document", "message"),
    [({"a": 1}, "expected a JSON array"), ([], "holds no packets"), ("x", "JSON array")],
)
def test_bad_documents(tmp_path: Path, document: Any, message: str) -> None:
    with pytest.raises(FeedError, match=message) as info:
        load_feed(write_json(tmp_path / "f.json", document))
    assert info.value.index == -1


def _without(key: str) -> dict[str, Any]:
    record = good_record(2)
    del record[key]
    return record


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (_without("price"), "price"),
        (_without("symbol"), "symbol"),
        ({**good_record(2), "venue": "X"}, "venue"),
        ({**good_record(2), "symbol": "GOOGL"}, "symbol"),
        ({**good_record(2), "symbol": ""}, "symbol"),
        ({**good_record(2), "symbol": 12}, "symbol"),
        ({**good_record(2), "symbol": "A\tB"}, "symbol"),
        ({**good_record(2), "symbol": "Ä"}, "symbol"),
        ({**good_record(2), "buysellindicator": "X"}, "buysellindicator"),
        ({**good_record(2), "buysellindicator": "b"}, "buysellindicator"),
        ({**good_record(2), "buysellindicator": ["B"]}, "buysellindicator"),
        ({**good_record(2), "quantity": 1.5}, "quantity"),
        ({**good_record(2), "quantity": True}, "quantity"),
        ({**good_record(2), "quantity": "5"}, "quantity"),
        ({**good_record(2), "quantity": 2**31}, "quantity"),
        ({**good_record(2), "price": -(2**31) - 1}, "price"),
        ({**good_record(2), "packetSequence": 3}, "packetSequence"),
        ({**good_record(2), "packetSequence": 1}, "packetSequence"),
        ({**good_record(2), "packetSequence": None}, "packetSequence"),
    ],
)
def test_bad_record_names_index_and_field(tmp_path: Path, bad: Any, field: str) -> None:
    path = write_json(tmp_path / "f.json", [good_record(1), bad, good_record(3)])
    with pytest.raises(FeedError) as info:
        load_feed(path)
    assert (info.value.index, info.value.field) == (1, field)
    assert f"record 1, field '{field}'" in str(info.value)
    assert path in str(info.value)


def test_bad_first_record(tmp_path: Path) -> None:
    for bad, field in (
        ({**good_record(), "packetSequence": 0}, "packetSequence"),
        ([1, 2], ""),
        ({**good_record(), "price": 2**31}, "price"),
    ):
        with pytest.raises(FeedError) as info:
            load_feed(write_json(tmp_path / "f.json", [bad]))
        assert (info.value.index, info.value.field) == (0, field)
        assert "record 0" in str(info.value)


def test_int32_bounds_are_accepted(tmp_path: Path) -> None:
    records = [
        {**good_record(1), "quantity": -(2**31), "price": 2**31 - 1},
        {**good_record(2), "symbol": "~ !A", "buysellindicator": "B"},
        {**good_record(3), "symbol": "T"},
    ]
    feed = load_feed(write_json(tmp_path / "f.json", records))
    assert feed.quantity.tolist()[0] == -(2**31)
    assert feed.price.dtype == np.int32
    assert feed.symbol.tolist() == [b"MSFT", b"~ !A", b"T"]


@pytest.mark.parametrize("name", ["f.json", "f.ndjson", "f.jsonl", "f.csv", "f.bin", "f.parquet"])
def test_load_feed_reads_every_format(tmp_path: Path, name: str) -> None:
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    from packetcore import write

    feed = synthetic(5000, seed=5)
    write(tmp_path / name, feed)
    assert load_feed(str(tmp_path / name)) == feed


def test_load_feed_names_the_bad_csv_record(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(
        b"symbol,buysellindicator,quantity,price,packetSequence\nA,B,1,2,1\nA,B,1,2,5\n"
    )
    with pytest.raises(FeedError) as info:
        load_feed(str(path))
    assert (info.value.index, info.value.field) == (1, "packetSequence")
    assert str(path) in str(info.value)


def test_feed_error_lives_in_errors() -> None:
    from packetcore.errors import FeedError as Moved

    assert Moved is FeedError


@pytest.mark.parametrize("form", ["json", "ndjson", "csv", "parquet", "bin"])
def test_serve_refuses_a_feed_file_with_a_symbol_beyond_ascii(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    # read() garbled a UTF-8 CSV's "ÄPL" while serve refused it: one rule now, one line.
    from packetcore.cli.serve import main as serve_main

    from packetcore import write

    if form == "parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"feed.{form}"
    feed = synthetic(5, seed=1)
    feed.symbol[3] = b"XPL"
    write(path, feed)
    if form == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        symbols = table.column("symbol").to_pylist()
        symbols[3] = "ÄPL"
        pq.write_table(table.set_column(0, "symbol", [symbols]), path)
    else:
        placeholder = b"XPL\0" if form == "bin" else b"XPL"  # ÄPL is 4 bytes of UTF-8
        path.write_bytes(path.read_bytes().replace(placeholder, "ÄPL".encode()))
    assert serve_main(["--feed", str(path), "--port", "0", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"feed file {str(path)!r}: record 3, field 'symbol': expected 1-4 printable " in err
    assert "ÄPL" in err
    with pytest.raises(FeedError) as info:
        load_feed(str(path))
    assert (info.value.index, info.value.field) == (3, "symbol")


def test_every_printable_symbol_is_served(tmp_path: Path) -> None:
    symbols = [b" ", b"~", b'"', b"\\", b",", b"A B", b'a,b"']
    n = len(symbols)
    feed = Packets(symbols, [b"B"] * n, [1] * n, [2] * n, range(1, n + 1))
    for name in ("f.csv", "f.json", "f.bin"):
        from packetcore import write

        write(tmp_path / name, feed)
        assert load_feed(str(tmp_path / name)) == feed
