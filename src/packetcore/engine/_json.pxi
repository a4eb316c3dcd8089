# to_json: the output.json document, byte for byte what json.dumps writes per record.
# Included by _engine.pyx.

from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF

cdef extern from "Python.h":
    # Raw forms, so the document can be written in place and shrunk once at the end.
    PyObject *_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n) except NULL
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *o) noexcept nogil
    int _PyBytes_Resize(PyObject **o, Py_ssize_t n) except -1

cdef extern from *:
    """
    /* The fixed text of one record, as json.dumps(record) spaces it. */
    #define PC_PUT(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) + sizeof(lit) - 1)
    static inline unsigned char *pc_put_open(unsigned char *p) {
        return PC_PUT(p, "{\\"symbol\\": \\"");
    }
    static inline unsigned char *pc_put_side_key(unsigned char *p) {
        return PC_PUT(p, "\\", \\"buysellindicator\\": \\"");
    }
    static inline unsigned char *pc_put_quantity_key(unsigned char *p) {
        return PC_PUT(p, "\\", \\"quantity\\": ");
    }
    static inline unsigned char *pc_put_price_key(unsigned char *p) {
        return PC_PUT(p, ", \\"price\\": ");
    }
    static inline unsigned char *pc_put_sequence_key(unsigned char *p) {
        return PC_PUT(p, ", \\"packetSequence\\": ");
    }
    static inline unsigned char *pc_put_close(unsigned char *p) {
        return PC_PUT(p, "},\\n");
    }

    /* A document of a million records is ~100 MB: asking for transparent huge pages on
       the output buffer saves most of the page faults of first touching it (Linux only;
       elsewhere, or with THP off, this does nothing). */
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    static inline void pc_advise_huge(void *p, size_t n) {
    #if defined(MADV_HUGEPAGE)
        const uintptr_t huge = (uintptr_t)1 << 21;
        uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
        uintptr_t end = ((uintptr_t)p + n) & ~(huge - 1);
        if (end > start)
            (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
    #else
        (void)p; (void)n;
    #endif
    }

    static const char pc_two_digits[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    """
    unsigned char *pc_put_open(unsigned char *p) noexcept nogil
    unsigned char *pc_put_side_key(unsigned char *p) noexcept nogil
    unsigned char *pc_put_quantity_key(unsigned char *p) noexcept nogil
    unsigned char *pc_put_price_key(unsigned char *p) noexcept nogil
    unsigned char *pc_put_sequence_key(unsigned char *p) noexcept nogil
    unsigned char *pc_put_close(unsigned char *p) noexcept nogil
    void pc_advise_huge(void *p, size_t n) noexcept nogil
    const char *pc_two_digits

# The most one record can take: the fixed text (85 bytes with the separator), a symbol
# of 4 escaped bytes, an escaped side and three int32s of up to 11 characters.
cdef enum:
    _RECORD_MAX = 85 + 4 * 6 + 6 + 3 * 11
    # Escapes are copied 8 bytes at a time: room for the overshoot.
    _SLACK = 16

# Output buffers from this size on ask for huge pages.
cdef Py_ssize_t _HUGE_OUTPUT = 8 << 20

# Per byte read as a latin-1 code point: its JSON string form (ensure_ascii), and length.
cdef unsigned char _ESCAPE[256][8]
cdef unsigned char _ESCAPE_LEN[256]


