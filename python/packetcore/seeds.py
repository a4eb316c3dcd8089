"""Every seeded random stream of packetcore, from one table.

A seed S (None: fresh entropy, decided once per :class:`Streams`) stands for a family of
independent streams, each ``SeedSequence(S, spawn_key=(kind, number))`` with ``kind``
from the table below and ``number`` counted from 0.  No two streams of one seed share a
key, so none is drawn from another, even where one command seeds several models (the
server's loss, its faults, its live feed) with the same ``--seed``.

====  =================  =========================================================
kind  :class:`Kind`      one stream per
====  =================  =========================================================
0     ``STREAM_ALL``     stream-all request, counted over the server's life
1     ``RESENDS``        connection (accept order): the resends it gets dropped
2     ``FAULTS``         connection (accept order): its random faults, server or proxy
3     ``FEED_BLOCKS``    block of a synthetic live feed
4     ``SUBSCRIPTIONS``  subscription (callType 5): its drop mask
5     ``SCENARIOS``      scenario of a check (keyed by its name and draw): its seed
====  =================  =========================================================

A connection's faults are split further by :func:`split`: one generator per kind of
draw (loss, bursts, duplicates, ...), seeded in turn from its ``FAULTS`` stream, which
then gives the delivery's jitter.  A synthetic feed file (``synthetic:N``) draws from
``SeedSequence(S)`` itself (:meth:`Streams.root`), which no spawned stream equals.

A kind is never renumbered and a new one takes the next number: a seeded run repeats
the same drops and faults from one version to the next.  (Subscriptions once drew
from kind 2, the faults' own: a connection's faults repeated its drop mask.)
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Kind", "Streams", "split"]


class Kind(enum.IntEnum):
    """The kinds of seeded stream: the first element of each stream's spawn key."""

    STREAM_ALL = 0
    RESENDS = 1
    FAULTS = 2
    FEED_BLOCKS = 3
    SUBSCRIPTIONS = 4
    SCENARIOS = 5


class Streams:
    """The random streams of one seed: ``streams.for_(Kind.FAULTS, 3)``."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        entropy = np.random.SeedSequence(seed).entropy
        assert isinstance(entropy, int)
        #: The seed, or the fresh entropy that stands in for it.
        self.entropy: int = entropy

    def for_(self, kind: Kind, number: int) -> np.random.Generator:
        """Return a new generator of stream ``number`` of ``kind``, at its start."""
        sequence = np.random.SeedSequence(self.entropy, spawn_key=(Kind(kind), number))
        return np.random.Generator(np.random.PCG64(sequence))

    def root(self) -> np.random.Generator:
        """Return a new generator of the seed itself (``numpy.random.default_rng(seed)``)."""
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.entropy)))

    def __repr__(self) -> str:
        return f"<Streams seed={self.seed} entropy={self.entropy}>"


def split(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    """Return ``count`` generators seeded in turn from ``rng`` (which moves on ``count`` draws).

    Each is the same whatever is later drawn from the others: a shaper's losses do not
    move when its duplicates draw more.
    """
    return [np.random.default_rng(int(v)) for v in rng.integers(0, 1 << 62, count)]
