"""What a single copy is judged by (packetcore.client.judge), and the count of second copies."""

from __future__ import annotations

import numpy as np
from packetcore.client.judge import (
    ALPHABET_MIN,
    ALPHABET_SHARE,
    ALPHABET_WARMUP,
    MAX_ALPHABET,
    CopyCount,
    Judge,
)
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
    # Distinct symbols of four letters each: AAAA, AAAB, ...
    digits = np.arange(count)[:, None] // 26 ** np.arange(3, -1, -1) % 26
    symbols = (digits + ord("A")).astype(np.uint8).view("S4").ravel()
    feed = Packets(
        symbols, np.full(count, b"B"), np.full(count, 5), np.full(count, 7),
        np.arange(1, count + 1),
    )  # fmt: skip
    doubted = sum(len(judge(feed[i : i + 1000])) for i in range(0, count, 1000))
    assert doubted <= MAX_ALPHABET
    # The symbol rule still holds: an unprintable symbol is doubted.
    assert judge(_changed(feed[:1000], 500, symbol=b"A\x01")).tolist() == [501]


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


def _corrupted_symbols(feed: Packets, rate: float, seed: int) -> np.ndarray:
    """Change one byte of ``rate`` of the symbols as the proxy does (XOR 1..255)."""
    rng = np.random.default_rng(seed)
    hit = np.flatnonzero(rng.random(len(feed)) < rate)
    raw = np.ascontiguousarray(feed.symbol, dtype="S4").view(np.uint8).reshape(-1, 4)
    raw[hit, rng.integers(0, 4, len(hit))] ^= rng.integers(1, 256, len(hit)).astype(np.uint8)
    return hit


def test_recurring_corrupted_symbols_never_join_a_long_feed_s_alphabet() -> None:
    # Three million packets through a proxy corrupting 0.2 % of them, a byte each: 4 bytes
    # in 17 are the symbol's, so ~1,400 changed symbols over the ~16,000 one-byte changes
    # of 16 symbols, and the same ones recur (that is what admitted them at two packets).
    count, batch = 3_000_000, 4096
    feed = synthetic(count, seed=44)
    clean = feed.symbol.copy()
    hit = _corrupted_symbols(feed, 0.002 * 4 / 17, seed=45)
    changed = hit[feed.symbol[hit] != clean[hit]]
    _, recurring = np.unique(feed.symbol[changed], return_counts=True)
    assert recurring.max() >= 3  # the birthday effect, in this very stream
    # A rare symbol of the feed's own: five packets in three million.
    rare = np.array([100_000, 900_000, 1_500_000, 2_000_000, 2_500_000])
    feed.symbol[rare] = b"ZZZ"
    judge = Judge()
    doubted = np.concatenate([judge(feed[i : i + batch]) for i in range(0, count, batch)])
    assert set((changed + 1).tolist()) <= set(doubted.tolist())  # none admitted
    assert set(doubted.tolist()) == set((changed + 1).tolist()) | set((rare + 1).tolist())
    assert set(judge.alphabet) == set(np.unique(clean).tolist())
    # The copy asked for again of a ZZZ packet confirms the symbol: no more doubt.
    assert judge(feed[rare[1] : rare[1] + 1]).tolist() == []
    assert b"ZZZ" in judge.alphabet
    again = feed[rare[4] : rare[4] + 1]
    assert judge(Packets(again.symbol, again.buysellindicator, again.quantity, again.price,
                         again.sequence + 1)).tolist() == []  # fmt: skip


def test_a_rare_symbol_is_doubted_until_enough_packets_carried_it() -> None:
    # One packet in 5,000 from the millionth on: 2e-4 of the feed, above the share.
    count, batch = 2_000_000, 4096
    feed = synthetic(count, seed=46)
    rare = np.arange(1_000_000, count, 5000)
    feed.symbol[rare] = b"NEW"
    judge = Judge()
    doubted = np.concatenate([judge(feed[i : i + batch]) for i in range(0, count, batch)])
    # Doubted while fewer than max(3, 1e-5 x packets seen) carried it, then admitted.
    needed = int(np.ceil(ALPHABET_SHARE * rare[-1]))
    assert ALPHABET_MIN <= len(doubted) <= needed
    assert doubted.tolist() == (rare[: len(doubted)] + 1).tolist()
    assert b"NEW" in judge.alphabet


def test_a_symbol_that_breaks_the_rule_is_always_doubted() -> None:
    judge = Judge()
    feed = _changed(synthetic(5000, seed=7), 3000, symbol=b"A\x00B")
    feed = _changed(feed, 3001, symbol=b"A\x01")
    feed = _changed(feed, 3002, symbol=b"A\x00B")  # twice: still no symbol
    assert judge(feed).tolist() == [3001, 3002, 3003]


def test_a_quantity_four_times_the_99th_percentile_is_doubted() -> None:
    # Quantities 1..10,000 (99th percentile 9,900): a changed third byte gives 0..65,535;
    # 40,000 and above are doubted, as the README says ("about four times").
    judge = Judge()
    feed = synthetic(50_000, seed=8)
    for at, value in [(30_000, 40_000), (30_001, 52_000), (30_002, 65_535), (30_003, 30_000)]:
        feed = _changed(feed, at, quantity=value)
    # Prices 1..1,000,000: the bound lies within 3 % below four times 990,000.
    feed = _changed(feed, 30_004, price=3_999_000)
    feed = _changed(feed, 30_005, price=3_960_000)  # 4 times: a doubt
    feed = _changed(feed, 30_006, price=3_800_000)  # 3.8 times: not
    assert judge(feed[:20_000]).tolist() == []
    # Sequences are indices + 1.
    assert judge(feed[20_000:]).tolist() == [30_001, 30_002, 30_003, 30_005, 30_006]
