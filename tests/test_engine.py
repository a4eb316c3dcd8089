"""The engine's hot paths, run against both implementations (fixture ``engine``)."""

from __future__ import annotations

import json
import struct
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packetcore import Packets, ProtocolError

DATA = Path(__file__).parent / "data"
MAX_SEQ = 2**31 - 1
INT32 = st.integers(-(2**31), 2**31 - 1)
WIRE = struct.Struct(">4s1siii")


def reference_book() -> Packets:
    text = resources.files("packetcore").joinpath("data/orderbook.json").read_text()
    return Packets.from_records(json.loads(text))


def wire(*rows: tuple[bytes, bytes, int, int, int]) -> bytes:
    return b"".join(WIRE.pack(*row) for row in rows)


printable_symbol = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=4
).map(str.encode)
valid_packet = st.tuples(
    printable_symbol,
    st.sampled_from([b"B", b"S"]),
    INT32,
    INT32,
    st.integers(1, MAX_SEQ),
)
any_packet = st.tuples(
    st.binary(min_size=0, max_size=4),
    st.binary(min_size=0, max_size=1),
    INT32,
    INT32,
    INT32,
)


def batch(rows: list[tuple[bytes, bytes, int, int, int]]) -> Packets:
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    return Packets(*columns)


def stdlib_document(packets: Packets) -> bytes:
    lines = [json.dumps(record) for record in packets.to_records()]
    return ("[\n" + ",\n".join(lines) + "\n]\n").encode() if lines else b"[]\n"


# ---- decode / encode -------------------------------------------------------------


def test_decode_reference_capture(engine: ModuleType) -> None:
    raw = (DATA / "orderbook.bin").read_bytes()
    packets = engine.decode(raw)
    assert packets == reference_book()
    assert len(packets.invalid) == 0
    assert packets[0].to_record() == {
        "symbol": "AAPL",
        "buysellindicator": "B",
        "quantity": 50,
        "price": 100,
        "packetSequence": 1,
    }
    assert engine.encode(packets) == raw


@pytest.mark.parametrize("size", [1, 16, 18, 35])
def test_decode_rejects_partial_packets(engine: ModuleType, size: int) -> None:
    with pytest.raises(ValueError, match=f"{size} bytes"):
        engine.decode(bytes(size))


def test_decode_empty(engine: ModuleType) -> None:
    packets = engine.decode(b"")
    assert len(packets) == 0
    assert packets.sequence.dtype == np.int32
    assert engine.encode(packets) == b""


def test_decode_accepts_any_buffer(engine: ModuleType) -> None:
    raw = (DATA / "orderbook.bin").read_bytes()
    expected = engine.decode(raw)
    assert engine.decode(bytearray(raw)) == expected
    assert engine.decode(memoryview(raw)) == expected
    assert engine.decode(memoryview(b"x" + raw)[1:]) == expected


def test_column_dtypes(engine: ModuleType) -> None:
    packets = engine.decode((DATA / "orderbook.bin").read_bytes())
    assert packets.symbol.dtype == np.dtype("S4")
    assert packets.buysellindicator.dtype == np.dtype("S1")
    for name in ("quantity", "price", "sequence"):
        column = getattr(packets, name)
        assert column.dtype == np.int32
        assert column.dtype.isnative


@pytest.mark.parametrize("sequence", [1, MAX_SEQ])
def test_sequence_extremes(engine: ModuleType, sequence: int) -> None:
    raw = wire((b"ZZZZ", b"S", -(2**31), 2**31 - 1, sequence))
    packets = engine.decode(raw)
    assert list(packets) == [("ZZZZ", "S", -(2**31), 2**31 - 1, sequence)]
    assert engine.encode(packets) == raw


def test_short_symbols_are_nul_padded(engine: ModuleType) -> None:
    raw = wire((b"AB", b"B", 1, 2, 3))
    assert raw[:4] == b"AB\0\0"
    assert engine.decode(raw)[0].symbol == "AB"


