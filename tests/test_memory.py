"""Memory follows the data: what loading and serving a feed cost, counted by tracemalloc.

tracemalloc counts numpy's buffers as they are allocated and freed, whatever the
allocator then keeps: these bounds are the program's, not the machine's.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from packetcore.io.feeds import synthetic
from packetcore.packets import Packets
from packetcore.server.wire_index import WireIndex

from packetcore import decode


# The compiled engine's encode: the twin's builds a Python row a packet on the way.
@pytest.mark.c_extension
@pytest.mark.parametrize("shuffled", [False, True])
def test_a_wire_index_costs_its_wire_bytes_and_keeps_no_columns(shuffled: bool) -> None:
    # A served feed is its wire bytes: the loaded columns are not kept beside them, and
    # checking the order costs a byte a packet, not two 8-byte indexes (argsort, arange).
    count = 500_000
    wire = 17 * count
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        feed = synthetic(count, seed=1)
        if shuffled:
            feed = feed[np.random.default_rng(1).permutation(count)]
        loaded = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        index = WireIndex(feed)
        peak = tracemalloc.get_traced_memory()[1]
        del feed
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert index.count == count and bytes(index.rows(0, 1)) == bytes(index.rows(0, 1))
    assert decode(index.rows(count - 1, count)).sequence.tolist() == [count]
    # Sorting a shuffled feed needs its sorted copy (17 B) and the order (8 B) on the way.
    allowed = (1.3 if not shuffled else 2.9) * wire
    assert peak - loaded < allowed, f"{(peak - loaded) / count:.1f} B a packet on the way"
    assert kept - start < 1.2 * wire, f"{(kept - start) / count:.1f} B a packet kept"


def test_concat_of_an_iterator_keeps_no_batch_beside_the_result() -> None:
    # A file read block by block (read(), load_feed): the peak is the packets once and a
    # column more, not the blocks and their copy.
    blocks, size = 40, 25_000
    total = 17 * blocks * size

    def batches() -> Iterator[Packets]:
        for number in range(blocks):
            batch = synthetic(size, seed=number)
            yield Packets(batch.symbol, batch.buysellindicator, batch.quantity, batch.price,
                          batch.sequence + number * size)  # fmt: skip

    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        joined = Packets.concat(batches())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(joined) == blocks * size
    assert np.array_equal(joined.sequence, np.arange(1, blocks * size + 1))
    assert peak - start < 1.5 * total, f"{(peak - start) / total:.2f} times the packets"
