"""The Packets batch and its records (shared by both engines)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from packetcore import Packet, Packets


def book_records() -> list[dict[str, str | int]]:
    text = resources.files("packetcore").joinpath("data/orderbook.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def test_records_round_trip() -> None:
    records = book_records()
    packets = Packets.from_records(records)
    assert len(packets) == 14
    assert packets.to_records() == records
    assert next(iter(packets)) == Packet("AAPL", "B", 50, 100, 1)
    assert packets[-1].packetSequence == 14


def test_record_is_immutable_and_named_by_json_keys() -> None:
    packet = Packets.from_records(book_records())[0]
    assert packet._fields == ("symbol", "buysellindicator", "quantity", "price", "packetSequence")
    with pytest.raises(AttributeError):
        packet.price = 1  # type: ignore[misc]


def test_index_slice_and_mask() -> None:
    packets = Packets.from_records(book_records())
    assert packets[2:4].sequence.tolist() == [3, 4]
    assert packets[packets.price > 1000].sequence.tolist() == [11, 12, 13, 14]
    assert packets[[0, 13]].sequence.tolist() == [1, 14]
    with pytest.raises(IndexError):
        packets[14]


def test_concat_and_equality() -> None:
    packets = Packets.from_records(book_records())
    assert packets[:5] + packets[5:] == packets
    assert Packets.concat([]) == Packets.empty()
    assert packets != packets[1:]
    assert packets != packets[::-1]
    assert (packets == "x") is False


def test_columns_must_agree() -> None:
    with pytest.raises(ValueError, match="length"):
        Packets([b"A"], [b"B"], [1], [1], [1, 2])
    with pytest.raises(ValueError, match="one-dimensional"):
        Packets(np.zeros((1, 1), "S4"), [b"B"], [1], [1], [1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"symbol": "TOOLONG"}, "longer than 4"),
        ({"buysellindicator": "BS"}, "longer than 1"),
        ({"symbol": "\u20ac"}, "outside one byte"),
    ],
)
def test_from_records_refuses_what_numpy_would_truncate(
    change: dict[str, str], message: str
) -> None:
    record = {**book_records()[0], **change}
    with pytest.raises(ValueError, match=message):
        Packets.from_records([record])


@pytest.mark.parametrize(
    ("columns", "error", "message"),
    [
        (([b"A"], [b"B"], [1], [1], [1.5]), TypeError, "'sequence' must hold integers"),
        (([b"A"], [b"B"], [True], [1], [1]), TypeError, "'quantity' must hold integers"),
        (([b"A"], [b"B"], ["5"], [1], [1]), TypeError, "'quantity' must hold integers"),
        (([b"A"], [b"B"], [1], np.array([2**40]), [1]), ValueError, "'price': 1099511627776"),
        (([b"A"], [b"B"], [1], [2**70], [1]), ValueError, "does not fit int32"),
        ((["TOOLONG"], [b"B"], [1], [1], [1]), ValueError, "'TOOLONG' is longer than 4"),
        (([b"A"], [b"BS"], [1], [1], [1]), ValueError, "b'BS' is longer than 1"),
        (([1], [b"B"], [1], [1], [1]), TypeError, "'symbol' must hold bytes"),
    ],
)
def test_columns_refuse_what_numpy_would_change(
    columns: tuple[object, ...], error: type[Exception], message: str
) -> None:
    # Packets(..., sequence=[1.5]) held sequence 1; np.int64 2**40 became 0; "TOOLONG" "TOOL".
    with pytest.raises(error, match=message):
        Packets(*columns)  # type: ignore[arg-type]


def test_columns_take_any_integer_dtype_in_range() -> None:
    packets = Packets([b"A"], [b"B"], np.array([7], np.uint8), [-(2**31)], np.array([2**31 - 1]))
    assert packets.rows().__next__() == (b"A", b"B", 7, -(2**31), 2**31 - 1)
    assert Packets() == Packets.empty()


def test_from_records_names_a_missing_key() -> None:
    record = book_records()[0]
    del record["price"]
    with pytest.raises(ValueError, match="price"):
        Packets.from_records([record])


def test_non_ascii_bytes_survive_as_latin1() -> None:
    packets = Packets([b"\xe9\x00X"], [b"S"], [1], [2], [3])
    assert packets[0].symbol == "\xe9\x00X"
    assert Packets.from_records(packets.to_records()) == packets


def test_repr() -> None:
    packets = Packets.from_records(book_records())
    assert "11 more" in repr(packets)
    assert repr(Packets.empty()) == "Packets([])"