INVALID_CASES = [
    ((b"\0\0\0\0", b"B", 1, 1, 1), "symbol"),
    ((b"A\x01", b"B", 1, 1, 1), "symbol"),
    ((b"\x7f", b"B", 1, 1, 1), "symbol"),
    ((b"\0ABC", b"B", 1, 1, 1), "symbol"),
    ((b"AAPL", b"X", 1, 1, 1), "buysellindicator"),
    ((b"AAPL", b"b", 1, 1, 1), "buysellindicator"),
    ((b"AAPL", b"B", 1, 1, 0), "packetSequence"),
    ((b"AAPL", b"B", 1, 1, -5), "packetSequence"),
]


@pytest.mark.parametrize(("row", "field"), INVALID_CASES)
def test_invalid_packets_are_reported_not_lost(
    engine: ModuleType, row: tuple[bytes, bytes, int, int, int], field: str
) -> None:
    good = (b"MSFT", b"S", 7, 8, 9)
    raw = wire(good, row, good)
    packets = engine.decode(raw)
    assert len(packets) == 2
    assert packets.invalid.tolist() == [17]
    with pytest.raises(ProtocolError) as info:
        engine.decode(raw, strict=True)
    assert (info.value.offset, info.value.field) == (17, field)
    assert "17" in str(info.value)
    assert field in str(info.value)


@given(st.lists(valid_packet, max_size=40))
def test_round_trip(engine: ModuleType, rows: list[tuple[bytes, bytes, int, int, int]]) -> None:
    raw = wire(*rows)
    packets = engine.decode(raw)
    assert packets == batch(rows)
    assert engine.encode(packets) == raw
    assert Packets.from_records(packets.to_records()) == packets


@given(st.lists(any_packet, max_size=30))
def test_arbitrary_packets_match_model(
    engine: ModuleType, rows: list[tuple[bytes, bytes, int, int, int]]
) -> None:
    raw = wire(*rows)
    decoded = engine.decode(raw)

    def ok(row: tuple[bytes, bytes, int, int, int]) -> bool:
        name = row[0].rstrip(b"\0")
        printable = bool(name) and all(0x20 <= b < 0x7F for b in name)
        return printable and row[1] in (b"B", b"S") and row[4] >= 1

    assert decoded == batch([r for r in rows if ok(r)])
    assert decoded.invalid.tolist() == [17 * i for i, r in enumerate(rows) if not ok(r)]


@given(st.lists(valid_packet, min_size=1, max_size=12), st.data())
def test_any_split_decodes_identically(
    engine: ModuleType, rows: list[tuple[bytes, bytes, int, int, int]], data: st.DataObject
) -> None:
    raw = wire(*rows)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    decoder = engine.Decoder()
    parts = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        parts.append(decoder.feed(raw[start:end]))
        assert decoder.pending == end % 17
    assert Packets.concat(parts) == batch(rows)
    assert decoder.offset == len(raw)


