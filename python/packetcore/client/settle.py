"""Packets in doubt: asked for again until two copies agree, or left out.

A packet is in doubt when two copies of its sequence differed (a conflict), it came
out of order on its connection (``Link._check_order``), or its one copy looks changed
on the way (:class:`~packetcore.client.judge.Judge`): one copy may carry a corrupted byte, and
the first arrival is not more likely right than a later one.  A held packet that two
identical copies brought, and no differing one, counts as agreed on already.  The protocol
has no checksum, so a vote decides: the payload at least two copies agree on, more
than on any other, is kept (:meth:`PacketStore.replace`); a sequence no two copies
agree on is left out (:meth:`PacketStore.discard`) and reported missing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import numpy as np

from ..engine import MAX_SEQUENCE
from ..packets import Packets
from .session import Session

__all__ = ["Copies", "settle"]

log = logging.getLogger("packetcore.fetch")

# One packet's payload: symbol, side, quantity, price.
_Row = tuple[bytes, bytes, int, int]
#: Fetch fresh copies of the sequences named (each on a new connection).
Copies = Callable[[list[int]], Awaitable[list[Packets]]]


def _rows(packets: Packets) -> list[tuple[int, _Row]]:
    """Return ``(sequence, payload)`` for each packet."""
    return [(row[4], row[:4]) for row in packets.rows()]


def _agreed(votes: dict[_Row, int]) -> _Row | None:
    """Return the payload at least two copies agree on, more than on any other."""
    ranked = sorted(votes.values(), reverse=True)
    if not ranked or ranked[0] < 2 or (len(ranked) > 1 and ranked[1] == ranked[0]):
        return None
    return max(votes, key=votes.__getitem__)


async def settle(
    session: Session, copies: Copies, *, below: int | None = None, level: int = logging.INFO
) -> list[int]:
    """Settle every held packet in doubt; return the sequences left out, ascending.

    Copies are fetched until ``retries + 1`` attempts in a row bring none, or
    ``max_passes`` attempts were made.  ``below``: only the doubts below this sequence
    (a follow settles those that hold its prefix back).  ``level``: of the log lines.
    """
    store = session.store
    cursor = store.cursor
    top = below if below is not None else MAX_SEQUENCE + 1
    conflicting = store.conflicting()
    conflicting = conflicting[(conflicting.sequence >= cursor) & (conflicting.sequence < top)]
    doubts = sorted(
        s
        for s in session.doubts | set(conflicting.sequence.tolist())
        if cursor <= s < top and s in store
    )
    session.trust(doubts)
    if not doubts:
        return []
    votes: dict[int, dict[_Row, int]] = {s: {} for s in doubts}
    held = store.peek(np.array(doubts, dtype=np.int64))
    # A held packet that two identical copies brought (none differing) is agreed on.
    differed = set(conflicting.sequence.tolist())
    for sequence, row in _rows(held):
        twice = sequence not in differed and session.copies.twice(sequence)
        votes[sequence][row] = 2 if twice else 1
    for sequence, row in _rows(conflicting):
        if sequence in votes:
            votes[sequence][row] = votes[sequence].get(row, 0) + 1
    options = session.options
    fruitless = options.retry()  # attempts in a row that brought no copy
    for _ in range(options.max_passes):
        wanted = [s for s, tally in votes.items() if _agreed(tally) is None]
        if not wanted or fruitless.exhausted:
            break
        await fruitless.pause()
        log.log(level, "asking again for %d packet(s) in doubt", len(wanted))
        batches = await copies(wanted)
        got = 0
        for batch in batches:
            for sequence, row in _rows(batch):
                tally = votes.get(sequence)
                if tally is not None and _agreed(tally) is None:
                    tally[row] = tally.get(row, 0) + 1
                    got += 1
        if got:
            fruitless.succeeded()
        else:
            fruitless.fail()
    agreed: list[tuple[int, _Row]] = []
    unsettled: list[int] = []
    for sequence, tally in votes.items():
        verdict = _agreed(tally)
        if verdict is None:
            unsettled.append(sequence)
            log.log(
                logging.WARNING if level >= logging.INFO else level,
                "packet %d: in doubt, and no two copies agree; left out", sequence,
            )  # fmt: skip
        else:
            agreed.append((sequence, verdict))
    if agreed:
        columns = list(zip(*((*row, s) for s, row in agreed), strict=True))
        store.replace(Packets(*columns))
        session.copies.confirm([s for s, _ in agreed])
    if unsettled:
        store.discard(np.array(unsettled, dtype=np.int64))
        session.copies.forget(unsettled)
    return unsettled
