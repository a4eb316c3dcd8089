# The 17-byte response packet: decode, Decoder, encode.  Included by _engine.pyx.

cdef enum:
    # The first bad field of a packet, as _field finds it.
    _VALID = 0
    _BAD_SYMBOL = 1
    _BAD_SIDE = 2
    _BAD_SEQUENCE = 3

# Below this many packets, releasing the GIL costs more than it gives.
cdef Py_ssize_t _NOGIL_PACKETS = 4096

cdef tuple _FIELD_NAMES = (None, "symbol", "buysellindicator", "packetSequence")


cdef inline unsigned int _bad_fields(const unsigned char *p) noexcept nogil:
    # A bit per bad field of one packet, in wire order.
    cdef uint32_t word
    memcpy(&word, p, 4)
    return (
        # symbol: printable ASCII, right-padded with NULs, at least one character.
        <unsigned int>(pc_symbol_bad(word) != 0)
        # buysellindicator: B or S.
        | (<unsigned int>(p[4] != 0x42 and p[4] != 0x53) << 1)
        # packetSequence: the first packet is 1.
        | (<unsigned int>(read_int32(p + 13) < 1) << 2)
    )


cdef inline int _field(unsigned int bad) noexcept nogil:
    # The first bad field is the one named.
    if bad == 0:
        return _VALID
    if bad & 1:
        return _BAD_SYMBOL
    return _BAD_SIDE if bad & 2 else _BAD_SEQUENCE


cdef struct _Columns:
    # Where decoded packets go: numpy column data, room for `capacity` packets.
    unsigned char *symbol
    unsigned char *side
    int32_t *quantity
    int32_t *price
    int32_t *sequence
    Py_ssize_t capacity
    Py_ssize_t valid
    # Stream offsets of invalid packets: malloc'd on the first one, room for capacity.
    int64_t *invalid
    Py_ssize_t n_invalid
    # Strict mode: the first invalid packet.
    int bad_field
    long long bad_offset


cdef enum:
    # Packets copied, then checked, together: the columns of a block are still in cache
    # when the checks, loops over contiguous columns that the compiler vectorizes, read
    # them back.  A block with an invalid packet is decoded again, packet by packet.
    _BLOCK = 1024


cdef inline void _copy_packets(
    const unsigned char *p, Py_ssize_t n, Py_ssize_t i, _Columns *out
) noexcept nogil:
    # Copy n packets into rows i.. of the columns, unchecked.
    pc_copy_packets(
        p, n, <uint32_t *>out.symbol + i, out.side + i, out.quantity + i, out.price + i,
        out.sequence + i,
    )