def test_decoder_every_byte_alone(engine: ModuleType) -> None:
    raw = (DATA / "orderbook.bin").read_bytes()
    decoder = engine.Decoder()
    out = [decoder.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert [len(p) for p in out] == [1 if (i + 1) % 17 == 0 else 0 for i in range(len(raw))]
    assert Packets.concat(out) == reference_book()


def test_decoder_reports_stream_offsets(engine: ModuleType) -> None:
    good = (b"META", b"B", 1, 1, 1)
    raw = wire(good, good, (b"META", b"Q", 1, 1, 3), good)
    decoder = engine.Decoder()
    first = decoder.feed(raw[:20])
    second = decoder.feed(raw[20:])
    assert (len(first), len(second)) == (1, 2)
    assert second.invalid.tolist() == [34]
    assert decoder.invalid_count == 1


def test_strict_decoder_failure_consumes_nothing(engine: ModuleType) -> None:
    good = (b"META", b"B", 1, 1, 1)
    raw = wire(good, (b"META", b"Q", 1, 1, 3))
    decoder = engine.Decoder(strict=True)
    assert len(decoder.feed(raw[:5])) == 0
    with pytest.raises(ProtocolError) as info:
        decoder.feed(raw[5:])
    assert (info.value.offset, info.value.field) == (17, "buysellindicator")
    assert (decoder.pending, decoder.offset) == (5, 0)


def test_decoder_pending_detects_truncated_stream(engine: ModuleType) -> None:
    decoder = engine.Decoder()
    assert len(decoder.feed(bytes(1))) == 0
    assert decoder.pending == 1
    decoder.feed(bytes(15))
    assert decoder.pending == 16


def symbol_words() -> list[bytes]:
    # Every byte value in every position of a symbol, around valid ones, and random words.
    words = {b"AAPL", b"T\0\0\0", b" \0\0\0", b"~~~~", b"\0\0\0\0", b"A\0B\0", b"\0ABC"}
    for base in (b"AAPL", b"A\0\0\0", b"AB\0\0"):
        for position in range(4):
            for value in range(256):
                word = bytearray(base)
                word[position] = value
                words.add(bytes(word))
    rng = np.random.default_rng(16)
    words.update(rng.integers(0, 256, (4000, 4), dtype=np.uint8).view("S4").ravel().tolist())
    return sorted(w.ljust(4, b"\0") for w in words)


def test_valid_symbols_is_the_decoders_rule(engine: ModuleType) -> None:
    from packetcore.packets import valid_symbol

    from packetcore.engine import _pure

    words = symbol_words()
    column = np.frombuffer(b"".join(words), dtype="S4")
    mask = engine.valid_symbols(column)
    assert mask.dtype == np.bool_ and len(mask) == len(words)
    # The scalar rule (1-4 printable ASCII characters, then NUL padding) ...
    assert mask.tolist() == [valid_symbol(w.rstrip(b"\0")) for w in words]
    # ... is what the decoder accepts on the wire, and the twin's mask.
    packets = decode_all(engine, [wire((w, b"B", 1, 2, 3)) for w in words])
    accepted = set(packets.symbol.tolist())
    assert mask.tolist() == [w.rstrip(b"\0") in accepted for w in words]
    assert mask.tolist() == _pure.valid_symbols(column).tolist()
    assert mask[column == b"AAPL"].all() and not mask[column == b""].any()
    # A column of narrower bytes is padded; one that would be truncated is refused.
    assert engine.valid_symbols(np.array([b"A", b"\xe9"])).tolist() == [True, False]
    assert engine.valid_symbols(np.empty(0, "S4")).tolist() == []
    for bad in (np.array([b"TOOLONG"]), np.array(["AAPL"]), np.zeros((2, 2), "S4")):
        with pytest.raises(TypeError, match="S4"):
            engine.valid_symbols(bad)


def decode_all(engine: ModuleType, packets: list[bytes]) -> Packets:
    return engine.decode(b"".join(packets))


def test_gather_refuses_float_flags(engine: ModuleType) -> None:
    # 0.5 was a kept packet.
    with pytest.raises(TypeError, match="keep must be bools or integers"):
        engine.gather(wire((b"A", b"B", 1, 2, 3)), [0.5])
    assert engine.gather(wire((b"A", b"B", 1, 2, 3)), np.array([1], np.uint8)) != b""


# ---- GapTracker ------------------------------------------------------------------


def test_tracker_basics(engine: ModuleType) -> None:
    tracker = engine.GapTracker()
    assert (tracker.last, tracker.last_known, tracker.complete) == (None, False, False)
    assert tracker.missing().tolist() == []
    assert tracker.add(np.array([1, 2, 5, 5, 9], dtype=np.int32)) == 4
    assert (tracker.received, tracker.duplicates, tracker.out_of_range) == (4, 1, 0)
    assert (tracker.last, tracker.highest) == (9, 9)
    assert tracker.missing().tolist() == [3, 4, 6, 7, 8]
    assert tracker.missing_ranges().tolist() == [[3, 2], [6, 3]]
    assert tracker.missing_count() == 5
    assert 5 in tracker and 6 not in tracker and 0 not in tracker
    tracker.last = 10
    assert tracker.last_known
    assert tracker.missing_ranges().tolist() == [[3, 2], [6, 3], [10, 1]]
    assert tracker.add([11, 0, -3]) == 0
    assert tracker.out_of_range == 3
    assert tracker.add(range(1, 11)) == 6
    assert tracker.complete
    assert tracker.missing_ranges().shape == (0, 2)


def test_tracker_all_missing_and_all_duplicate(engine: ModuleType) -> None:
    tracker = engine.GapTracker(first=5, last=1004)
    assert tracker.missing_ranges().tolist() == [[5, 1000]]
    assert len(tracker.missing()) == 1000
    assert tracker.add(np.arange(5, 1005)) == 1000
    assert tracker.add(np.arange(5, 1005)) == 0
    assert (tracker.duplicates, tracker.received) == (1000, 1000)
    assert tracker.complete


def test_tracker_rejects_bad_bounds(engine: ModuleType) -> None:
    with pytest.raises(ValueError):
        engine.GapTracker(first=0)
    tracker = engine.GapTracker()
    tracker.add([50])
    with pytest.raises(ValueError, match="50"):
        tracker.last = 49
    with pytest.raises(ValueError):
        tracker.last = MAX_SEQ + 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.GapTracker(first=1.5), "first must be an integer, got 1.5 (float)"),
        (lambda e: e.GapTracker(first=True), "first must be an integer, got True (bool)"),
        (lambda e: e.GapTracker(first=np.float64(2.0)), "first must be an integer"),
        (lambda e: e.GapTracker(1, 10.5), "last must be an integer, got 10.5"),
        (lambda e: e.GapTracker(1, "10"), "last must be an integer, got '10' (str)"),
        (lambda e: setattr(e.GapTracker(), "last", 3.5), "last must be an integer"),
        (lambda e: e.GapTracker().add([1, 1.5]), "a sequence must be an integer, got 1.5"),
        (lambda e: e.GapTracker().add([True]), "a sequence must be an integer, got True"),
        (lambda e: e.GapTracker().add(["2"]), "a sequence must be an integer, got '2'"),
        (lambda e: e.GapTracker().add(np.array([2.5])), "integers, got an array of float64"),
        (lambda e: e.GapTracker().add(np.array([2.0])), "integers, got an array of float64"),
        (lambda e: e.GapTracker().add(np.array([True])), "integers, got an array of bool"),
    ],
)
def test_tracker_refuses_what_it_would_truncate(
    engine: ModuleType, call: Any, message: str
) -> None:
    # GapTracker.add([1.5]) marked sequence 1 seen; GapTracker(1.5) began at 1.
    with pytest.raises(TypeError) as info:
        call(engine)
    assert message in str(info.value)


