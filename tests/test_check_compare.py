"""The check's judgement of an output: verdict reasons, details and the sequence map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from packetcore.check.compare import UnreadableOutput, compare, read_output
from packetcore.check.model import Mark, SequenceRun
from packetcore.io.feeds import book, synthetic
from packetcore.io.formats import write
from packetcore.packets import Packets


def records(packets: Packets) -> list[dict[str, object]]:
    return packets.to_records()


def test_the_feed_itself_matches() -> None:
    feed = book()
    result = compare(feed, feed)
    assert result.matches and result.reason == ""
    assert result.sequence_map == [SequenceRun(Mark.RECEIVED, 1, 14)]


def test_missing_sequences_are_named_in_spans() -> None:
    feed = book()
    got = feed[[i for i in range(14) if i + 1 not in (1, 6, 7, 8, 14)]]
    result = compare(feed, got)
    assert not result.matches
    assert result.reason == "9 records for 14 sequences: 5 missing (1, 6-8, 14)"
    assert result.details["missing"] == [1, 6, 7, 8, 14]
    assert result.details["first_difference"]["position"] == 0
    assert result.details["first_difference"]["expected"]["packetSequence"] == 1
    assert [r.as_list() for r in result.sequence_map] == [
        ["missing", 1, 1], ["received", 2, 4], ["missing", 6, 3], ["received", 9, 5],
        ["missing", 14, 1],
    ]  # fmt: skip


def test_duplicates_out_of_order_extra_and_wrong_records_are_each_told() -> None:
    feed = book()
    rows = records(feed)
    rows.insert(3, dict(rows[2]))  # sequence 3 twice
    rows[5], rows[6] = rows[6], rows[5]  # 5 and 6 swapped
    rows[9] = {**rows[9], "price": rows[9]["price"] + 1}  # type: ignore[operator]
    rows.append({**rows[0], "packetSequence": 99})
    result = compare(feed, Packets.from_records(rows))
    d = result.details
    assert d["duplicated"] == [3] and d["extra"] == [99]
    assert d["wrong"] == [int(rows[9]["packetSequence"])]  # type: ignore[call-overload]
    assert d["out_of_order_count"] == 1
    assert d["out_of_order"][0]["after"] == 6
    assert d["first_difference"]["position"] == 3
    marks = {run.mark for run in result.sequence_map}
    assert marks == {Mark.RECEIVED, Mark.DUPLICATED, Mark.WRONG, Mark.EXTRA}
    assert "1 duplicated (3)" in result.reason and "1 out of order" in result.reason


def test_a_long_feed_is_judged_by_columns() -> None:
    feed = synthetic(100_000, seed=3)
    keep = np.ones(len(feed), dtype=bool)
    keep[[10, 11, 12, 50_000, 99_999]] = False
    result = compare(feed, feed[np.flatnonzero(keep)])
    assert result.details["missing_count"] == 5
    assert "(11-13, 50001, 100000)" in result.reason
    assert len(result.sequence_map) == 6


def test_an_empty_output_misses_everything() -> None:
    result = compare(book(), Packets.empty())
    assert result.reason == "0 records for 14 sequences: 14 missing (1-14)"


@pytest.mark.parametrize("key", ["packetsequence", "PacketSequence", "packetSequence"])
def test_output_keys_match_case_insensitively(tmp_path: Path, key: str) -> None:
    rows = [
        {("Symbol" if i % 2 else "symbol"): r["symbol"], "buySellIndicator":
         r["buysellindicator"], "quantity": r["quantity"], "price": r["price"],
         key: r["packetSequence"], "note": "extra fields are ignored"}
        for i, r in enumerate(records(book()))
    ]  # fmt: skip
    path = tmp_path / "output.json"
    path.write_text(json.dumps(rows))
    assert compare(book(), read_output(path)).matches


RECORD = (
    '{"symbol": "MSFT", "buysellindicator": "B", "quantity": 1, "price": 1, "packetSequence": 1}'
)


@pytest.mark.parametrize("name", ["output.ndjson", "output.csv", "output.bin", "output.json"])
def test_every_format_packetcore_writes_is_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write(path, book())
    assert compare(book(), read_output(path)).matches


@pytest.mark.parametrize(
    ("text", "words"),
    [("[{\"symbol", "is not a json document"),
     ("{}", "is not a json feed of records"),
     ('[{"symbol": "A"}]', "record 0 lacks buysellindicator, quantity, price, packetSequence"),
     ("[1, 2]", "record 0 is 1"),
     (f'[{RECORD}, {{"symbol": "MSFT", "buysellindicator": "B", "quantity": "many", '
      '"price": 1, "packetSequence": 2}]', "record 1: quantity is \"many\", not an integer"),
     (f'[{RECORD}, {RECORD}, {{"symbol": "MSFT", "buysellindicator": "B", "quantity": 1, '
      '"price": 1.5, "packetSequence": 2}]', "record 2: price is 1.5, not an integer"),
     ('[{"symbol": 7, "buysellindicator": "B", "quantity": 1, "price": 1, '
      '"packetSequence": 2}]', "record 0: symbol is 7, not a string"),
     ('[{"symbol": "MSFT", "buysellindicator": "B", "quantity": 1, "price": 1, '
      '"packetSequence": 99999999999}]', "record 0: packetSequence is 99999999999, beyond")],
)  # fmt: skip
def test_an_unreadable_output_says_why_in_one_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "output.json"
    path.write_text(text)
    with pytest.raises(UnreadableOutput) as caught:
        read_output(path)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(tmp_path) not in str(caught.value)  # the file's name, not a scratch path


def test_integral_numbers_and_numeric_strings_are_read_as_integers(tmp_path: Path) -> None:
    path = tmp_path / "output.json"
    path.write_text(
        '[{"SYMBOL": "MSFT", "buySellIndicator": "B", "quantity": "5", "price": 12.0, '
        '"packetsequence": 1, "extra": [1]}]'
    )
    got = read_output(path)
    assert got[0].to_record() == {
        "symbol": "MSFT", "buysellindicator": "B", "quantity": 5, "price": 12, "packetSequence": 1,
    }  # fmt: skip