cdef inline uint32_t _any_invalid(_Columns *out, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # Whether rows i..i+n hold an invalid packet.
    return pc_any_invalid(<const uint32_t *>out.symbol + i, out.side + i, out.sequence + i, n)


cdef int _decode_run(Cursor *cur, long long offset, _Columns *out, bint strict) noexcept nogil:
    # Decode the whole packets under the cursor: 0 done, 1 strict stop, -1 out of memory.
    cdef Py_ssize_t count = cur.len // _PACKET_SIZE
    cdef const unsigned char *p = cursor_read(cur, count * _PACKET_SIZE)
    cdef Py_ssize_t n, k
    cdef unsigned int bad
    while count > 0:
        n = min(<Py_ssize_t>_BLOCK, count)
        _copy_packets(p, n, out.valid, out)
        if not _any_invalid(out, out.valid, n):
            out.valid += n
        else:
            for k in range(n):
                bad = _bad_fields(p + k * _PACKET_SIZE)
                if bad == 0:
                    _copy_packets(p + k * _PACKET_SIZE, 1, out.valid, out)
                    out.valid += 1
                elif _reject(out, offset + k * _PACKET_SIZE, bad, strict):
                    return -1 if out.bad_field == 0 else 1
        p += n * _PACKET_SIZE
        offset += n * _PACKET_SIZE
        count -= n
    return 0


cdef int _reject(_Columns *out, long long offset, unsigned int bad, bint strict) noexcept nogil:
    # An invalid packet: 0 skipped and listed, else stop (strict, or out of memory).
    if strict:
        out.bad_field = _field(bad)
        out.bad_offset = offset
        return 1
    if out.invalid == NULL:
        out.invalid = <int64_t *>malloc(out.capacity * sizeof(int64_t))
        if out.invalid == NULL:
            return 1
    out.invalid[out.n_invalid] = offset
    out.n_invalid += 1
    return 0


cdef object _empty_batch():
    return _from_columns(
        np.empty(0, _S4),
        np.empty(0, _S1),
        np.empty(0, _INT32),
        np.empty(0, _INT32),
        np.empty(0, _INT32),
        np.empty(0, _INT64),
    )


cdef void _acquire(object chunk, Py_buffer *view) except *:
    try:
        PyObject_GetBuffer(chunk, view, PyBUF_SIMPLE)
    except (BufferError, ValueError):
        # A non-contiguous view (numpy says ValueError): copy it out in C order, as
        # bytes(chunk) does.
        PyObject_GetBuffer(bytes(chunk), view, PyBUF_SIMPLE)


cdef class Decoder:
    """Decode a byte stream split into chunks at any byte."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._pending = 0
        self._offset = 0
        self._invalid_count = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held for the next chunk."""
        return self._pending

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet decoded (the pending tail's start)."""
        return self._offset

    @property
    def invalid_count(self) -> int:
        """Packets rejected as invalid so far."""
        return self._invalid_count

    def feed(self, chunk) -> Packets:
        """Decode ``chunk`` and return the packets it completed."""
        cdef Py_buffer view
        _acquire(chunk, &view)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef object _feed(self, const unsigned char *data, Py_ssize_t size):
        cdef Py_ssize_t held = self._pending
        cdef Py_ssize_t count = (held + size) // _PACKET_SIZE
        cdef Py_ssize_t need
        cdef unsigned char first[_PACKET_SIZE]
        cdef Cursor cur
        cdef Cursor head
        cdef _Columns out
        cdef int rc = 0
        cdef bint strict = bool(self.strict)
        cdef long long offset = self._offset
        if count == 0:
            memcpy(self._tail + held, data, size)
            self._pending = held + size
            return _empty_batch()

        symbol = np.empty(count, _S4)
        side = np.empty(count, _S1)
        quantity = np.empty(count, _INT32)
        price = np.empty(count, _INT32)
        sequence = np.empty(count, _INT32)
        memset(&out, 0, sizeof(out))
        out.symbol = <unsigned char *>_data(symbol)
        out.side = <unsigned char *>_data(side)
        out.quantity = <int32_t *>_data(quantity)
        out.price = <int32_t *>_data(price)
        out.sequence = <int32_t *>_data(sequence)
        out.capacity = count

        cursor_init(&cur, data, size)
        if held:
            # The packet the held tail started: completed by the chunk's first bytes.
            need = _PACKET_SIZE - held
            memcpy(first, self._tail, held)
            memcpy(first + held, cursor_read(&cur, need), need)
            cursor_init(&head, first, _PACKET_SIZE)
            rc = _decode_run(&head, offset, &out, strict)
            offset += _PACKET_SIZE
        if rc == 0:
            if count >= _NOGIL_PACKETS:
                with nogil:
                    rc = _decode_run(&cur, offset, &out, strict)
            else:
                rc = _decode_run(&cur, offset, &out, strict)
        if rc != 0:
            free(out.invalid)
            if rc < 0:
                raise MemoryError()
            # A failed feed consumes nothing: the decoder stays as it was.
            field = _FIELD_NAMES[out.bad_field]
            raise ProtocolError(
                f"invalid {field} in the packet at byte offset {out.bad_offset}",
                out.bad_offset,
                field,
            )

        try:
            invalid = np.empty(out.n_invalid, _INT64)
            if out.n_invalid:
                memcpy(_data(invalid), out.invalid, out.n_invalid * sizeof(int64_t))
        finally:
            free(out.invalid)
        # Whatever the cursor did not take is the start of the next packet.
        memcpy(self._tail, cur.buf, cur.len)
        self._pending = cur.len
        self._offset += count * _PACKET_SIZE
        self._invalid_count += out.n_invalid
        if out.valid < count:
            n = out.valid
            symbol = symbol[:n].copy()
            side = side[:n].copy()
            quantity = quantity[:n].copy()
            price = price[:n].copy()
            sequence = sequence[:n].copy()
        return _from_columns(symbol, side, quantity, price, sequence, invalid)


def decode(buf, strict: bool = False) -> Packets:
    """Decode whole packets; invalid ones are skipped and listed in ``invalid``."""
    size = memoryview(buf).nbytes
    if size % PACKET_SIZE:
        raise ValueError(
            f"cannot decode {size} bytes: not a whole number of {PACKET_SIZE}-byte packets"
        )
    return Decoder(strict).feed(buf)


def encode(packets: Packets) -> bytes:
    """Encode packets as their wire bytes (the inverse of :func:`decode`)."""
    cdef Py_ssize_t n = len(packets)
    cdef Py_ssize_t i
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
    out = PyBytes_FromStringAndSize(NULL, n * _PACKET_SIZE)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    with nogil:
        for i in range(n):
            memcpy(p, sym + 4 * i, 4)
            p[4] = sd[i]
            write_int32(p + 5, qty[i])
            write_int32(p + 9, px[i])
            write_int32(p + 13, seq[i])
            p += _PACKET_SIZE
    return out


def valid_symbols(symbols) -> np.ndarray:
    """Return a mask of a symbol column: True where a symbol keeps the protocol's rule.

    The rule is :data:`packetcore.packets.SYMBOL_RULE`: 1-4 printable ASCII characters,
    NUL-padded to 4 bytes.  ``symbols`` is a numpy bytes column of width 4 at most.
    """
    column = symbol_column(symbols)
    cdef Py_ssize_t n = len(column), k
    mask = np.empty(n, np.bool_)
    cdef const unsigned char *sym = <const unsigned char *>_data(column)
    cdef uint8_t *out = <uint8_t *>_data(mask)
    cdef uint32_t word
    with nogil:
        for k in range(n):
            memcpy(&word, sym + 4 * k, 4)
            out[k] = pc_symbol_bad(word) == 0
    return mask


def gather(wire, keep) -> bytes:
    """Return the wire bytes of the packets whose ``keep`` flag is set, in order."""
    cdef Py_buffer view
    _acquire(wire, &view)
    try:
        return _gather(<const unsigned char *>view.buf, view.len, keep)
    finally:
        PyBuffer_Release(&view)


cdef bytes _gather(const unsigned char *src, Py_ssize_t size, object keep):
    flags = keep_flags(keep)
    cdef Py_ssize_t n = len(flags)
    if flags.ndim != 1 or n * _PACKET_SIZE != size:
        raise ValueError(
            f"keep has {n} flags for {size} bytes: one flag per {PACKET_SIZE}-byte packet"
        )
    cdef const uint8_t *flag = <const uint8_t *>_data(flags)
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total += flag[i]
    total *= _PACKET_SIZE
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *dst = <unsigned char *>PyBytes_AS_STRING(out)
    cdef Py_ssize_t at = 0
    with nogil:
        # Branchless: every packet is copied to the next free slot, which advances only
        # past kept ones (a random loss pattern defeats branch prediction).  While a kept
        # packet remains, the slot lies wholly inside the output.
        for i in range(n):
            if at == total:
                break
            memcpy(dst + at, src + i * _PACKET_SIZE, _PACKET_SIZE)
            at += _PACKET_SIZE * flag[i]
    return out
