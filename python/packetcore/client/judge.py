"""What a single copy of a packet can be judged by, and which packets rest on one copy.

The protocol carries no checksum: a packet received once, with a byte changed on the
way, decodes as a valid packet unless the byte made its symbol unprintable, its side
neither ``B`` nor ``S`` or its sequence out of order.  :class:`Judge` looks for what
such a byte leaves behind in a packet that is otherwise valid, over a whole batch at a
time (numpy, no Python per packet), and names the sequences to doubt
(:meth:`~packetcore.client.session.Session.doubt`: asked for again and voted on):

* a symbol outside the feed's alphabet as seen so far: one no other packet carried
  (a symbol is in the alphabet once two packets have carried it; the hint starts once
  :data:`ALPHABET_WARMUP` packets have shown the alphabet, and a feed of more than
  :data:`MAX_ALPHABET` symbols has no alphabet to judge by);
* a quantity or price far above the rest of the feed: its magnitude more than
  :data:`MAGNITUDE_MARGIN` binary orders above the 99th percentile of those seen so
  far (a changed high-order byte), or negative in a feed where under 1 % are.

What is left undetected: a changed low-order byte of a quantity or price (a value
close to the true one), a symbol changed into another one of the feed's alphabet, and
``B`` and ``S`` swapped.  Only a second copy can show those; :class:`CopyCount` counts
the packets that had one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..packets import Packets

__all__ = ["ALPHABET_WARMUP", "MAGNITUDE_MARGIN", "MAX_ALPHABET", "CopyCount", "Judge"]

#: Packets seen (this batch included) before a symbol no other packet carried is doubted.
ALPHABET_WARMUP = 256
#: Distinct symbols beyond which the symbol hint stops: the feed has no small alphabet.
MAX_ALPHABET = 4096
#: Binary orders of magnitude above the 99th percentile at which a value is doubted.
MAGNITUDE_MARGIN = 2
#: Values seen before the magnitude hint starts (its percentile needs some).
_MAGNITUDE_WARMUP = 64
_NEGATIVE = 32  # the histogram bin of negative values
# Fibonacci hashing of a symbol's 4 bytes into a table of 65,536 slots (256 KiB).
_HASH = np.uint32(2654435761)
_HASH_SHIFT = np.uint32(16)
_STRIDE = 8  # the magnitude histogram samples every eighth value of a large batch
_RUN = 16  # sequences of one batch in a chunk that open it, far from the others
_EMPTY = np.zeros(0, dtype=np.int32)


class _Magnitude:
    """The histogram of one column's bit lengths, and the values far above it.

    The histogram is drawn from a sample of each large batch (every eighth value); the
    test of each value is one comparison with the bound the histogram gives.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(_NEGATIVE + 1, dtype=np.int64)

    def far(self, values: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
        sample = values[::_STRIDE] if len(values) >= 32 * _STRIDE else values
        lengths = np.frexp(sample.astype(np.float64))[1]
        lengths[sample < 0] = _NEGATIVE
        counts = self.counts
        counts += np.bincount(lengths, minlength=_NEGATIVE + 1)
        total = int(counts.sum())
        if total < _MAGNITUDE_WARMUP:
            return np.zeros(len(values), dtype=bool)
        # The bit length that 99 % of the values do not exceed (negatives aside).
        below = np.cumsum(counts[:_NEGATIVE])
        typical = int(np.searchsorted(below, 0.99 * below[-1]))
        # Far: a bit length above typical + MAGNITUDE_MARGIN.
        bound = (1 << min(typical + MAGNITUDE_MARGIN, 31)) - 1
        far: npt.NDArray[np.bool_] = values > bound
        if counts[_NEGATIVE] * 100 < total:
            far |= values < 0
        return far


def _table(alphabet: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32] | None:
    """Return the alphabet as a table indexed by hash, or None if two share a slot."""
    slots = (alphabet * _HASH) >> _HASH_SHIFT
    if len(np.unique(slots)) < len(slots):
        return None  # the sorted alphabet is searched instead
    table = np.zeros(1 << (32 - int(_HASH_SHIFT)), dtype=np.uint32)  # 0: no symbol
    table[slots] = alphabet
    return table


class Judge:
    """Judge each single copy by what the feed so far looks like (see the module doc).

    Call it with every batch that reaches the store; it returns the sequences whose
    packet looks changed on the way.  Its notion of the feed grows with what it sees.
    """

    def __init__(self) -> None:
        #: Symbols (4 bytes read as one number) two packets or more have carried.
        self._alphabet = np.zeros(0, dtype=np.uint32)
        #: Symbols carried by one packet so far.
        self._once: set[int] = set()
        self._seen = 0
        #: The alphabet by hash (None while two of its symbols share a slot).
        self._table: npt.NDArray[np.uint32] | None = None
        #: Whether symbols are judged (not in a feed of too many symbols).
        self._symbols = True
        self._quantity = _Magnitude()
        self._price = _Magnitude()

    def __call__(self, batch: Packets) -> npt.NDArray[np.int32]:
        """Return the sequences of ``batch`` whose packet is in doubt, ascending."""
        if not len(batch):
            return _EMPTY
        doubted = self._quantity.far(batch.quantity) | self._price.far(batch.price)
        if self._symbols:
            strange = self._strange_symbols(batch.symbol)
            if self._seen + len(batch) >= ALPHABET_WARMUP:
                doubted |= strange
        self._seen += len(batch)
        if not doubted.any():
            return _EMPTY
        return np.unique(batch.sequence[doubted])

    def _strange_symbols(self, symbols: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_]:
        codes = np.ascontiguousarray(symbols, dtype="S4").view(np.uint32)
        alphabet = self._alphabet
        unknown: npt.NDArray[np.bool_]
        if self._table is not None:
            # A hash table of the alphabet: a gather and a compare, no branch per packet.
            unknown = self._table[(codes * _HASH) >> _HASH_SHIFT] != codes
        elif len(alphabet):
            at = np.minimum(np.searchsorted(alphabet, codes), len(alphabet) - 1)
            unknown = alphabet[at] != codes
        else:
            unknown = np.ones(len(codes), dtype=bool)
        if not unknown.any():
            return unknown
        # The rare path: symbols not yet in the alphabet (the first batches, or changed).
        new, counts = np.unique(codes[unknown], return_counts=True)
        joined: list[int] = []
        for code, count in zip(new.tolist(), counts.tolist(), strict=True):
            if count > 1 or code in self._once:
                self._once.discard(code)
                joined.append(code)
            else:
                self._once.add(code)
        if joined:
            self._alphabet = np.union1d(alphabet, np.array(joined, dtype=np.uint32))
            self._table = _table(self._alphabet)
        if len(self._alphabet) + len(self._once) > MAX_ALPHABET:
            # So many symbols, most seen once: no alphabet to judge by (see __call__).
            self._symbols = False
            self._once.clear()
            return np.zeros(len(codes), dtype=bool)
        # Doubted: the packets whose symbol no other packet carried so far.
        alone = np.array(sorted(self._once), dtype=np.uint32)
        doubted: npt.NDArray[np.bool_] = unknown & np.isin(codes, alone)
        return doubted


class CopyCount:
    """Count the sequences that arrived in two copies or more while held.

    A second copy of a held packet is compared with it (copies that differ are a
    conflict, settled by vote), so a sequence seen twice rests on two copies.  One byte
    per sequence, in chunks of 65,536 sequences; a chunk the output has passed is
    folded into a count and freed.
    """

    _SHIFT = 16

    def __init__(self) -> None:
        self._chunks: dict[int, npt.NDArray[np.uint8]] = {}
        self._folded = 0
        self._floor = 0  # chunks below this one are folded
        #: Sequences confirmed by vote outside any chunk.
        self._apart: set[int] = set()

    def see(self, sequences: npt.NDArray[np.int32], low: int, high: int | None) -> None:
        """Count a copy of each of ``sequences`` in ``low..high`` (``None``: no bound).

        A chunk is opened only next to those opened already (or to ``low``) or for a
        run of packets: a sequence far ahead on its own (corrupted, or scattered across
        the sequence space) is not counted, and costs no memory.
        """
        keep = sequences >= max(low, self._floor << self._SHIFT)
        if high is not None:
            keep &= sequences <= high
        s = sequences[keep]
        if not len(s):
            return
        chunk_of = s >> self._SHIFT
        first, last = int(chunk_of.min()), int(chunk_of.max())
        parts = (
            [(first, s)]
            if first == last
            else [(int(c), s[chunk_of == c]) for c in np.unique(chunk_of).tolist()]
        )
        for c, part in parts:
            chunk = self._chunks.get(c)
            if chunk is None:
                near = c <= max(self._chunks, default=low >> self._SHIFT) + 1
                if not near and len(part) < _RUN:
                    continue
                chunk = self._chunks[c] = np.zeros(1 << self._SHIFT, dtype=np.uint8)
            at = part & ((1 << self._SHIFT) - 1)
            if len(at) > 1 and not (at[1:] > at[:-1]).all():
                at, times = np.unique(at, return_counts=True)
                chunk[at] = np.minimum(chunk[at] + np.minimum(times, 2), 2)
            else:
                chunk[at] = np.minimum(chunk[at] + 1, 2)
        self._fold(low)

    def _fold(self, low: int) -> None:
        floor = low >> self._SHIFT
        if floor <= self._floor:
            return
        for c in [c for c in self._chunks if c < floor]:
            self._folded += int(np.count_nonzero(self._chunks.pop(c) == 2))
        self._floor = floor

    def twice(self, sequence: int) -> bool:
        """Return whether ``sequence`` arrived in two copies or more while held."""
        chunk = self._chunks.get(sequence >> self._SHIFT)
        if chunk is None:
            return sequence in self._apart
        return bool(chunk[sequence & ((1 << self._SHIFT) - 1)] == 2)

    def confirm(self, sequences: npt.ArrayLike) -> None:
        """Count ``sequences`` as resting on two copies (a vote agreed on them)."""
        self._set(sequences, 2)

    def forget(self, sequences: npt.ArrayLike) -> None:
        """Count ``sequences`` as never seen (left out of the output)."""
        self._set(sequences, 0)

    def _set(self, sequences: npt.ArrayLike, value: int) -> None:
        # Per sequence: only those settled by vote (a few, bounded by the doubts).
        for s in np.asarray(sequences, dtype=np.int64).tolist():
            chunk = self._chunks.get(s >> self._SHIFT)
            if chunk is not None:
                chunk[s & ((1 << self._SHIFT) - 1)] = value
            elif value:
                self._apart.add(s)  # no chunk of its own: a scattered few
            else:
                self._apart.discard(s)

    def confirmed(self, up_to: int | None) -> int:
        """Return how many sequences up to ``up_to`` (``None``: all) rest on two copies."""
        total = self._folded + sum(1 for s in self._apart if up_to is None or s <= up_to)
        for c, chunk in self._chunks.items():
            if up_to is not None and c << self._SHIFT > up_to:
                continue
            if up_to is not None and (c + 1) << self._SHIFT > up_to + 1:
                chunk = chunk[: up_to + 1 - (c << self._SHIFT)]
            total += int(np.count_nonzero(chunk == 2))
        return total
