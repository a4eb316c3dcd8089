# PacketStore: packets in sequence order without a sort.  Included by _engine.pyx.

# A known last reserves the columns up front only up to this many slots; beyond, they
# grow with the sequences that arrive.
cdef long long _RESERVE_SLOTS = 1 << 24


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


cdef class PacketStore:
    """Put packets arriving in any order into sequence order, without sorting.

    A packet's slot is ``sequence - first``.  The first arrival of a sequence wins;
    a later one with the same payload counts as a duplicate, one with a different
    payload as a conflict and is kept for the report (:meth:`conflicting`).
    """

    def __cinit__(self):
        # Never None, so the cdef code may use it unchecked even before __init__ runs.
        self.tracker = GapTracker()
        self._symbol = NULL
        self._side = NULL
        self._quantity = NULL
        self._price = NULL
        self._slots = 0

    def __dealloc__(self):
        free(self._symbol)
        free(self._side)
        free(self._quantity)
        free(self._price)

    def __init__(self, first: int = 1, last: int | None = None) -> None:
        self.tracker = GapTracker(first, last)
        self.conflicts = 0
        self._conflicting = []
        if last is not None:
            self._grow(min(self.tracker._fixed - self.tracker._first + 1, _RESERVE_SLOTS))

    @property
    def duplicates(self) -> int:
        """Later arrivals identical to the packet already held."""
        return self.tracker.duplicates - self.conflicts

    @property
    def out_of_range(self) -> int:
        """Packets dropped for a sequence outside ``first..last``."""
        return self.tracker.out_of_range

    @property
    def last(self) -> int | None:
        """The tracker's ``last``; setting it fixes the end of the feed."""
        return self.tracker.last

    @last.setter
    def last(self, value: int) -> None:
        self.tracker.last = value
        self._grow(min(self.tracker._fixed - self.tracker._first + 1, _RESERVE_SLOTS))

    def __len__(self) -> int:
        return self.tracker.received

    cdef int _grow(self, long long slots) except -1:
        # Grow every column to at least `slots`, doubling; a failed realloc keeps the old.
        cdef Py_ssize_t grown, old = self._slots
        cdef void *p
        if slots <= old:
            return 0
        grown = max(slots, 2 * old)
        if self.tracker._fixed >= 0:
            # Doubling never goes past a known end of the feed.
            grown = min(grown, max(slots, self.tracker._fixed - self.tracker._first + 1))
        p = realloc(self._symbol, grown * sizeof(uint32_t))
        if p == NULL:
            raise MemoryError()
        self._symbol = <uint32_t *>p
        p = realloc(self._side, grown)
        if p == NULL:
            raise MemoryError()
        self._side = <unsigned char *>p
        p = realloc(self._quantity, grown * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self._quantity = <int32_t *>p
        p = realloc(self._price, grown * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self._price = <int32_t *>p
        # New slots start zeroed: no slot ever exposes uninitialized memory.
        memset(self._symbol + old, 0, (grown - old) * sizeof(uint32_t))
        memset(self._side + old, 0, grown - old)
        memset(self._quantity + old, 0, (grown - old) * sizeof(int32_t))
        memset(self._price + old, 0, (grown - old) * sizeof(int32_t))
        self._slots = grown
        return 0

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
        cdef GapTracker tracker = self.tracker
        cdef long long first = tracker._first
        cdef Py_ssize_t k, slot
        cdef long long new = 0
        cdef uint32_t word
        cdef int found
        for k in range(n):
            found = _mark(tracker, seq[k])
            if found == _OUT_OF_RANGE:
                continue
            slot = seq[k] - first
            memcpy(&word, sym + 4 * k, 4)
            if found == _DUPLICATE:
                # Slots past the columns were marked through the tracker directly: no
                # payload is held there to compare.
                if slot < self._slots and (
                    self._symbol[slot] != word
                    or self._side[slot] != sd[k]
                    or self._quantity[slot] != qty[k]
                    or self._price[slot] != px[k]
                ):
                    self.conflicts += 1
                    self._conflicting.append(
                        (_stripped(sym + 4 * k, 4), _stripped(sd + k, 1), qty[k], px[k], seq[k])
                    )
                continue
            if slot >= self._slots:
                self._grow(slot + 1)
            self._symbol[slot] = word
            self._side[slot] = sd[k]
            self._quantity[slot] = qty[k]
            self._price[slot] = px[k]
            new += 1
        return new

    def to_packets(self) -> Packets:
        """Return the packets held, in sequence order."""
        cdef GapTracker tracker = self.tracker
        cdef Py_ssize_t end = min(tracker._nbits(), self._slots)
        cdef Py_ssize_t count = _count_ones(tracker._words, tracker._nwords, end)
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
        cdef const uint64_t *words = tracker._words
        cdef int32_t first = <int32_t>tracker._first
        cdef Py_ssize_t w, slot, k = 0
        cdef uint64_t word
        with nogil:
            for w in range((end + 63) >> 6):
                word = words[w]
                if (w << 6) + 64 > end:
                    word &= _low_bits(end - (w << 6))
                while word:
                    slot = (w << 6) + pc_ctz64(word)
                    word &= word - 1
                    memcpy(&sym[k], &self._symbol[slot], 4)
                    sd[k] = self._side[slot]
                    qty[k] = self._quantity[slot]
                    px[k] = self._price[slot]
                    seq[k] = first + <int32_t>slot
                    k += 1
        return _from_columns(symbol, side, quantity, price, sequence, np.empty(0, _INT64))

    def conflicting(self) -> Packets:
        """Return the later arrivals whose payload differed from the packet held."""
        return _batch(self._conflicting)
