# GapTracker: one bit per sequence.  Included by _engine.pyx.

# Words for 2**31 - 1 sequences: the bitmap never grows past this.
cdef Py_ssize_t _MAX_WORDS = ((2**31 - 1) + 63) >> 6


cdef enum:
    # What marking one sequence found.
    _NEW = 0
    _DUPLICATE = 1
    _OUT_OF_RANGE = 2


cdef inline long long _limit(GapTracker t) noexcept:
    # The highest bit index in range: up to last when known, else up to MAX_SEQUENCE.
    return (t._fixed if t._fixed >= 0 else _MAX_SEQUENCE) - t._first


cdef inline int _mark(GapTracker t, long long sequence) except -1:
    # Mark one sequence seen and count it, as add((sequence,)) does.
    cdef long long i
    cdef uint64_t bit
    if sequence < t._first or sequence - t._first > _limit(t):
        t.out_of_range += 1
        return _OUT_OF_RANGE
    i = sequence - t._first
    if i >= t._nwords * 64:
        t._reserve(i + 1)
    bit = (<uint64_t>1) << (i & 63)
    if t._words[i >> 6] & bit:
        t.duplicates += 1
        return _DUPLICATE
    t._words[i >> 6] |= bit
    t.received += 1
    if sequence > t._highest:
        t._highest = sequence
    return _NEW


cdef inline Py_ssize_t _next_zero(
    const uint64_t *words, Py_ssize_t nwords, Py_ssize_t pos, Py_ssize_t end
) noexcept nogil:
    # Index of the first clear bit at or after pos, or end; bits past the words are clear.
    cdef Py_ssize_t w = pos >> 6
    cdef uint64_t word
    if w >= nwords:
        return pos if pos < end else end
    word = ~words[w] & (~(<uint64_t>0) << (pos & 63))
    while word == 0:
        w += 1
        if (w << 6) >= end:
            return end
        if w >= nwords:
            return w << 6
        word = ~words[w]
    pos = (w << 6) + pc_ctz64(word)
    return pos if pos < end else end


cdef inline Py_ssize_t _next_one(
    const uint64_t *words, Py_ssize_t nwords, Py_ssize_t pos, Py_ssize_t end
) noexcept nogil:
    # Index of the first set bit at or after pos, or end.
    cdef Py_ssize_t w = pos >> 6
    cdef uint64_t word
    if w >= nwords:
        return end
    word = words[w] & (~(<uint64_t>0) << (pos & 63))
    while word == 0:
        w += 1
        if w >= nwords or (w << 6) >= end:
            return end
        word = words[w]
    pos = (w << 6) + pc_ctz64(word)
    return pos if pos < end else end


cdef inline uint64_t _low_bits(Py_ssize_t n) noexcept nogil:
    # A mask of the n lowest bits, 0 <= n <= 64.
    return ~(<uint64_t>0) if n >= 64 else ((<uint64_t>1) << n) - 1


cdef Py_ssize_t _count_ones(
    const uint64_t *words, Py_ssize_t nwords, Py_ssize_t end
) noexcept nogil:
    # Set bits below end.
    cdef Py_ssize_t w, full = end >> 6
    cdef Py_ssize_t n = 0
    if full > nwords:
        full = nwords
    for w in range(full):
        n += pc_popcount64(words[w])
    if full < nwords and (end & 63):
        n += pc_popcount64(words[full] & _low_bits(end & 63))
    return n


cdef Py_ssize_t _count_runs(
    const uint64_t *words, Py_ssize_t nwords, Py_ssize_t end
) noexcept nogil:
    # Runs of clear bits below end: a run starts at a clear bit whose predecessor is set
    # (bit -1 counts as set).
    cdef Py_ssize_t w, nw = (end + 63) >> 6
    cdef Py_ssize_t n = 0
    cdef uint64_t word, carry = 1
    for w in range(nw):
        word = words[w] if w < nwords else 0
        n += pc_popcount64(~word & ((word << 1) | carry) & _low_bits(end - (w << 6)))
        carry = word >> 63
    return n


