# Fields of the engine's cdef classes; the code is in _engine.pyx and its .pxi files.

from libc.stdint cimport int32_t, uint32_t, uint64_t


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


cdef class PacketStore:
    cdef readonly GapTracker tracker
    cdef public long long conflicts
    # Column buffers indexed by slot = sequence - first; a slot is held iff its bit is set.
    cdef uint32_t *_symbol
    cdef unsigned char *_side
    cdef int32_t *_quantity
    cdef int32_t *_price
    cdef Py_ssize_t _slots
    # Rare path: later arrivals whose payload differed, as (symbol, side, qty, price, seq).
    cdef list _conflicting

    cdef int _grow(self, long long slots) except -1