def test_tracker_takes_numpy_integers(engine: ModuleType) -> None:
    tracker = engine.GapTracker(np.int64(2), np.uint8(9))
    assert tracker.add([np.int32(3), 4, np.uint64(2**63)]) == 2
    assert tracker.out_of_range == 1
    assert (tracker.first, tracker.last) == (2, 9)


def test_tracker_at_the_top_of_the_sequence_space(engine: ModuleType) -> None:
    tracker = engine.GapTracker(first=MAX_SEQ - 70)
    assert tracker.add([MAX_SEQ, MAX_SEQ - 70]) == 2
    assert tracker.missing_ranges().tolist() == [[MAX_SEQ - 69, 69]]
    assert tracker.add([MAX_SEQ + 1]) == 0
    assert tracker.out_of_range == 1


@settings(max_examples=60)
@given(
    st.integers(1, 40),
    st.one_of(st.none(), st.integers(0, 300)),
    st.lists(st.lists(st.integers(-5, 400), max_size=60), max_size=5),
)
def test_tracker_matches_set_model(
    engine: ModuleType, first: int, span: int | None, batches: list[list[int]]
) -> None:
    last = None if span is None else first + span
    tracker = engine.GapTracker(first, last)
    seen: set[int] = set()
    for numbers in batches:
        fresh = {n for n in numbers if n >= first and (last is None or n <= last)} - seen
        assert tracker.add(np.array(numbers, dtype=np.int64)) == len(fresh)
        seen |= fresh
    top = last if last is not None else max(seen, default=None)
    expected = [] if top is None else [n for n in range(first, top + 1) if n not in seen]
    assert tracker.missing().tolist() == expected
    assert tracker.received == len(seen)
    runs = tracker.missing_ranges().tolist()
    assert [n for s, c in runs for n in range(s, s + c)] == expected
    assert all(s + c not in expected for s, c in runs)


