# A read cursor over borrowed bytes, after py-pgproto's frb: a pointer and the bytes
# left behind it, with inline readers.  The 17-byte response packet is read through it.

from libc.stdint cimport int32_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(_MSC_VER)
    #include <intrin.h>
    #endif

    /* Integers on the wire are big-endian and packets are unaligned (17 bytes).  The
       shift forms below compile to one load plus bswap (or movbe) on gcc and clang
       and stay correct on any host byte order. */
    static inline uint32_t pc_load_be32(const unsigned char *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16)
             | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    }

    static inline void pc_store_be32(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)(v >> 24);
        p[1] = (unsigned char)(v >> 16);
        p[2] = (unsigned char)(v >> 8);
        p[3] = (unsigned char)v;
    }

    /* Non-zero unless the 4 symbol bytes, loaded in host order, are printable ASCII
       right-padded with NULs, at least one character.  Bitwise only, so that a loop over
       a column of symbols vectorizes: per byte, bit 7 of `nonzero` and `printable` say
       what the byte is, and `gap` marks a non-zero byte after a NUL. */
    static inline uint32_t pc_symbol_bad(uint32_t w) {
        const uint32_t high = 0x80808080u, low = 0x7f7f7f7fu;
        uint32_t lo = w & low;
        uint32_t nonzero = ((lo + low) | w) & high;
        uint32_t printable = ((lo | high) - 0x20202020u) & ~(lo + 0x01010101u) & ~w & high;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        uint32_t first = 0x80000000u;
        uint32_t gap = nonzero & ~((nonzero >> 8) | first);
    #else
        uint32_t first = 0x80u;
        uint32_t gap = nonzero & ~((nonzero << 8) | first);
    #endif
        return (uint32_t)(nonzero != printable) | (uint32_t)(gap != 0)
             | (uint32_t)((nonzero & first) == 0);
    }

    /* Non-zero if rows of the decoded columns hold an invalid packet: one branch-free
       pass per column, which the compiler vectorizes (also for AVX2, chosen at load
       time, where gcc can clone functions per target). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    __attribute__((target_clones("avx2", "default")))
    #endif
    static uint32_t pc_any_invalid(const uint32_t *symbol, const unsigned char *side,
                                   const int32_t *sequence, Py_ssize_t n) {
        uint32_t bad = 0;
        Py_ssize_t k;
        for (k = 0; k < n; k++)
            bad |= pc_symbol_bad(symbol[k]);
        for (k = 0; k < n; k++)
            bad |= (uint32_t)((side[k] != 0x42) & (side[k] != 0x53));
        for (k = 0; k < n; k++)
            bad |= (uint32_t)(sequence[k] < 1);
        return bad;
    }

    /* Copy n packets into the columns, unchecked.  Stores, not loads, bound this loop
       (five per packet, one of them a single byte), so on little-endian hosts eight
       packets go at a time and each column is written in 8-byte words: 17 stores per
       8 packets instead of 40.  The columns never alias the packets (restrict). */
    static inline void pc_copy_packets(
            const unsigned char *restrict p, Py_ssize_t n, uint32_t *restrict symbol,
            unsigned char *restrict side, int32_t *restrict quantity,
            int32_t *restrict price, int32_t *restrict sequence) {
        Py_ssize_t k = 0;
    #if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        for (; k + 8 <= n; k += 8, p += 8 * 17) {
            uint64_t sides = 0;
            int j;
            for (j = 0; j < 8; j += 2) {
                const unsigned char *a = p + j * 17, *b = a + 17;
                uint32_t sym_a, sym_b, seq_a, seq_b;
                uint64_t pair_a, pair_b, word;
                memcpy(&sym_a, a, 4);
                memcpy(&sym_b, b, 4);
                word = (uint64_t)sym_a | ((uint64_t)sym_b << 32);
                memcpy(symbol + k + j, &word, 8);
                sides |= ((uint64_t)a[4] << (8 * j)) | ((uint64_t)b[4] << (8 * j + 8));
                /* quantity and price are adjacent: one load and one byte swap put
                   quantity in the high half and price in the low half. */
                memcpy(&pair_a, a + 5, 8);
                memcpy(&pair_b, b + 5, 8);
                pair_a = __builtin_bswap64(pair_a);
                pair_b = __builtin_bswap64(pair_b);
                word = (pair_a >> 32) | (pair_b & 0xffffffff00000000u);
                memcpy(quantity + k + j, &word, 8);
                word = (pair_a & 0xffffffffu) | (pair_b << 32);
                memcpy(price + k + j, &word, 8);
                seq_a = pc_load_be32(a + 13);
                seq_b = pc_load_be32(b + 13);
                word = (uint64_t)seq_a | ((uint64_t)seq_b << 32);
                memcpy(sequence + k + j, &word, 8);
            }
            memcpy(side + k, &sides, 8);
        }
    #endif
        for (; k < n; k++, p += 17) {
            uint32_t word;
            memcpy(&word, p, 4);
            symbol[k] = word;
            side[k] = p[4];
            quantity[k] = (int32_t)pc_load_be32(p + 5);
            price[k] = (int32_t)pc_load_be32(p + 9);
            sequence[k] = (int32_t)pc_load_be32(p + 13);
        }
    }

    /* Index of the lowest set bit of a non-zero word. */
    static inline int pc_ctz64(uint64_t w) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_ctzll(w);
    #elif defined(_MSC_VER) && defined(_WIN64)
        unsigned long i; _BitScanForward64(&i, w); return (int)i;
    #else
        int i = 0; while (!(w & 1)) { w >>= 1; i++; } return i;
    #endif
    }

    /* Bits set in a word. */
    static inline int pc_popcount64(uint64_t w) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_popcountll(w);
    #else
        int n = 0; while (w) { w &= w - 1; n++; } return n;
    #endif
    }
    """
    uint32_t pc_load_be32(const unsigned char *p) noexcept nogil
    void pc_store_be32(unsigned char *p, uint32_t v) noexcept nogil
    uint32_t pc_symbol_bad(uint32_t w) noexcept nogil
    uint32_t pc_any_invalid(
        const uint32_t *symbol, const unsigned char *side, const int32_t *sequence, Py_ssize_t n
    ) noexcept nogil
    void pc_copy_packets(
        const unsigned char *p, Py_ssize_t n, uint32_t *symbol, unsigned char *side,
        int32_t *quantity, int32_t *price, int32_t *sequence
    ) noexcept nogil
    int pc_ctz64(uint64_t w) noexcept nogil
    int pc_popcount64(uint64_t w) noexcept nogil


cdef struct Cursor:
    const unsigned char *buf
    Py_ssize_t len


cdef inline void cursor_init(Cursor *cur, const unsigned char *buf, Py_ssize_t n) noexcept nogil:
    cur.buf = buf
    cur.len = n


cdef inline const unsigned char *cursor_read(Cursor *cur, Py_ssize_t n) noexcept nogil:
    # NULL when fewer than n bytes are left: a short read never moves the cursor.
    cdef const unsigned char *at
    if cur.len < n:
        return NULL
    at = cur.buf
    cur.buf += n
    cur.len -= n
    return at


cdef inline int32_t read_int32(const unsigned char *p) noexcept nogil:
    return <int32_t>pc_load_be32(p)


cdef inline void write_int32(unsigned char *p, int32_t v) noexcept nogil:
    pc_store_be32(p, <uint32_t>v)
