# cython: annotation_typing=False
"""The compiled engine: the twin of ``packetcore.engine._pure``, same API and behaviour.

Hot loops run over raw pointers into numpy columns and the caller's buffers, with no
Python object per packet.  The code is split by concern, asyncpg-style:

* ``_wire.pxi``: decode, Decoder, encode, gather (the 17-byte response packet);
* ``_gaps.pxi``: GapTracker (one bit per sequence);
* ``_store.pxi``: PacketStore (slot = sequence - first);
* ``_json.pxi``: to_json (the ``output.json`` document);
* ``_text.pxi``: text_rows and TextParser (the json, ndjson and csv forms).
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from packetcore.engine._cursor cimport (
    Cursor,
    cursor_init,
    cursor_read,
    pc_copy_packets,
    pc_ctz64,
    pc_load_be32,
    pc_popcount64,
    pc_symbol_bad,
    pc_any_invalid,
    read_int32,
    write_int32,
)

import numpy as np

from ..errors import ProtocolError
from ..packets import Packets
# Argument checks both engines share, so that they refuse the same things alike.
from ._pure import integer, keep_flags, sequence_array, symbol_column

cnp.import_array()

__all__ = [
    "MAX_SEQUENCE",
    "PACKET_SIZE",
    "Decoder",
    "GapTracker",
    "PacketStore",
    "TextParser",
    "decode",
    "encode",
    "gather",
    "text_rows",
    "to_json",
    "valid_symbols",
]

PACKET_SIZE = 17
MAX_SEQUENCE = 2**31 - 1

cdef enum:
    # Response packet: symbol[4] side[1] quantity:int32 price:int32 sequence:int32.
    _PACKET_SIZE = 17

cdef long long _MAX_SEQUENCE = 2**31 - 1

cdef object _S4 = np.dtype("S4")
cdef object _S1 = np.dtype("S1")
cdef object _INT32 = np.dtype(np.int32)
cdef object _INT64 = np.dtype(np.int64)
cdef object _from_columns = Packets._from_columns


cdef inline void *_data(cnp.ndarray array) noexcept:
    return cnp.PyArray_DATA(array)


cdef object _column(object values, object dtype):
    # The engines' own batches are already contiguous and typed: then this copies nothing.
    return np.ascontiguousarray(values, dtype=dtype)


include "_wire.pxi"
include "_gaps.pxi"
include "_store.pxi"
include "_json.pxi"
include "_text.pxi"