def _rss() -> int:
    """Return this process's resident set size in bytes, from /proc."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_tracker_memory_follows_what_is_seen_not_what_is_announced(engine: ModuleType) -> None:
    # A hostile announcement of the whole sequence space: a bitmap of it is 256 MiB, which
    # neither engine may fill in up front (the twin used to allocate and zero all of it).
    before = _rss()
    tracker = engine.GapTracker(1, MAX_SEQ)
    assert tracker.add([1, 3, 1000]) == 3
    assert tracker.missing_ranges().tolist() == [[2, 1], [4, 996], [1001, MAX_SEQ - 1000]]
    assert tracker.missing_count() == MAX_SEQ - 3
    assert 1000 in tracker and 2 not in tracker and MAX_SEQ not in tracker
    grown = _rss() - before
    assert grown < 32 << 20, f"a tracker of 3 sequences grew the process by {grown >> 20} MiB"


# ---- PacketStore -----------------------------------------------------------------


def test_store_orders_without_sorting(engine: ModuleType) -> None:
    book = reference_book()
    store = engine.PacketStore()
    order = np.random.default_rng(1).permutation(len(book))
    assert store.add(book[order[:7]]) == 7
    assert store.add(book[order[7:]]) == 7
    assert store.complete is False
    store.last = 14
    assert store.complete
    assert store.take(15) == book
    assert (store.duplicates, store.conflicts, len(store), store.pending) == (0, 0, 14, 0)


def test_store_first_arrival_wins_and_conflicts_are_kept(engine: ModuleType) -> None:
    book = reference_book()
    store = engine.PacketStore(first=1, last=14)
    store.add(book)
    twin = book[3:5]
    changed = Packets(
        twin.symbol, twin.buysellindicator, twin.quantity + 1, twin.price, twin.sequence
    )
    assert store.add(twin) == 0
    assert store.add(changed) == 0
    assert (store.duplicates, store.conflicts) == (2, 2)
    assert store.conflicting() == changed
    assert store.take(15) == book
    assert store.add(Packets([b"X"], [b"B"], [1], [1], [15])) == 0
    assert store.out_of_range == 1


@settings(max_examples=60)
@given(
    st.lists(st.lists(valid_packet.map(lambda r: (*r[:4], r[4] % 60 + 1)), max_size=40), max_size=4)
)
def test_store_matches_dict_model(
    engine: ModuleType, batches: list[list[tuple[bytes, bytes, int, int, int]]]
) -> None:
    store = engine.PacketStore()
    model: dict[int, tuple[bytes, bytes, int, int]] = {}
    conflicts = []
    for rows in batches:
        new = 0
        for row in rows:
            if row[4] not in model:
                model[row[4]] = row[:4]
                new += 1
            elif model[row[4]] != row[:4]:
                conflicts.append(row)
        assert store.add(batch(rows)) == new
    expected = batch([(*model[s], s) for s in sorted(model)])
    assert store.take(MAX_SEQ + 1) == expected
    assert store.conflicting() == batch(conflicts)
    assert store.conflicts == len(conflicts)


# ---- to_json ---------------------------------------------------------------------


def test_to_json_reference_book(engine: ModuleType) -> None:
    book = reference_book()
    document = engine.to_json(book)
    assert json.loads(document) == book.to_records()
    assert document == stdlib_document(book)
    assert engine.to_json(Packets.empty()) == b"[]\n"


def test_to_json_sorts_by_sequence(engine: ModuleType) -> None:
    book = reference_book()
    assert engine.to_json(book[::-1]) == engine.to_json(book)


def test_to_json_escapes_hostile_symbols(engine: ModuleType) -> None:
    symbols = [b'"', b"\\", b'a"\\b', b"\n\t\x00x", b"\x7f\x80\xff", b"\x1f\x01"]
    packets = Packets(symbols, [b'"'] * 6, [0] * 6, [-1] * 6, list(range(1, 7)))
    document = engine.to_json(packets)
    assert document == stdlib_document(packets)
    assert json.loads(document) == packets.to_records()


@given(st.lists(any_packet, max_size=30))
def test_to_json_agrees_with_stdlib(
    engine: ModuleType, rows: list[tuple[bytes, bytes, int, int, int]]
) -> None:
    packets = batch(rows)
    document = engine.to_json(packets)
    order = np.argsort(packets.sequence, kind="stable")
    assert json.loads(document) == packets[order].to_records()
    assert document == stdlib_document(packets[order])


# ---- gather ----------------------------------------------------------------------


@given(st.lists(st.tuples(valid_packet, st.booleans()), max_size=40))
def test_gather_keeps_flagged_packets(
    engine: ModuleType, rows: list[tuple[tuple[bytes, bytes, int, int, int], bool]]
) -> None:
    raw = wire(*(row for row, _ in rows))
    keep = np.array([flag for _, flag in rows], dtype=bool)
    assert engine.gather(raw, keep) == wire(*(row for row, flag in rows if flag))
    assert engine.gather(memoryview(raw), keep.astype(np.uint8)) == engine.gather(raw, keep)


def test_gather_extremes(engine: ModuleType) -> None:
    raw = (DATA / "orderbook.bin").read_bytes()
    assert engine.gather(raw, np.ones(14, bool)) == raw
    assert engine.gather(raw, np.zeros(14, bool)) == b""
    assert engine.gather(b"", np.zeros(0, bool)) == b""
    last_only = np.zeros(14, bool)
    last_only[-1] = True
    assert engine.gather(raw, last_only) == raw[-17:]


def test_gather_wants_one_flag_per_packet(engine: ModuleType) -> None:
    raw = (DATA / "orderbook.bin").read_bytes()
    with pytest.raises(ValueError, match="13 flags for 238 bytes"):
        engine.gather(raw, np.ones(13, bool))


@pytest.mark.parametrize(
    "bad_at", [[], [0], [1023, 1024], [4095, 4096, 9999], list(range(0, 10_000, 97))]
)
def test_decode_many_blocks(engine: ModuleType, bad_at: list[int]) -> None:
    # Past one block of packets (and the size where decoding drops the GIL), with
    # invalid packets at block edges: every valid packet kept, every invalid one listed.
    rng = np.random.default_rng(len(bad_at))
    n = 10_000
    packets = Packets(
        np.array([b"AAPL", b"MSFT", b"GE"], dtype="S4")[rng.integers(0, 3, n)],
        np.array([b"B", b"S"], dtype="S1")[rng.integers(0, 2, n)],
        rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32),
        rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32),
        np.arange(1, n + 1, dtype=np.int32),
    )
    raw = bytearray(engine.encode(packets))
    for i in bad_at:
        raw[17 * i + 4] = ord("X")
    good = np.ones(n, dtype=bool)
    good[bad_at] = False
    decoded = engine.decode(bytes(raw))
    assert decoded == packets[good]
    assert decoded.invalid.tolist() == [17 * i for i in bad_at]
    split = engine.Decoder()
    parts = [split.feed(bytes(raw[at : at + 70_001])) for at in range(0, len(raw), 70_001)]
    assert Packets.concat(parts) == packets[good]


def test_decode_non_contiguous_buffer(engine: ModuleType) -> None:
    raw = (DATA / "orderbook.bin").read_bytes()
    strided = np.frombuffer(raw, dtype=np.uint8).repeat(2)[::2]
    assert not strided.flags.c_contiguous
    assert engine.Decoder().feed(strided) == engine.decode(raw)
