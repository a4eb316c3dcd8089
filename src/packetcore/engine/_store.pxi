# PacketStore: dense chunks ahead of the cursor, a sparse table for the rest, and take()
# to hand out the complete prefix and free it.  Included by _engine.pyx.

# The dense window ahead of the cursor: max(_MIN_WINDOW, 2 * pending), in whole chunks.
cdef long long _MIN_WINDOW = 1 << 23
# A chunk inside the window is allocated once this many of its packets wait in the
# sparse table: a random-bytes server never makes chunks, an in-order feed does at once.
cdef long long _PROMOTE = 1024
cdef int _MIN_TABLE_BITS = 10
cdef Py_ssize_t _MAX_CHUNKS = 1 << 15
# Bytes per sparse slot: key int32, symbol u32, side u8, quantity i32, price i32.
cdef Py_ssize_t _SLOT_BYTES = 17


cdef inline bytes _stripped(const unsigned char *p, Py_ssize_t width):
    # A fixed-width field as numpy's tolist() gives it: trailing NULs dropped.
    while width > 0 and p[width - 1] == 0:
        width -= 1
    return PyBytes_FromStringAndSize(<const char *>p, width)


cdef object _batch(list rows):
    # Build a batch from (symbol, side, quantity, price, sequence) rows (the rare paths).
    columns = [list(column) for column in zip(*rows)] if rows else [[], [], [], [], []]
    return _from_columns(
        np.array(columns[0], dtype=_S4),
        np.array(columns[1], dtype=_S1),
        np.array(columns[2], dtype=_INT32),
        np.array(columns[3], dtype=_INT32),
        np.array(columns[4], dtype=_INT32),
        np.empty(0, _INT64),
    )


cdef inline Py_ssize_t _home(long long key, int bits) noexcept nogil:
    # Fibonacci hashing: consecutive sequences spread over the table.
    return <Py_ssize_t>((<uint32_t>key * <uint32_t>2654435761U) >> (32 - bits))


cdef inline long long _ones_between(const uint64_t *words, Py_ssize_t a, Py_ssize_t b) noexcept:
    # Set bits in a..b-1 of one chunk's bitmap.
    return _count_ones(words, _CHUNK_WORDS, b) - _count_ones(words, _CHUNK_WORDS, a)


cdef inline void _clear_between(uint64_t *words, Py_ssize_t a, Py_ssize_t b) noexcept:
    cdef Py_ssize_t w
    if a >= b:
        return
    if (a >> 6) == ((b - 1) >> 6):
        words[a >> 6] &= ~(_low_bits(b - (a & ~63)) & ~_low_bits(a & 63))
        return
    words[a >> 6] &= _low_bits(a & 63)
    for w in range((a >> 6) + 1, (b - 1) >> 6):
        words[w] = 0
    words[(b - 1) >> 6] &= ~_low_bits(b - ((b - 1) & ~63))