cdef _init_escapes():
    cdef int b
    cdef bytes text
    escapes = {0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n"}
    escapes[0x0D] = b"\\r"
    escapes[0x09] = b"\\t"
    for b in range(256):
        if b in escapes:
            text = escapes[b]
        elif 0x20 <= b < 0x7F:
            text = bytes((b,))
        else:
            text = b"\\u%04x" % b
        memset(_ESCAPE[b], 0, 8)
        memcpy(_ESCAPE[b], <const char *>text, len(text))
        _ESCAPE_LEN[b] = len(text)


_init_escapes()


cdef inline unsigned char *_put_text(
    unsigned char *p, const unsigned char *s, Py_ssize_t width
) noexcept nogil:
    # A fixed-width byte field as a JSON string body: trailing NULs dropped (numpy's S
    # dtypes), every byte escaped as json.dumps does.
    cdef Py_ssize_t i, n = width
    cdef unsigned char c
    while n > 0 and s[n - 1] == 0:
        n -= 1
    for i in range(n):
        c = s[i]
        if _ESCAPE_LEN[c] == 1:
            p[0] = c
            p += 1
        else:
            memcpy(p, _ESCAPE[c], 8)
            p += _ESCAPE_LEN[c]
    return p


cdef inline int _symbol_length(const unsigned char *p) noexcept nogil:
    # Length of the symbol without its NUL padding: the trailing zero bytes of the
    # big-endian word.  0 for an all-NUL field.
    cdef uint32_t word = pc_load_be32(p)
    return 0 if word == 0 else 4 - (pc_ctz64(word) >> 3)


# 1 for a byte json.dumps writes as itself, by byte value.
cdef unsigned char _PLAIN[256]
for _b in range(256):
    _PLAIN[_b] = _ESCAPE_LEN[_b] == 1


cdef inline unsigned char *_put_symbol(unsigned char *p, const unsigned char *s) noexcept nogil:
    # The common symbol, 1..4 plain characters then NULs, goes in one 4-byte copy.
    cdef int n = _symbol_length(s)
    cdef unsigned int plain = (
        _PLAIN[s[0]] | (_PLAIN[s[1]] << 1) | (_PLAIN[s[2]] << 2) | (_PLAIN[s[3]] << 3)
    )
    cdef unsigned int need = (1u << n) - 1
    if (plain & need) == need:
        memcpy(p, s, 4)
        return p + n
    return _put_text(p, s, n)


cdef inline unsigned char *_put_side(unsigned char *p, unsigned char c) noexcept nogil:
    # numpy's S1 reads a NUL side as b"", an empty string.
    if _PLAIN[c]:
        p[0] = c
        return p + 1
    if c == 0:
        return p
    memcpy(p, _ESCAPE[c], 8)
    return p + _ESCAPE_LEN[c]


cdef inline unsigned char *_put_upto4(unsigned char *p, uint32_t v) noexcept nogil:
    # 0 <= v < 10000, without leading zeros.
    cdef uint32_t high
    if v < 100:
        if v < 10:
            p[0] = <unsigned char>(0x30 + v)
            return p + 1
        memcpy(p, pc_two_digits + 2 * v, 2)
        return p + 2
    high = v // 100
    v -= high * 100
    if high < 10:
        p[0] = <unsigned char>(0x30 + high)
        memcpy(p + 1, pc_two_digits + 2 * v, 2)
        return p + 3
    memcpy(p, pc_two_digits + 2 * high, 2)
    memcpy(p + 2, pc_two_digits + 2 * v, 2)
    return p + 4


cdef inline unsigned char *_put_4(unsigned char *p, uint32_t v) noexcept nogil:
    # 0 <= v < 10000 as exactly four digits.
    cdef uint32_t high = v // 100
    memcpy(p, pc_two_digits + 2 * high, 2)
    memcpy(p + 2, pc_two_digits + 2 * (v - high * 100), 2)
    return p + 4


cdef inline unsigned char *_put_int(unsigned char *p, int32_t v) noexcept nogil:
    # Decimal in groups of four digits, two digits per table lookup: the groups'
    # divisions do not wait on each other.
    cdef uint32_t u, top, high
    if v < 0:
        p[0] = 0x2D
        p += 1
        u = 0u - <uint32_t>v
    else:
        u = <uint32_t>v
    if u < 10000:
        return _put_upto4(p, u)
    if u < 100000000:
        high = u // 10000
        return _put_4(_put_upto4(p, high), u - high * 10000)
    top = u // 100000000
    u -= top * 100000000
    high = u // 10000
    return _put_4(_put_4(_put_upto4(p, top), high), u - high * 10000)


cdef unsigned char *_put_records(
    unsigned char *p,
    const unsigned char *symbol,
    const unsigned char *side,
    const int32_t *quantity,
    const int32_t *price,
    const int32_t *sequence,
    const cnp.npy_intp *order,
    Py_ssize_t n,
    bint lines,
) noexcept nogil:
    # One line per record, each followed by ",\n" (the caller drops the last comma), or
    # by "\n" alone for the one-record-a-line form.
    cdef Py_ssize_t k, i
    for k in range(n):
        i = order[k] if order != NULL else k
        p = pc_put_open(p)
        p = _put_symbol(p, symbol + 4 * i)
        p = pc_put_side_key(p)
        p = _put_side(p, side[i])
        p = pc_put_quantity_key(p)
        p = _put_int(p, quantity[i])
        p = pc_put_price_key(p)
        p = _put_int(p, price[i])
        p = pc_put_sequence_key(p)
        p = _put_int(p, sequence[i])
        if lines:
            p[0] = 0x7D  # "}\n"
            p[1] = 0x0A
            p += 2
        else:
            p = pc_put_close(p)
    return p


def to_json(packets: Packets) -> bytes:
    """Return the ``output.json`` document: one object per packet, in sequence order.

    Each line is what ``json.dumps`` writes for that packet's record.
    """
    cdef Py_ssize_t n = len(packets)
    if n == 0:
        return b"[]\n"
    symbol = _column(packets.symbol, _S4)
    side = _column(packets.buysellindicator, _S1)
    quantity = _column(packets.quantity, _INT32)
    price = _column(packets.price, _INT32)
    sequence = _column(packets.sequence, _INT32)
    if not len(symbol) == len(side) == len(quantity) == len(price) == n:
        raise ValueError("packet columns differ in length")
    cdef const int32_t *seq = <const int32_t *>_data(sequence)
    cdef Py_ssize_t k
    cdef bint ordered = True
    for k in range(1, n):
        if seq[k] < seq[k - 1]:
            ordered = False
            break
    # Already in order is the common case; else a stable sort's permutation, as _pure.
    cdef cnp.npy_intp *perm = NULL
    if not ordered:
        order = np.argsort(sequence, kind="stable")
        perm = <cnp.npy_intp *>_data(order)

    cdef Py_ssize_t size = 2 + n * _RECORD_MAX + 2 + _SLACK
    cdef PyObject *doc = _bytes_new(NULL, size)
    cdef unsigned char *start = <unsigned char *>_bytes_data(doc)
    if size >= _HUGE_OUTPUT:
        pc_advise_huge(start, size)
    cdef unsigned char *p = start
    cdef const unsigned char *sym = <const unsigned char *>_data(symbol)
    cdef const unsigned char *sd = <const unsigned char *>_data(side)
    cdef const int32_t *qty = <const int32_t *>_data(quantity)
    cdef const int32_t *px = <const int32_t *>_data(price)
    with nogil:
        p[0] = 0x5B  # "[\n"
        p[1] = 0x0A
        p = _put_records(p + 2, sym, sd, qty, px, seq, perm, n, False)
        # The last record's ",\n" becomes "\n]\n".
        p -= 2
        p[0] = 0x0A
        p[1] = 0x5D
        p[2] = 0x0A
        p += 3
    _PyBytes_Resize(&doc, p - start)
    result = <object>doc
    Py_XDECREF(doc)
    return result
