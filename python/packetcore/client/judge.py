"""What a single copy of a packet can be judged by, and which packets rest on one copy.

The protocol carries no checksum: a packet received once, with a byte changed on the
way, decodes as a valid packet unless the byte made its symbol unprintable, its side
neither ``B`` nor ``S`` or its sequence out of order.  :class:`Judge` looks for what
such a byte leaves behind in a packet that is otherwise valid, over a whole batch at a
time (numpy, no Python per packet), and names the sequences to doubt
(:meth:`~packetcore.client.session.Session.doubt`: asked for again and voted on):

* a symbol outside the feed's alphabet as seen so far, or one that breaks the symbol
  rule (``packetcore.engine.valid_symbols``).  A symbol joins the alphabet once
  :data:`ALPHABET_MIN` packets carried it and they are a share of
  :data:`ALPHABET_SHARE` of the packets seen (10 in a million seen, 30 in three
  million), or once a second copy of a sequence carried it too (the copy asked for
  again of a packet doubted).  Over millions of packets the same corrupted symbol
  recurs (there are only so many one-byte changes of a small alphabet's symbols): a
  count that grows with the feed keeps those out, while a rare symbol of the feed's
  own costs one copy asked for again.  The hint starts once :data:`ALPHABET_WARMUP`
  packets have shown the alphabet; a feed of more than :data:`MAX_ALPHABET` symbols,
  where symbols outside the alphabet are not rare, has no alphabet to judge by;
* a quantity or price far above the rest of the feed: :data:`MAGNITUDE_FACTOR` times
  the 99th percentile of those seen so far or more (a changed high-order byte; the
  percentile is read from a histogram of 32 bins an octave, rounded down, so the bound
  lies within 3 % below four times it), or negative in a feed where under 1 % are.

What is left undetected: a changed low-order byte of a quantity or price (a value
close to the true one), a symbol changed into another one of the feed's alphabet, and
``B`` and ``S`` swapped.  Only a second copy can show those; :class:`CopyCount` counts
the packets that had one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ..packets import Packets

__all__ = [
    "ALPHABET_MIN",
    "ALPHABET_SHARE",
    "ALPHABET_WARMUP",
    "MAGNITUDE_FACTOR",
    "MAX_ALPHABET",
    "CopyCount",
    "Judge",
]

#: Packets seen (this batch included) before a symbol outside the alphabet is doubted.
ALPHABET_WARMUP = 256
#: Packets that must carry a symbol before it joins the alphabet, at the least ...
ALPHABET_MIN = 3
#: ... and the share of the packets seen that they must be.
ALPHABET_SHARE = 1e-5
#: Distinct symbols beyond which the symbol hint stops: the feed has no small alphabet.
MAX_ALPHABET = 4096
#: How many times the 99th percentile a value must reach to be doubted.
MAGNITUDE_FACTOR = 4
#: Values seen before the magnitude hint starts (its percentile needs some).
_MAGNITUDE_WARMUP = 64
_SUBBINS = 32  # histogram bins an octave: the percentile is read within 1/32 octave
_NEGATIVE = 33 * _SUBBINS  # the histogram bin of negative values
# Fibonacci hashing of a symbol's 4 bytes into a table of 65,536 slots (256 KiB).
_HASH = np.uint32(2654435761)
_HASH_SHIFT = np.uint32(16)
_STRIDE = 8  # the magnitude histogram samples every eighth value of a large batch
_RUN = 16  # sequences of one batch in a chunk that open it, far from the others
#: Sightings (symbol, sequence) of symbols outside the alphabet kept to recognise a
#: second copy; beyond, those of the lowest sequences are forgotten (8 bytes each).
_MAX_SIGHTINGS = 1 << 16
#: Distinct symbols outside the alphabet beyond which the symbol hint stops (memory).
_MAX_CANDIDATES = 1 << 18
_EMPTY = np.zeros(0, dtype=np.int32)
_NO_CODES = np.zeros(0, dtype=np.uint32)
_NO_KEYS = np.zeros(0, dtype=np.uint64)


class _Magnitude:
    """The histogram of one column's magnitudes, and the values far above it.

    A value's bin is its bit length and the next five bits (32 bins an octave).  The
    histogram is drawn from a sample (every eighth value of a large batch, every eighth
    small batch whole); the test of each value is one comparison with the bound the
    histogram gives, read again from it as it grows by 1/64.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(_NEGATIVE + 1, dtype=np.int64)
        self._total = 0
        self._batches = 0
        self._bound = 0.0  # the bound, as the histogram gave it at _measured values
        self._measured = 0

    def far(self, values: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
        self._batches += 1
        if len(values) >= 32 * _STRIDE:
            self._sample(values[::_STRIDE])
        elif self._total < _MAGNITUDE_WARMUP or self._batches % _STRIDE == 0:
            # Small batches (a follow's, a hundred packets each at a high rate): every
            # eighth is sampled whole, as every eighth value of a large one.
            self._sample(values)
        total = self._total
        if total < _MAGNITUDE_WARMUP:
            return np.zeros(len(values), dtype=bool)
        if total - self._measured >= max(_MAGNITUDE_WARMUP, self._measured // 64):
            # The bound moves as the histogram does, slowly: it is read again once the
            # values grew by 1/64 (a follow hands on small batches at a high rate).
            self._bound = self._read_bound()
            self._measured = total
        bound = self._bound
        far: npt.NDArray[np.bool_] = values >= bound
        if self.counts[_NEGATIVE] * 100 < total:
            far |= values < 0
        return far

    def _sample(self, sample: npt.NDArray[np.int32]) -> None:
        """Count ``sample`` into the histogram."""
        mantissa, exponent = np.frexp(sample.astype(np.float64))
        # mantissa in [0.5, 1) (0 for 0): its first five bits below the leading one.
        bins = exponent * _SUBBINS + ((mantissa * 2 - 1) * _SUBBINS).astype(np.int64)
        bins[sample <= 0] = 0
        bins[sample < 0] = _NEGATIVE
        np.add.at(self.counts, bins, 1)
        self._total += len(bins)

    def _read_bound(self) -> float:
        """Return MAGNITUDE_FACTOR times the 99th percentile of the values (negatives aside)."""
        # The bin that 99 % of the values do not exceed, and its lower edge: the 99th
        # percentile, rounded down to 1/32 octave.
        below = np.cumsum(self.counts[:_NEGATIVE])
        typical = int(np.searchsorted(below, 0.99 * below[-1]))
        octave, step = divmod(typical, _SUBBINS)
        percentile = (_SUBBINS + step) * 2.0 ** (octave - 1) / _SUBBINS
        return min(MAGNITUDE_FACTOR * max(percentile, 1.0), 2.0**31)


def _table(alphabet: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32] | None:
    """Return the alphabet as a table indexed by hash, or None if two share a slot."""
    slots = (alphabet * _HASH) >> _HASH_SHIFT
    if len(np.unique(slots)) < len(slots):
        return None  # the sorted alphabet is searched instead
    table = np.zeros(1 << (32 - int(_HASH_SHIFT)), dtype=np.uint32)  # 0: no symbol
    table[slots] = alphabet
    return table


def _among(items: npt.NDArray[Any], ordered: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Return a mask of ``items`` found in the sorted array ``ordered``."""
    if not len(ordered):
        return np.zeros(len(items), dtype=bool)
    at = np.minimum(np.searchsorted(ordered, items), len(ordered) - 1)
    found: npt.NDArray[np.bool_] = ordered[at] == items
    return found


class Judge:
    """Judge each single copy by what the feed so far looks like (see the module doc).

    Call it with every batch that reaches the store; it returns the sequences whose
    packet looks changed on the way.  Its notion of the feed grows with what it sees.
    """

    def __init__(self) -> None:
        #: Symbols (4 bytes read as one number) admitted to the alphabet, sorted.
        self._alphabet = _NO_CODES
        #: Symbols outside the alphabet (sorted), and how many packets carried each.
        self._candidates = _NO_CODES
        self._counts = np.zeros(0, dtype=np.int64)
        #: (symbol << 32 | sequence) of the packets that carried them, sorted.
        self._sightings = _NO_KEYS
        self._seen = 0
        #: The alphabet by hash (None while two of its symbols share a slot).
        self._table: npt.NDArray[np.uint32] | None = None
        #: Whether symbols are judged (not in a feed of too many symbols).
        self._symbols = True
        self._quantity = _Magnitude()
        self._price = _Magnitude()

    @property
    def alphabet(self) -> list[bytes]:
        """Return the symbols admitted so far."""
        return [bytes(s) for s in self._alphabet.view("S4").tolist()]

    def __call__(self, batch: Packets) -> npt.NDArray[np.int32]:
        """Return the sequences of ``batch`` whose packet is in doubt, ascending."""
        if not len(batch):
            return _EMPTY
        doubted = self._quantity.far(batch.quantity) | self._price.far(batch.price)
        self._seen += len(batch)
        if self._symbols:
            doubted |= self._strange_symbols(batch.symbol, batch.sequence)
        if not self._symbols:  # no alphabet to judge by (or no longer): the rule still holds
            from ..engine import valid_symbols

            doubted |= ~valid_symbols(batch.symbol)
        if not doubted.any():
            return _EMPTY
        return np.unique(batch.sequence[doubted])

    def _strange_symbols(
        self, symbols: npt.NDArray[np.bytes_], sequences: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.bool_]:
        codes = np.ascontiguousarray(symbols, dtype="S4").view(np.uint32)
        unknown: npt.NDArray[np.bool_]
        if self._table is not None:
            # A hash table of the alphabet: a gather and a compare, no branch per packet.
            unknown = self._table[(codes * _HASH) >> _HASH_SHIFT] != codes
            unknown |= codes == 0  # an empty symbol matches the table's empty slots
        else:
            unknown = ~_among(codes, self._alphabet)
        if not unknown.any():
            return unknown
        # The rare path: symbols outside the alphabet (the first batches, or changed).
        at = np.flatnonzero(unknown)
        doubted = self._outside(codes[at], sequences[at])
        if not self._symbols:
            return np.zeros(len(codes), dtype=bool)
        unknown[at] = doubted
        return unknown

    def _outside(
        self, codes: npt.NDArray[np.uint32], sequences: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.bool_]:
        """Count the packets of symbols outside the alphabet; return those to doubt."""
        from ..engine import valid_symbols

        valid = valid_symbols(codes.view("S4"))
        keys = codes.astype(np.uint64) << np.uint64(32) | sequences.astype(np.uint32)
        # A second copy of a sequence that carried the symbol before confirms it.
        unique_keys, copies = np.unique(keys[valid], return_counts=True)
        twice = _among(unique_keys, self._sightings) | (copies > 1)
        fresh = unique_keys[~_among(unique_keys, self._sightings)]
        key_codes = (unique_keys >> np.uint64(32)).astype(np.uint32)
        confirmed = np.unique(key_codes[twice])
        # Packets (distinct sequences) that carried each symbol, so far.
        new, counts = np.unique((fresh >> np.uint64(32)).astype(np.uint32), return_counts=True)
        known = _among(new, self._candidates)
        where = np.searchsorted(self._candidates, new)
        totals = counts.copy()
        totals[known] += self._counts[where[known]]
        needed = max(ALPHABET_MIN, ALPHABET_SHARE * self._seen)
        joined = np.union1d(new[totals >= needed], confirmed)
        # The candidates' counts and sightings, updated; those joined leave them.
        self._counts[where[known]] += counts[known]
        self._candidates = np.insert(self._candidates, where[~known], new[~known])
        self._counts = np.insert(self._counts, where[~known], counts[~known])
        self._sightings = np.insert(self._sightings, np.searchsorted(self._sightings, fresh), fresh)
        if len(joined):
            self._alphabet = np.union1d(self._alphabet, joined)
            self._table = _table(self._alphabet)
            stay = ~_among(self._candidates, joined)
            self._candidates, self._counts = self._candidates[stay], self._counts[stay]
            sighted = (self._sightings >> np.uint64(32)).astype(np.uint32)
            self._sightings = self._sightings[~_among(sighted, joined)]
        if len(self._sightings) > _MAX_SIGHTINGS:
            # The lowest sequences' sightings go: their copies asked for came long ago.
            low = (self._sightings & np.uint64(0xFFFFFFFF)).astype(np.int64)
            cut = np.partition(low, len(low) // 2)[len(low) // 2]
            self._sightings = self._sightings[low >= cut]
        many = len(self._alphabet) + len(self._candidates) > MAX_ALPHABET
        if (
            len(self._alphabet) > MAX_ALPHABET
            or len(self._candidates) > _MAX_CANDIDATES
            or (many and len(self._sightings) * 100 > self._seen)
        ):
            # So many symbols, and not rare: no alphabet to judge by (see __call__).
            self._symbols = False
            self._candidates, self._counts, self._sightings = _NO_CODES, self._counts[:0], _NO_KEYS
            return np.zeros(len(codes), dtype=bool)
        if self._seen < ALPHABET_WARMUP:
            return ~valid
        # Doubted: the packets whose symbol breaks the rule or stays outside the alphabet.
        doubted: npt.NDArray[np.bool_] = ~valid | ~_among(codes, self._alphabet)
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
