# Fields of the engine's cdef classes; the code is in _engine.pyx and its .pxi files.

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


cdef class Decoder:
    cdef public object strict
    # At most 16 bytes of an incomplete packet wait here for the next chunk.
    cdef unsigned char _tail[16]
    cdef Py_ssize_t _pending
    cdef long long _offset
    cdef long long _invalid_count

    cdef object _feed(self, const unsigned char *data, Py_ssize_t size)


cdef class GapTracker:
    cdef long long _first
    # -1 while last is unknown.
    cdef long long _fixed
    # 0 while nothing is seen: a sequence is at least first, which is at least 1.
    cdef long long _highest
    # Bit i of the bitmap stands for sequence first + i.
    cdef uint64_t *_words
    cdef Py_ssize_t _nwords
    cdef public long long received
    cdef public long long duplicates
    cdef public long long out_of_range

    cdef int _reserve(self, long long nbits) except -1
    cdef Py_ssize_t _nbits(self) noexcept
    cdef Py_ssize_t _span(self)


cdef enum:
    _CHUNK_SHIFT = 16
    _CHUNK = 1 << 16
    _CHUNK_WORDS = (1 << 16) >> 6


# One dense chunk: 2**16 consecutive sequences, a held bit and the payload per slot.
cdef struct _Chunk:
    uint64_t bits[_CHUNK_WORDS]
    long long count
    uint32_t symbol[_CHUNK]
    unsigned char side[_CHUNK]
    int32_t quantity[_CHUNK]
    int32_t price[_CHUNK]


cdef class PacketStore:
    # Chunk c covers sequences _base + c * 2**16 onwards; _base is the first sequence at
    # construction and never moves, while _first may rise.
    cdef long long _base
    cdef long long _first
    # -1 while last is unknown.
    cdef long long _fixed
    # 0 while nothing was held.
    cdef long long _highest
    cdef long long _cursor
    cdef readonly long long received
    cdef readonly long long duplicates
    cdef readonly long long conflicts
    cdef readonly long long out_of_range
    # Distinct sequences held, taken, or discarded awaiting a fresh copy: len().
    cdef long long _count
    # Held and not yet taken.
    cdef long long _held
    # The chunk table (NULL where not allocated), and how many packets of each chunk
    # wait in the sparse table.
    cdef _Chunk **_chunks
    cdef int32_t *_waiting
    cdef Py_ssize_t _nchunks
    cdef Py_ssize_t _allocated
    # The sparse table: open addressing, linear probing, key 0 = empty slot.
    cdef int32_t *_keys
    cdef uint32_t *_symbol
    cdef unsigned char *_side
    cdef int32_t *_quantity
    cdef int32_t *_price
    cdef int _bits
    cdef Py_ssize_t _used
    # Runs [start, stop) below the cursor that take() passed without a packet, ascending.
    cdef long long *_skipped
    cdef Py_ssize_t _nskipped
    cdef Py_ssize_t _skipcap
    # Rare paths: sequences discard() forgot, and later arrivals whose payload differed.
    cdef set _discarded
    cdef list _conflicting

    cdef int _table(self, Py_ssize_t c) except -1
    cdef Py_ssize_t _find(self, long long key) noexcept
    cdef int _resize(self, int bits) except -1
    cdef int _put(self, int32_t key, uint32_t symbol, unsigned char side, int32_t quantity,
                  int32_t price) except -1
    cdef void _delete(self, Py_ssize_t i) noexcept
    cdef int _shrink(self) except -1
    cdef object _sparse_keys(self, long long lo, long long hi)
    cdef _Chunk *_promote(self, Py_ssize_t c) except NULL
    cdef void _drop_chunk(self, Py_ssize_t c) noexcept
    cdef long long _query_end(self) noexcept
    cdef bint _was_skipped(self, long long sequence) noexcept
    cdef int _skip(self, long long start, long long stop) except -1
    cdef int _locate(self, long long sequence, _Chunk **chunk, Py_ssize_t *slot) noexcept
    cdef Py_ssize_t _runs(self, long long lo, long long hi, object keys, int64_t *out)
    cdef long long _count_held(self, long long lo, long long hi)
    cdef object _gather(self, long long lo, long long hi)
    cdef long long _remove(self, long long lo, long long hi) except -1
    cdef _conflict(self, const unsigned char *sym, const unsigned char *sd, int32_t qty,
                   int32_t px, long long s)