cdef class GapTracker:
    """A bitmap of the sequences seen, one bit per sequence from ``first`` to ``last``.

    ``last`` may be unknown (``None``) at first: the bitmap then grows with the
    highest sequence seen, and ``last`` reads as that until it is set.
    """

    def __cinit__(self):
        self._words = NULL
        self._nwords = 0

    def __dealloc__(self):
        free(self._words)

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        first = integer(first, "first")
        if not 1 <= first <= MAX_SEQUENCE:
            raise ValueError(f"first must be in 1..{MAX_SEQUENCE}, got {first}")
        self._first = first
        self._fixed = -1
        self._highest = 0
        free(self._words)
        self._words = NULL
        self._nwords = 0
        self.received = 0
        self.duplicates = 0
        self.out_of_range = 0
        if last is not None:
            self.last = last

    @property
    def first(self) -> int:
        """The lowest sequence of the feed."""
        return self._first

    @property
    def last(self) -> int | None:
        """The last sequence: as set, else the highest seen, else ``None``."""
        if self._fixed >= 0:
            return self._fixed
        return self._highest if self._highest else None

    @last.setter
    def last(self, value: int) -> None:
        value = integer(value, "last")
        if not self._first <= value <= MAX_SEQUENCE:
            raise ValueError(f"last must be in {self._first}..{MAX_SEQUENCE}, got {value}")
        if self._highest and value < self._highest:
            raise ValueError(f"last {value} is below sequence {self._highest}, already seen")
        self._reserve(value - self._first + 1)
        self._fixed = value

    @property
    def last_known(self) -> bool:
        """Whether ``last`` was set rather than inferred from the sequences seen."""
        return self._fixed >= 0

    @property
    def highest(self) -> int | None:
        """The highest sequence seen, or ``None``."""
        return self._highest if self._highest else None

    @property
    def complete(self) -> bool:
        """Whether ``last`` is known and every sequence up to it was seen."""
        return self._fixed >= 0 and self.received == self._fixed - self._first + 1

    cdef Py_ssize_t _nbits(self) noexcept:
        return self._nwords << 6

    cdef int _reserve(self, long long nbits) except -1:
        # Grow by doubling, so a feed whose last is unknown reallocates log(n) times.
        cdef Py_ssize_t size = (nbits + 63) >> 6
        cdef Py_ssize_t grown
        cdef uint64_t *words
        if size <= self._nwords:
            return 0
        grown = min(2 * self._nwords, _MAX_WORDS)
        if grown < size:
            grown = size
        if self._words == NULL:
            # calloc: pages of a large, mostly empty bitmap stay untouched.
            words = <uint64_t *>calloc(grown, sizeof(uint64_t))
        else:
            words = <uint64_t *>realloc(self._words, grown * sizeof(uint64_t))
            if words != NULL:
                memset(words + self._nwords, 0, (grown - self._nwords) * sizeof(uint64_t))
        if words == NULL:
            raise MemoryError()
        self._words = words
        self._nwords = grown
        return 0

    def __contains__(self, sequence: object) -> bool:
        if not isinstance(sequence, (int, np.integer)):
            return False
        value = int(sequence)
        if not self._first <= value <= MAX_SEQUENCE:
            return False
        cdef long long i = value - self._first
        return i < self._nbits() and (self._words[i >> 6] >> (i & 63)) & 1 == 1

    def __len__(self) -> int:
        return self.received

    def add(self, sequences) -> int:
        """Mark sequences seen; return how many were new."""
        values = sequence_array(sequences)
        cdef const int64_t *seq = <const int64_t *>_data(values)
        cdef Py_ssize_t n = len(values)
        cdef Py_ssize_t k
        cdef long long first = self._first
        cdef long long limit = _limit(self)
        cdef long long s, i, highest = self._highest
        cdef long long new = 0, duplicates = 0, out_of_range = 0
        cdef Py_ssize_t nbits = self._nbits()
        cdef uint64_t *words = self._words
        cdef uint64_t bit
        try:
            for k in range(n):
                s = seq[k]
                if s < first or s - first > limit:
                    out_of_range += 1
                    continue
                i = s - first
                if i >= nbits:
                    self._reserve(i + 1)
                    nbits = self._nbits()
                    words = self._words
                bit = (<uint64_t>1) << (i & 63)
                if words[i >> 6] & bit:
                    duplicates += 1
                else:
                    words[i >> 6] |= bit
                    new += 1
                    if s > highest:
                        highest = s
        finally:
            # Also on MemoryError: the counters match the bits set so far.
            if new:
                self._highest = highest
            self.received += new
            self.duplicates += duplicates
            self.out_of_range += out_of_range
        return new

    cdef Py_ssize_t _span(self):
        # Bits from first to last; 0 while last is unknown.
        cdef long long last = self._fixed if self._fixed >= 0 else self._highest
        return 0 if last == 0 else last - self._first + 1

    def missing(self) -> np.ndarray:
        """Return the sequences from ``first`` to ``last`` not seen, ascending."""
        cdef Py_ssize_t end = self._span()
        cdef Py_ssize_t count = end - _count_ones(self._words, self._nwords, end)
        out = np.empty(count, _INT64)
        cdef int64_t *p = <int64_t *>_data(out)
        cdef int64_t *stop = p + count
        cdef Py_ssize_t start, pos = 0
        cdef long long first = self._first
        with nogil:
            while p < stop:
                start = _next_zero(self._words, self._nwords, pos, end)
                pos = _next_one(self._words, self._nwords, start, end)
                while start < pos:
                    p[0] = first + start
                    p += 1
                    start += 1
        return out

    def missing_ranges(self) -> np.ndarray:
        """Return the missing runs as an ``(n, 2)`` array of ``(start, count)``."""
        cdef Py_ssize_t end = self._span()
        cdef Py_ssize_t runs = _count_runs(self._words, self._nwords, end)
        out = np.empty((runs, 2), _INT64)
        cdef int64_t *p = <int64_t *>_data(out)
        cdef Py_ssize_t r, start, pos = 0
        cdef long long first = self._first
        with nogil:
            for r in range(runs):
                start = _next_zero(self._words, self._nwords, pos, end)
                pos = _next_one(self._words, self._nwords, start, end)
                p[0] = first + start
                p[1] = pos - start
                p += 2
        return out

    def missing_count(self) -> int:
        """Return how many sequences from ``first`` to ``last`` were not seen."""
        return self._span() - self.received