cdef class PacketStore:
    """Put packets arriving in any order into sequence order, without sorting.

    The first arrival of a sequence wins; a later one with the same payload counts as a
    duplicate, one with a different payload as a conflict and is kept for the report
    (:meth:`conflicting`).  :meth:`take` hands out the packets below a sequence and
    forgets them, so memory follows the packets held, not the span of sequences seen.
    """

    def __cinit__(self):
        self._chunks = NULL
        self._waiting = NULL
        self._nchunks = 0
        self._allocated = 0
        self._keys = NULL
        self._symbol = NULL
        self._side = NULL
        self._quantity = NULL
        self._price = NULL
        self._bits = 0
        self._used = 0
        self._skipped = NULL
        self._nskipped = 0
        self._skipcap = 0
        self._discarded = set()
        self._conflicting = []

    def __dealloc__(self):
        cdef Py_ssize_t c
        if self._chunks != NULL:
            for c in range(self._nchunks):
                free(self._chunks[c])
        free(self._chunks)
        free(self._waiting)
        free(self._keys)
        free(self._symbol)
        free(self._side)
        free(self._quantity)
        free(self._price)
        free(self._skipped)

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        first = integer(first, "first")
        if last is not None:
            last = integer(last, "last")
        if not 1 <= first <= MAX_SEQUENCE:
            raise ValueError(f"first must be in 1..{MAX_SEQUENCE}, got {first}")
        self._base = first
        self._first = first
        self._fixed = -1
        self._highest = 0
        self._cursor = first
        self.received = 0
        self.duplicates = 0
        self.conflicts = 0
        self.out_of_range = 0
        self._count = 0
        self._held = 0
        if last is not None:
            self.bound(first, last)

    # -- state -------------------------------------------------------------------

    @property
    def first(self) -> int:
        """The lowest sequence of the feed."""
        return self._first

    @property
    def last(self) -> int | None:
        """The last sequence: as fixed, else the highest seen, else ``None``."""
        if self._fixed >= 0:
            return self._fixed
        return self._highest if self._highest else None

    @last.setter
    def last(self, value: int) -> None:
        self.bound(self._first, value)

    @property
    def last_known(self) -> bool:
        """Whether ``last`` was fixed rather than inferred from the sequences seen."""
        return self._fixed >= 0

    @property
    def highest(self) -> int | None:
        """The highest sequence ever held, taken ones included, or ``None``."""
        return self._highest if self._highest else None

    @property
    def cursor(self) -> int:
        """The sequence the next :meth:`take` starts from."""
        return self._cursor

    @property
    def pending(self) -> int:
        """Packets held and not yet taken."""
        return self._held

    @property
    def complete(self) -> bool:
        """Whether ``last`` is known and every sequence up to it was held or taken."""
        cdef Py_ssize_t r
        if self._fixed < 0 or self.missing_count():
            return False
        for r in range(self._nskipped):
            if self._skipped[2 * r] <= self._fixed and self._skipped[2 * r + 1] > self._first:
                return False
        return True

    @property
    def nbytes(self) -> int:
        """Bytes allocated: dense chunks, the chunk table, the sparse table, skipped runs."""
        return (
            self._allocated * sizeof(_Chunk)
            + self._nchunks * (sizeof(_Chunk *) + sizeof(int32_t))
            + (((<Py_ssize_t>1) << self._bits) * _SLOT_BYTES if self._keys != NULL else 0)
            + self._skipcap * 2 * sizeof(long long)
        )

    def __len__(self) -> int:
        return self._count

    def __contains__(self, sequence: object, /) -> bool:
        cdef _Chunk *chunk
        cdef Py_ssize_t slot
        if not isinstance(sequence, (int, np.integer)):
            return False
        value = int(sequence)
        top = self._fixed if self._fixed >= 0 else MAX_SEQUENCE
        if not self._first <= value <= top:
            return False
        if value < self._cursor:
            return not self._was_skipped(value)
        return self._locate(value, &chunk, &slot) != 0

    cdef long long _query_end(self) noexcept:
        # One past the highest sequence that may be held (the cursor while none is).
        if self._fixed >= 0:
            return self._fixed + 1
        return self._highest + 1 if self._highest else self._cursor

    cdef bint _was_skipped(self, long long sequence) noexcept:
        cdef Py_ssize_t lo = 0, hi = self._nskipped, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._skipped[2 * mid + 1] <= sequence:
                lo = mid + 1
            else:
                hi = mid
        return lo < self._nskipped and self._skipped[2 * lo] <= sequence

    cdef int _skip(self, long long start, long long stop) except -1:
        cdef long long *grown
        cdef Py_ssize_t n = self._nskipped
        if start >= stop:
            return 0
        if n and self._skipped[2 * n - 1] == start:
            self._skipped[2 * n - 1] = stop
            return 0
        if n == self._skipcap:
            grown = <long long *>realloc(self._skipped, 2 * max(16, 2 * n) * sizeof(long long))
            if grown == NULL:
                raise MemoryError()
            self._skipped = grown
            self._skipcap = max(16, 2 * n)
        self._skipped[2 * n] = start
        self._skipped[2 * n + 1] = stop
        self._nskipped = n + 1
        return 0

    cdef int _locate(self, long long sequence, _Chunk **chunk, Py_ssize_t *slot) noexcept:
        # Where a held, untaken sequence is: 1 in a dense chunk, 2 in the sparse table,
        # 0 when it is not held.
        cdef long long offset = sequence - self._base
        cdef Py_ssize_t c
        if sequence < self._cursor or offset < 0 or sequence >= self._query_end():
            return 0
        c = offset >> _CHUNK_SHIFT
        chunk[0] = self._chunks[c] if c < self._nchunks else NULL
        if chunk[0] != NULL:
            slot[0] = offset & (_CHUNK - 1)
            return 1 if (chunk[0].bits[slot[0] >> 6] >> (slot[0] & 63)) & 1 else 0
        slot[0] = self._find(sequence)
        return 2 if slot[0] >= 0 else 0

    # -- the chunk table and the sparse table ----------------------------------------

    cdef int _table(self, Py_ssize_t c) except -1:
        # Grow the chunk table to cover chunk c, doubling.
        cdef Py_ssize_t grown, old = self._nchunks
        cdef void *p
        if c < old:
            return 0
        grown = min(max(c + 1, 2 * old, 16), _MAX_CHUNKS)
        p = realloc(self._chunks, grown * sizeof(_Chunk *))
        if p == NULL:
            raise MemoryError()
        self._chunks = <_Chunk **>p
        memset(self._chunks + old, 0, (grown - old) * sizeof(_Chunk *))
        p = realloc(self._waiting, grown * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self._waiting = <int32_t *>p
        memset(self._waiting + old, 0, (grown - old) * sizeof(int32_t))
        self._nchunks = grown
        return 0

    cdef Py_ssize_t _find(self, long long key) noexcept:
        cdef Py_ssize_t i, mask
        if self._keys == NULL:
            return -1
        mask = ((<Py_ssize_t>1) << self._bits) - 1
        i = _home(key, self._bits)
        while self._keys[i] != 0:
            if self._keys[i] == key:
                return i
            i = (i + 1) & mask
        return -1

    cdef int _resize(self, int bits) except -1:
        cdef int32_t *keys = self._keys
        cdef uint32_t *symbol = self._symbol
        cdef unsigned char *side = self._side
        cdef int32_t *quantity = self._quantity
        cdef int32_t *price = self._price
        cdef Py_ssize_t i, old = ((<Py_ssize_t>1) << self._bits) if keys != NULL else 0
        cdef Py_ssize_t size = (<Py_ssize_t>1) << bits
        self._keys = NULL
        self._symbol = NULL
        self._side = NULL
        self._quantity = NULL
        self._price = NULL
        self._used = 0
        self._bits = 0
        try:
            if bits:
                self._keys = <int32_t *>calloc(size, sizeof(int32_t))
                self._symbol = <uint32_t *>malloc(size * sizeof(uint32_t))
                self._side = <unsigned char *>malloc(size)
                self._quantity = <int32_t *>malloc(size * sizeof(int32_t))
                self._price = <int32_t *>malloc(size * sizeof(int32_t))
                if (self._keys == NULL or self._symbol == NULL or self._side == NULL
                        or self._quantity == NULL or self._price == NULL):
                    raise MemoryError()
                self._bits = bits
                for i in range(old):
                    if keys[i] != 0:
                        self._put(keys[i], symbol[i], side[i], quantity[i], price[i])
        finally:
            free(keys)
            free(symbol)
            free(side)
            free(quantity)
            free(price)
        return 0

    cdef int _put(self, int32_t key, uint32_t symbol, unsigned char side, int32_t quantity,
                  int32_t price) except -1:
        cdef Py_ssize_t i, mask
        if self._keys == NULL or 10 * (self._used + 1) > 7 * ((<Py_ssize_t>1) << self._bits):
            self._resize(max(self._bits + 1, _MIN_TABLE_BITS))
        mask = ((<Py_ssize_t>1) << self._bits) - 1
        i = _home(key, self._bits)
        while self._keys[i] != 0:
            i = (i + 1) & mask
        self._keys[i] = key
        self._symbol[i] = symbol
        self._side[i] = side
        self._quantity[i] = quantity
        self._price[i] = price
        self._used += 1
        return 0

    cdef void _delete(self, Py_ssize_t i) noexcept:
        # Backward-shift deletion: linear probing needs no tombstones.
        cdef Py_ssize_t j = i, home, mask = ((<Py_ssize_t>1) << self._bits) - 1
        cdef int32_t key
        while True:
            j = (j + 1) & mask
            key = self._keys[j]
            if key == 0:
                break
            home = _home(key, self._bits)
            if (i < j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            self._keys[i] = key
            self._symbol[i] = self._symbol[j]
            self._side[i] = self._side[j]
            self._quantity[i] = self._quantity[j]
            self._price[i] = self._price[j]
            i = j
        self._keys[i] = 0
        self._used -= 1

    cdef int _shrink(self) except -1:
        # Memory follows the packets held: a table eight times too big is rebuilt smaller.
        cdef int bits = _MIN_TABLE_BITS
        if self._keys == NULL:
            return 0
        if self._used == 0:
            self._resize(0)
        elif self._bits > _MIN_TABLE_BITS and 8 * self._used < ((<Py_ssize_t>1) << self._bits):
            while 10 * self._used > 5 * ((<Py_ssize_t>1) << bits):
                bits += 1
            self._resize(bits)
        return 0

    cdef object _sparse_keys(self, long long lo, long long hi):
        # The sparse keys in lo..hi-1, ascending, as an int32 array.
        out = np.empty(self._used, _INT32)
        cdef int32_t *p = <int32_t *>_data(out)
        cdef Py_ssize_t i, n = 0, size = ((<Py_ssize_t>1) << self._bits) if self._keys else 0
        cdef int32_t key
        for i in range(size):
            key = self._keys[i]
            if key != 0 and lo <= key < hi:
                p[n] = key
                n += 1
        out = out[:n]
        out.sort()
        return out

    cdef _Chunk *_promote(self, Py_ssize_t c) except NULL:
        # Move chunk c's packets from the sparse table into a new dense chunk.
        cdef long long start = self._base + (<long long>c << _CHUNK_SHIFT)
        cdef _Chunk *chunk = <_Chunk *>malloc(sizeof(_Chunk))
        cdef Py_ssize_t k, i, j, n
        cdef const int32_t *key
        if chunk == NULL:
            raise MemoryError()
        memset(chunk.bits, 0, sizeof(chunk.bits))
        chunk.count = 0
        keys = self._sparse_keys(start, start + _CHUNK)
        key = <const int32_t *>_data(keys)
        n = len(keys)
        for k in range(n):
            i = self._find(key[k])
            j = key[k] - start
            chunk.bits[j >> 6] |= (<uint64_t>1) << (j & 63)
            chunk.symbol[j] = self._symbol[i]
            chunk.side[j] = self._side[i]
            chunk.quantity[j] = self._quantity[i]
            chunk.price[j] = self._price[i]
            self._delete(i)
        chunk.count = n
        self._chunks[c] = chunk
        self._waiting[c] = 0
        self._allocated += 1
        return chunk

    cdef void _drop_chunk(self, Py_ssize_t c) noexcept:
        free(self._chunks[c])
        self._chunks[c] = NULL
        self._allocated -= 1

    # -- adding --------------------------------------------------------------------

    def bound(self, first: int, last: int | None) -> None:
        """Narrow the feed to ``first..last``; held packets outside are dropped."""
        first = integer(first, "first")
        if not 1 <= first <= MAX_SEQUENCE:
            raise ValueError(f"first must be in 1..{MAX_SEQUENCE}, got {first}")
        if first < self._first:
            raise ValueError(f"first may only rise: {first} is below {self._first}")
        fixed = (self._fixed if self._fixed >= 0 else None) if last is None else integer(last, "last")
        if fixed is not None and not first <= fixed <= MAX_SEQUENCE:
            raise ValueError(f"last must be in {first}..{MAX_SEQUENCE}, got {fixed}")
        if self._fixed >= 0 and fixed is not None and fixed > self._fixed:
            raise ValueError(f"last may only be lowered: {fixed} is above {self._fixed}")
        cdef long long dropped = self._remove(self._cursor, first)
        if fixed is not None:
            dropped += self._remove(max(fixed + 1, self._cursor), self._query_end())
            self._highest = min(self._highest, fixed)
        gone = {s for s in self._discarded if s < first or (fixed is not None and s > fixed)}
        self._discarded -= gone
        self.out_of_range += dropped
        self._count -= dropped + len(gone)
        self._first = first
        self._fixed = -1 if fixed is None else fixed
        self._cursor = max(self._cursor, first)

    def add(self, packets: Packets) -> int:
        """Store the packets; return how many sequences were new."""
        cdef Py_ssize_t n = len(packets)
        symbol = _column(packets.symbol, _S4)
        side = _column(packets.buysellindicator, _S1)
        quantity = _column(packets.quantity, _INT32)
        price = _column(packets.price, _INT32)
        sequence = _column(packets.sequence, _INT32)
        if not len(symbol) == len(side) == len(quantity) == len(price) == n:
            raise ValueError("packet columns differ in length")
        cdef const unsigned char *sym = <const unsigned char *>_data(symbol)
        cdef const unsigned char *sd = <const unsigned char *>_data(side)
        cdef const int32_t *qty = <const int32_t *>_data(quantity)
        cdef const int32_t *px = <const int32_t *>_data(price)
        cdef const int32_t *seq = <const int32_t *>_data(sequence)
        cdef long long first = self._first
        cdef long long top = self._fixed if self._fixed >= 0 else _MAX_SEQUENCE
        cdef long long cursor = self._cursor
        cdef long long base = self._base
        cdef long long window = max(_MIN_WINDOW, 2 * self._held)
        cdef long long dense_end = cursor + ((window + _CHUNK - 1) & ~(<long long>_CHUNK - 1))
        cdef long long s, offset, new = 0
        cdef Py_ssize_t k, c, i, j
        cdef _Chunk *chunk
        cdef uint32_t word
        cdef uint64_t bit
        cdef bint differs
        for k in range(n):
            s = seq[k]
            if s < first or s > top:
                self.out_of_range += 1
                continue
            if s < cursor:
                if self._was_skipped(s):
                    self.out_of_range += 1
                else:
                    # Taken already: nothing is left to compare it with.
                    self.received += 1
                    self.duplicates += 1
                continue
            self.received += 1
            memcpy(&word, sym + 4 * k, 4)
            offset = s - base
            c = offset >> _CHUNK_SHIFT
            chunk = self._chunks[c] if c < self._nchunks else NULL
            if chunk == NULL:
                i = self._find(s)
                if i >= 0:
                    differs = (
                        self._symbol[i] != word or self._side[i] != sd[k]
                        or self._quantity[i] != qty[k] or self._price[i] != px[k]
                    )
                    if differs:
                        self._conflict(sym + 4 * k, sd + k, qty[k], px[k], s)
                    else:
                        self.duplicates += 1
                    continue
                self._table(c)
                if s < dense_end and self._waiting[c] + 1 >= _PROMOTE:
                    chunk = self._promote(c)
                else:
                    self._put(<int32_t>s, word, sd[k], qty[k], px[k])
                    self._waiting[c] += 1
            if chunk != NULL:
                j = offset & (_CHUNK - 1)
                bit = (<uint64_t>1) << (j & 63)
                if chunk.bits[j >> 6] & bit:
                    differs = (
                        chunk.symbol[j] != word or chunk.side[j] != sd[k]
                        or chunk.quantity[j] != qty[k] or chunk.price[j] != px[k]
                    )
                    if differs:
                        self._conflict(sym + 4 * k, sd + k, qty[k], px[k], s)
                    else:
                        self.duplicates += 1
                    continue
                chunk.bits[j >> 6] |= bit
                chunk.symbol[j] = word
                chunk.side[j] = sd[k]
                chunk.quantity[j] = qty[k]
                chunk.price[j] = px[k]
                chunk.count += 1
            new += 1
            self._held += 1
            if s > self._highest:
                self._highest = s
            if self._discarded and s in self._discarded:
                self._discarded.discard(s)
            else:
                self._count += 1
        return new

    cdef _conflict(self, const unsigned char *sym, const unsigned char *sd, int32_t qty,
                   int32_t px, long long s):
        self.conflicts += 1
        self._conflicting.append((_stripped(sym, 4), _stripped(sd, 1), qty, px, s))

    # -- queries -------------------------------------------------------------------

    cdef Py_ssize_t _runs(self, long long lo, long long hi, object keys, int64_t *out):
        # The missing runs in lo..hi-1 into out as (start, count) pairs (or only counted
        # when out is NULL); keys are the sparse keys in lo..hi-1, ascending.
        cdef const int32_t *key = <const int32_t *>_data(keys)
        cdef Py_ssize_t nkeys = len(keys), k = 0, n = 0, c, c0, c1, a, b, pos, s, e
        cdef long long start, prev = lo
        cdef _Chunk *chunk
        if hi <= lo:
            return 0
        c0 = (lo - self._base) >> _CHUNK_SHIFT
        c1 = (hi - 1 - self._base) >> _CHUNK_SHIFT
        for c in range(c0, c1 + 1):
            start = self._base + (<long long>c << _CHUNK_SHIFT)
            chunk = self._chunks[c] if c < self._nchunks else NULL
            if chunk == NULL:
                # The chunk's packets (if any) are sparse keys.
                while k < nkeys and key[k] < start + _CHUNK:
                    if key[k] > prev:
                        if out != NULL:
                            out[2 * n] = prev
                            out[2 * n + 1] = key[k] - prev
                        n += 1
                    prev = <long long>key[k] + 1
                    k += 1
                continue
            a = max(lo, start) - start
            b = min(hi, start + _CHUNK) - start
            pos = a
            while True:
                s = _next_one(chunk.bits, _CHUNK_WORDS, pos, b)
                if s >= b:
                    break
                e = _next_zero(chunk.bits, _CHUNK_WORDS, s, b)
                if start + s > prev:
                    if out != NULL:
                        out[2 * n] = prev
                        out[2 * n + 1] = start + s - prev
                    n += 1
                prev = start + e
                pos = e
        if hi > prev:
            if out != NULL:
                out[2 * n] = prev
                out[2 * n + 1] = hi - prev
            n += 1
        return n

    cdef long long _count_held(self, long long lo, long long hi):
        # Packets held in lo..hi-1.
        cdef long long n = 0, start
        cdef Py_ssize_t c, c0, c1, i, size
        cdef int32_t key
        if hi <= lo:
            return 0
        c0 = (lo - self._base) >> _CHUNK_SHIFT
        c1 = min((hi - 1 - self._base) >> _CHUNK_SHIFT, self._nchunks - 1)
        for c in range(c0, c1 + 1):
            if self._chunks[c] != NULL:
                start = self._base + (<long long>c << _CHUNK_SHIFT)
                n += _ones_between(
                    self._chunks[c].bits, max(lo, start) - start, min(hi, start + _CHUNK) - start
                )
        size = ((<Py_ssize_t>1) << self._bits) if self._keys != NULL else 0
        for i in range(size):
            key = self._keys[i]
            if key != 0 and lo <= key < hi:
                n += 1
        return n

    def contiguous(self) -> int:
        """Return the first sequence from the cursor on that is not held."""
        cdef long long end = self._query_end(), s = self._cursor, start
        cdef Py_ssize_t c, z
        cdef _Chunk *chunk
        while s < end:
            c = (s - self._base) >> _CHUNK_SHIFT
            start = self._base + (<long long>c << _CHUNK_SHIFT)
            chunk = self._chunks[c] if c < self._nchunks else NULL
            if chunk == NULL:
                if self._find(s) < 0:
                    return s
                s += 1
                continue
            z = _next_zero(chunk.bits, _CHUNK_WORDS, s - start, min(end - start, _CHUNK))
            if start + z < end and z < _CHUNK:
                return start + z
            s = start + _CHUNK
        return max(end, self._cursor)

    def missing_ranges(self, stop: int | None = None) -> np.ndarray:
        """Return the missing runs from the cursor on as ``(n, 2)`` ``(start, count)``."""
        cdef long long lo = self._cursor, hi = self._query_end()
        if stop is not None:
            hi = min(hi, max(integer(stop, "stop"), lo))
        keys = self._sparse_keys(lo, hi)
        cdef Py_ssize_t n = self._runs(lo, hi, keys, NULL)
        out = np.empty((n, 2), _INT64)
        self._runs(lo, hi, keys, <int64_t *>_data(out))
        return out

    def missing_count(self) -> int:
        """Return how many sequences from the cursor to ``last`` are not held."""
        cdef long long lo = self._cursor, hi = self._query_end()
        if hi <= lo:
            return 0
        return hi - lo - self._count_held(lo, hi)

    # -- taking and changing -------------------------------------------------------

    cdef object _gather(self, long long lo, long long hi):
        # The packets held in lo..hi-1, in sequence order.
        keys = self._sparse_keys(lo, hi) if hi > lo else np.empty(0, _INT32)
        cdef long long count = self._count_held(lo, hi) if hi > lo else 0
        symbol = np.empty(count, _S4)
        side = np.empty(count, _S1)
        quantity = np.empty(count, _INT32)
        price = np.empty(count, _INT32)
        sequence = np.empty(count, _INT32)
        cdef uint32_t *sym = <uint32_t *>_data(symbol)
        cdef unsigned char *sd = <unsigned char *>_data(side)
        cdef int32_t *qty = <int32_t *>_data(quantity)
        cdef int32_t *px = <int32_t *>_data(price)
        cdef int32_t *seq = <int32_t *>_data(sequence)
        cdef const int32_t *key = <const int32_t *>_data(keys)
        cdef Py_ssize_t nkeys = len(keys), kk = 0, k = 0, c, c0, c1, a, b, w, slot, i
        cdef long long start
        cdef uint64_t word
        cdef _Chunk *chunk
        if count:
            c0 = (lo - self._base) >> _CHUNK_SHIFT
            c1 = (hi - 1 - self._base) >> _CHUNK_SHIFT
            for c in range(c0, c1 + 1):
                start = self._base + (<long long>c << _CHUNK_SHIFT)
                chunk = self._chunks[c] if c < self._nchunks else NULL
                if chunk == NULL:
                    while kk < nkeys and key[kk] < start + _CHUNK:
                        i = self._find(key[kk])
                        sym[k] = self._symbol[i]
                        sd[k] = self._side[i]
                        qty[k] = self._quantity[i]
                        px[k] = self._price[i]
                        seq[k] = key[kk]
                        k += 1
                        kk += 1
                    continue
                a = max(lo, start) - start
                b = min(hi, start + _CHUNK) - start
                for w in range(a >> 6, (b + 63) >> 6):
                    word = chunk.bits[w]
                    if w == (a >> 6):
                        word &= ~_low_bits(a & 63)
                    if (w << 6) + 64 > b:
                        word &= _low_bits(b - (w << 6))
                    while word:
                        slot = (w << 6) + pc_ctz64(word)
                        word &= word - 1
                        sym[k] = chunk.symbol[slot]
                        sd[k] = chunk.side[slot]
                        qty[k] = chunk.quantity[slot]
                        px[k] = chunk.price[slot]
                        seq[k] = <int32_t>(start + slot)
                        k += 1
        return _from_columns(symbol, side, quantity, price, sequence, np.empty(0, _INT64))

    cdef long long _remove(self, long long lo, long long hi) except -1:
        # Forget the packets held in lo..hi-1; return how many there were.
        cdef long long removed = 0, start, n
        cdef Py_ssize_t c, c0, c1, k, a, b
        cdef const int32_t *key
        if hi <= lo:
            return 0
        keys = self._sparse_keys(lo, hi)
        key = <const int32_t *>_data(keys)
        for k in range(len(keys)):
            self._delete(self._find(key[k]))
            self._waiting[(key[k] - self._base) >> _CHUNK_SHIFT] -= 1
        removed = len(keys)
        c0 = (lo - self._base) >> _CHUNK_SHIFT
        c1 = min((hi - 1 - self._base) >> _CHUNK_SHIFT, self._nchunks - 1)
        for c in range(c0, c1 + 1):
            if self._chunks[c] == NULL:
                continue
            start = self._base + (<long long>c << _CHUNK_SHIFT)
            a = max(lo, start) - start
            b = min(hi, start + _CHUNK) - start
            n = _ones_between(self._chunks[c].bits, a, b)
            removed += n
            self._chunks[c].count -= n
            if self._chunks[c].count == 0:
                self._drop_chunk(c)
            else:
                _clear_between(self._chunks[c].bits, a, b)
        self._held -= removed
        self._shrink()
        return removed

    def take(self, stop: int) -> Packets:
        """Return the held packets below ``stop`` from the cursor on, and forget them."""
        cdef long long lo = self._cursor, hi, top, r
        stop = min(integer(stop, "stop"), _MAX_SEQUENCE + 1)
        if stop <= lo:
            return _batch([])
        hi = min(<long long>stop, self._query_end())
        taken = self._gather(lo, hi)
        gaps = self.missing_ranges(hi)
        for r in range(len(gaps)):
            self._skip(gaps[r, 0], gaps[r, 0] + gaps[r, 1])
        top = self._fixed + 1 if self._fixed >= 0 else _MAX_SEQUENCE + 1
        self._skip(max(lo, hi), min(<long long>stop, top))
        self._remove(lo, hi)
        self._cursor = stop
        gone = {s for s in self._discarded if s < stop}
        self._discarded -= gone
        self._count -= len(gone)
        return taken

    def replace(self, packets: Packets) -> None:
        """Overwrite the payload of held sequences not yet taken."""
        cdef Py_ssize_t n = len(packets), k, slot
        cdef _Chunk *chunk
        symbol = _column(packets.symbol, _S4)
        side = _column(packets.buysellindicator, _S1)
        quantity = _column(packets.quantity, _INT32)
        price = _column(packets.price, _INT32)
        sequence = _column(packets.sequence, _INT32)
        if not len(symbol) == len(side) == len(quantity) == len(price) == n:
            raise ValueError("packet columns differ in length")
        cdef const unsigned char *sym = <const unsigned char *>_data(symbol)
        cdef const unsigned char *sd = <const unsigned char *>_data(side)
        cdef const int32_t *qty = <const int32_t *>_data(quantity)
        cdef const int32_t *px = <const int32_t *>_data(price)
        cdef const int32_t *seq = <const int32_t *>_data(sequence)
        for k in range(n):
            if self._locate(seq[k], &chunk, &slot) == 0:
                raise KeyError(f"sequence {seq[k]} is not held")
        for k in range(n):
            if self._locate(seq[k], &chunk, &slot) == 1:
                memcpy(&chunk.symbol[slot], sym + 4 * k, 4)
                chunk.side[slot] = sd[k]
                chunk.quantity[slot] = qty[k]
                chunk.price[slot] = px[k]
            else:
                memcpy(&self._symbol[slot], sym + 4 * k, 4)
                self._side[slot] = sd[k]
                self._quantity[slot] = qty[k]
                self._price[slot] = px[k]

    def discard(self, sequences) -> int:
        """Forget held sequences not yet taken, so they are missing again; count them."""
        values = sequence_array(sequences)
        cdef const int64_t *seq = <const int64_t *>_data(values)
        cdef Py_ssize_t k, slot, c
        cdef long long s, forgotten = 0
        cdef _Chunk *chunk
        cdef int where
        for k in range(len(values)):
            s = seq[k]
            if s < self._first or s > _MAX_SEQUENCE:
                continue
            where = self._locate(s, &chunk, &slot)
            if where == 0:
                continue
            c = (s - self._base) >> _CHUNK_SHIFT
            if where == 1:
                chunk.bits[slot >> 6] &= ~((<uint64_t>1) << (slot & 63))
                chunk.count -= 1
                if chunk.count == 0:
                    self._drop_chunk(c)
            else:
                self._delete(slot)
                self._waiting[c] -= 1
            self._held -= 1
            self._discarded.add(s)
            forgotten += 1
        self._shrink()
        return forgotten

    def conflicting(self) -> Packets:
        """Return the later arrivals whose payload differed from the packet held."""
        return _batch(self._conflicting)

    def peek(self, sequences) -> Packets:
        """Return the packets held and not yet taken among ``sequences``, in order."""
        values = np.unique(sequence_array(sequences))
        cdef const int64_t *seq = <const int64_t *>_data(values)
        cdef Py_ssize_t k, slot, n = 0, count = len(values)
        cdef _Chunk *chunk
        cdef int where
        symbol = np.empty(count, _S4)
        side = np.empty(count, _S1)
        quantity = np.empty(count, _INT32)
        price = np.empty(count, _INT32)
        sequence = np.empty(count, _INT32)
        cdef unsigned char *sym = <unsigned char *>_data(symbol)
        cdef unsigned char *sd = <unsigned char *>_data(side)
        cdef int32_t *qty = <int32_t *>_data(quantity)
        cdef int32_t *px = <int32_t *>_data(price)
        cdef int32_t *sq = <int32_t *>_data(sequence)
        for k in range(count):
            where = self._locate(seq[k], &chunk, &slot)
            if where == 1:
                memcpy(sym + 4 * n, &chunk.symbol[slot], 4)
                sd[n] = chunk.side[slot]
                qty[n] = chunk.quantity[slot]
                px[n] = chunk.price[slot]
            elif where == 2:
                memcpy(sym + 4 * n, &self._symbol[slot], 4)
                sd[n] = self._side[slot]
                qty[n] = self._quantity[slot]
                px[n] = self._price[slot]
            else:
                continue
            sq[n] = <int32_t>seq[k]
            n += 1
        return _from_columns(
            symbol[:n].copy(), side[:n].copy(), quantity[:n].copy(), price[:n].copy(),
            sequence[:n].copy(), np.empty(0, _INT64),
        )
