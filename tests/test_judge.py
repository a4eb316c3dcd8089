"""What a single copy is judged by (packetcore.client.judge), and the count of second copies."""

from __future__ import annotations

import numpy as np
from packetcore.client.judge import ALPHABET_WARMUP, MAX_ALPHABET, CopyCount, Judge
from packetcore.io.feeds import synthetic

from packetcore import Packets


def _changed(feed: Packets, at: int, **fields: object) -> Packets:
    columns = {
        "symbol": feed.symbol.copy(),
        "buysellindicator": feed.buysellindicator.copy(),
        "quantity": feed.quantity.copy(),
        "price": feed.price.copy(),
        "sequence": feed.sequence.copy(),
    }
    for name, value in fields.items():
        columns[name][at] = value
    return Packets(**columns)  # type: ignore[arg-type]


def test_a_clean_feed_has_nothing_in_doubt() -> None:
    judge = Judge()
    feed = synthetic(50_000, seed=1)
    doubted = [judge(feed[i : i + 4000]) for i in range(0, len(feed), 4000)]
    assert sum(len(d) for d in doubted) == 0


def test_a_symbol_no_other_packet_carries_is_doubted() -> None:
    judge = Judge()
    feed = _changed(synthetic(5000, seed=2), 3000, symbol=b"@APL")
    assert judge(feed[:2000]).tolist() == []
    assert judge(feed[2000:]).tolist() == [3001]


def test_symbols_are_judged_only_once_the_alphabet_is_shown() -> None:
    # A small first batch (a short slice) has symbols seen once that are the feed's own.
    judge = Judge()
    feed = synthetic(ALPHABET_WARMUP - 1, seed=3)
    assert judge(feed).tolist() == []


def test_a_feed_of_too_many_symbols_is_not_judged_by_them() -> None:
    judge = Judge()
    count = 3 * MAX_ALPHABET
    codes = np.arange(count, dtype=np.uint32) + 0x41414141
    feed = Packets(
        codes.view("S4"), np.full(count, b"B"), np.full(count, 5), np.full(count, 7),
        np.arange(1, count + 1),
    )  # fmt: skip
    doubted = sum(len(judge(feed[i : i + 1000])) for i in range(0, count, 1000))
    assert doubted <= MAX_ALPHABET


def test_a_quantity_or_price_far_above_the_rest_is_doubted() -> None:
    judge = Judge()
    feed = synthetic(5000, seed=4)
    feed = _changed(feed, 2500, quantity=int(feed.quantity[2500]) | 1 << 24)
    feed = _changed(feed, 2600, price=-int(feed.price[2600]))
    feed = _changed(feed, 2700, price=int(feed.price[2700]) ^ 1)  # a low byte: unseen
    assert judge(feed).tolist() == [2501, 2601]


def test_copies_count_the_sequences_seen_twice_while_held() -> None:
    copies = CopyCount()
    copies.see(np.arange(1, 101, dtype=np.int32), 1, 100)
    copies.see(np.array([5, 5, 7, 200], dtype=np.int32), 1, 100)  # 200 is out of range
    assert copies.confirmed(100) == 2 and copies.twice(5) and not copies.twice(6)
    copies.see(np.array([3], dtype=np.int32), 10, 100)  # taken already: not compared
    assert not copies.twice(3)
    copies.confirm([8])
    copies.forget([5])
    assert copies.confirmed(100) == 2 and copies.confirmed(6) == 0
    # Far beyond what is held, without a known end: a corrupted sequence, not counted.
    copies.see(np.array([1_000_000_000] * 2, dtype=np.int32), 1, None)
    assert copies.confirmed(None) == 2
