# Text forms of a feed: text_rows (json, ndjson, csv records) and TextParser, their
# streaming reader.  Included by _engine.pyx after _json.pxi, whose escape and number
# code the writers share.

from ..errors import FeedError
from ._pure_text import TEXT_FORMS, text_error

cdef enum:
    _FORM_JSON = 0
    _FORM_NDJSON = 1
    _FORM_CSV = 2

    # The most one csv row takes: a quoted symbol of 4 doubled quotes, a quoted side,
    # three int32s of up to 11 characters, 4 commas and the newline.
    _CSV_MAX = 10 + 4 + 3 * 11 + 4 + 1

    # The shortest record each form can hold: capacity for a block's records.
    _JSON_MIN = 79
    _CSV_MIN = 9

    # Scanner results.
    _OK = 0
    _MORE = 1
    _ERROR = 2
    _FULL = 3

    # Scanner states: before the document (json "[", csv header; ndjson at a line's
    # start), after "[", after a record, after ",", after "]".
    _ST_START = 0
    _ST_FIRST = 1
    _ST_NEXT = 2
    _ST_COMMA = 3
    _ST_DONE = 4

    # Error codes, as _pure_text.text_error words them.
    _E_SYNTAX = 1
    _E_NOT_ARRAY = 2
    _E_NOT_OBJECT = 3
    _E_UNKNOWN_KEY = 4
    _E_REPEATED = 5
    _E_MISSING = 6
    _E_VALUE = 7
    _E_FIELDS = 8
    _E_HEADER = 9

    # Field ids, in JSON_KEYS order.
    _F_SYMBOL = 0
    _F_SIDE = 1
    _F_QUANTITY = 2
    _F_PRICE = 3
    _F_SEQUENCE = 4

cdef dict _FORM_IDS = {"json": _FORM_JSON, "ndjson": _FORM_NDJSON, "csv": _FORM_CSV}
cdef bytes _CSV_HEADER = b"symbol,buysellindicator,quantity,price,packetSequence"


# ---------------------------------------------------------------------------- writers

cdef inline bint _csv_needs_quotes(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    # RFC 4180: a field holding a comma, a quote or a line break is quoted.
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] == 0x2C or s[i] == 0x22 or s[i] == 0x0A or s[i] == 0x0D:
            return True
    return False


cdef inline unsigned char *_put_csv_field(
    unsigned char *p, const unsigned char *s, Py_ssize_t width
) noexcept nogil:
    # A fixed-width byte field without its NUL padding, quoted only when it must be.
    cdef Py_ssize_t i, n = width
    while n > 0 and s[n - 1] == 0:
        n -= 1
    if not _csv_needs_quotes(s, n):
        memcpy(p, s, width)
        return p + n
    p[0] = 0x22
    p += 1
    for i in range(n):
        if s[i] == 0x22:
            p[0] = 0x22
            p += 1
        p[0] = s[i]
        p += 1
    p[0] = 0x22
    return p + 1


cdef unsigned char *_put_csv_rows(
    unsigned char *p,
    const unsigned char *symbol,
    const unsigned char *side,
    const int32_t *quantity,
    const int32_t *price,
    const int32_t *sequence,
    Py_ssize_t n,
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        p = _put_csv_field(p, symbol + 4 * i, 4)
        p[0] = 0x2C
        p = _put_csv_field(p + 1, side + i, 1)
        p[0] = 0x2C
        p = _put_int(p + 1, quantity[i])
        p[0] = 0x2C
        p = _put_int(p + 1, price[i])
        p[0] = 0x2C
        p = _put_int(p + 1, sequence[i])
        p[0] = 0x0A
        p += 1
    return p


cdef int _form_id(object form) except -1:
    try:
        return _FORM_IDS[form]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown text form {form!r}: expected one of {', '.join(TEXT_FORMS)}"
        ) from None


def text_rows(packets: Packets, form: str) -> bytes:
    """Return the packets' records as ``form`` text, in the order given, without framing."""
    cdef int fid = _form_id(form)
    cdef Py_ssize_t n = len(packets)
    if n == 0:
        return b""
    symbol = _column(packets.symbol, _S4)
    side = _column(packets.buysellindicator, _S1)
    quantity = _column(packets.quantity, _INT32)
    price = _column(packets.price, _INT32)
    sequence = _column(packets.sequence, _INT32)
    if not len(symbol) == len(side) == len(quantity) == len(price) == n:
        raise ValueError("packet columns differ in length")
    cdef Py_ssize_t size = n * (_CSV_MAX if fid == _FORM_CSV else _RECORD_MAX) + _SLACK
    cdef PyObject *doc = _bytes_new(NULL, size)
    cdef unsigned char *start = <unsigned char *>_bytes_data(doc)
    if size >= _HUGE_OUTPUT:
        pc_advise_huge(start, size)
    cdef unsigned char *p = start
    cdef const unsigned char *sym = <const unsigned char *>_data(symbol)
    cdef const unsigned char *sd = <const unsigned char *>_data(side)
    cdef const int32_t *qty = <const int32_t *>_data(quantity)
    cdef const int32_t *px = <const int32_t *>_data(price)
    cdef const int32_t *seq = <const int32_t *>_data(sequence)
    with nogil:
        if fid == _FORM_CSV:
            p = _put_csv_rows(p, sym, sd, qty, px, seq, n)
        elif fid == _FORM_NDJSON:
            p = _put_records(p, sym, sd, qty, px, seq, NULL, n, True)
        else:
            # The last record's ",\n" is the streaming writer's to add.
            p = _put_records(p, sym, sd, qty, px, seq, NULL, n, False) - 2
    _PyBytes_Resize(&doc, p - start)
    result = <object>doc
    Py_XDECREF(doc)
    return result


# ---------------------------------------------------------------------------- parser

cdef struct _Scan:
    const unsigned char *b
    Py_ssize_t n
    # Committed position: everything before it is parsed for good.
    Py_ssize_t pos
    bint final
    int form
    int state
    # Records completed in the stream so far.
    long long index
    unsigned char *symbol
    unsigned char *side
    int32_t *quantity
    int32_t *price
    int32_t *sequence
    Py_ssize_t count
    Py_ssize_t capacity
    # The error found: its code, record, field, the token at fault and where.
    int err
    long long err_index
    int err_field
    Py_ssize_t tok0
    Py_ssize_t tok1
    Py_ssize_t err_pos


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x0A or c == 0x0D or c == 0x09


cdef inline Py_ssize_t _skip_ws(const unsigned char *b, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(b[i]):
        i += 1
    return i


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return 0x30 <= c <= 0x39


cdef inline bint _is_number_char(unsigned char c) noexcept nogil:
    return _is_digit(c) or c == 0x2D or c == 0x2B or c == 0x2E or c == 0x65 or c == 0x45


cdef inline bint _is_letter(unsigned char c) noexcept nogil:
    return 0x61 <= c <= 0x7A or 0x41 <= c <= 0x5A


cdef inline int _hex(unsigned char c) noexcept nogil:
    if _is_digit(c):
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    return -1


cdef inline int _syntax(_Scan *s, Py_ssize_t at, long long index) noexcept nogil:
    s.err = _E_SYNTAX
    s.err_pos = at
    s.err_index = index
    s.tok0 = at
    s.tok1 = at + 1 if at < s.n else at
    return _ERROR


cdef inline int _fail(
    _Scan *s, int code, int field, Py_ssize_t tok0, Py_ssize_t tok1, long long index
) noexcept nogil:
    s.err = code
    s.err_field = field
    s.tok0 = tok0
    s.tok1 = tok1
    s.err_pos = tok0
    s.err_index = index
    return _ERROR


cdef int _extent(_Scan *s, Py_ssize_t i, Py_ssize_t *end) noexcept nogil:
    # The end of the JSON value token at i: a whole string, a number's or a literal's
    # characters, or the one opening bracket of an array or object.
    cdef const unsigned char *b = s.b
    cdef Py_ssize_t n = s.n
    cdef unsigned char c = b[i]
    cdef Py_ssize_t j = i + 1
    if c == 0x22:
        while True:
            if j >= n:
                return _MORE
            if b[j] == 0x5C:
                j += 2
            elif b[j] == 0x22:
                end[0] = j + 1
                return _OK
            else:
                j += 1
    if c == 0x5B or c == 0x7B:
        end[0] = j
        return _OK
    if _is_number_char(c):
        while j < n and _is_number_char(b[j]):
            j += 1
    elif _is_letter(c):
        while j < n and _is_letter(b[j]):
            j += 1
    else:
        return _syntax(s, i, s.index)
    if j >= n and not s.final:
        return _MORE
    end[0] = j
    return _OK


cdef int _decode_string(
    _Scan *s, Py_ssize_t i, Py_ssize_t end, unsigned char *out, int cap, int *length, bint *bad
) noexcept nogil:
    # The characters of the JSON string body b[i:end] as bytes (a character is one
    # latin-1 byte): up to cap of them into out, their count into length; bad when
    # one is NUL or above \u00ff.
    cdef const unsigned char *b = s.b
    cdef int count = 0, h, k
    cdef unsigned int cp
    cdef unsigned char c
    bad[0] = False
    while i < end:
        c = b[i]
        if c == 0x5C:
            if i + 1 >= end:
                return _syntax(s, i, s.index)
            c = b[i + 1]
            if c == 0x75:  # \uXXXX
                if i + 6 > end:
                    return _syntax(s, i, s.index)
                cp = 0
                for k in range(4):
                    h = _hex(b[i + 2 + k])
                    if h < 0:
                        return _syntax(s, i + 2 + k, s.index)
                    cp = (cp << 4) | <unsigned int>h
                i += 6
            else:
                if c == 0x22 or c == 0x5C or c == 0x2F:
                    cp = c
                elif c == 0x62:
                    cp = 0x08
                elif c == 0x66:
                    cp = 0x0C
                elif c == 0x6E:
                    cp = 0x0A
                elif c == 0x72:
                    cp = 0x0D
                elif c == 0x74:
                    cp = 0x09
                else:
                    return _syntax(s, i + 1, s.index)
                i += 2
        elif c < 0x20:
            return _syntax(s, i, s.index)
        elif c < 0x80:
            cp = c
            i += 1
        elif (c == 0xC2 or c == 0xC3) and i + 1 < end and (b[i + 1] & 0xC0) == 0x80:
            # UTF-8 of U+0080..U+00FF, as a writer without ensure_ascii puts it.
            cp = ((c & 0x1F) << 6) | (b[i + 1] & 0x3F)
            i += 2
        else:
            # Any other non-ASCII byte starts a character beyond one byte.
            cp = 0x100
            i += 1
        if cp == 0 or cp > 0xFF:
            bad[0] = True
        if count < cap:
            out[count] = <unsigned char>cp
        count += 1
    length[0] = count
    return _OK


cdef inline bint _parse_int(
    const unsigned char *t, Py_ssize_t n, long long low, long long *value
) noexcept nogil:
    # An integer as JSON writes it (-?(0|[1-9][0-9]*)) within low..int32 max.
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef long long v = 0
    if n > 0 and t[0] == 0x2D:
        negative = True
        i = 1
    if i >= n or n - i > 10 or (t[i] == 0x30 and n - i > 1):
        return False
    while i < n:
        if not _is_digit(t[i]):
            return False
        v = v * 10 + (t[i] - 0x30)
        i += 1
    if negative:
        v = -v
    if v < low or v > 2147483647:
        return False
    value[0] = v
    return True


cdef inline long long _field_low(int field) noexcept nogil:
    return 1 if field == _F_SEQUENCE else -2147483648


cdef inline int _key_id(const unsigned char *k, int n) noexcept nogil:
    if n == 6 and memcmp(k, b"symbol", 6) == 0:
        return _F_SYMBOL
    if n == 16 and memcmp(k, b"buysellindicator", 16) == 0:
        return _F_SIDE
    if n == 8 and memcmp(k, b"quantity", 8) == 0:
        return _F_QUANTITY
    if n == 5 and memcmp(k, b"price", 5) == 0:
        return _F_PRICE
    if n == 14 and memcmp(k, b"packetSequence", 14) == 0:
        return _F_SEQUENCE
    return -1


cdef struct _Record:
    unsigned char symbol[4]
    unsigned char side
    long long values[5]


cdef inline int _store(_Scan *s, _Record *r) noexcept nogil:
    if s.count >= s.capacity:
        return _FULL
    memcpy(s.symbol + 4 * s.count, r.symbol, 4)
    s.side[s.count] = r.side
    s.quantity[s.count] = <int32_t>r.values[_F_QUANTITY]
    s.price[s.count] = <int32_t>r.values[_F_PRICE]
    s.sequence[s.count] = <int32_t>r.values[_F_SEQUENCE]
    s.count += 1
    s.index += 1
    return _OK


cdef int _check_field(
    _Scan *s, int field, const unsigned char *t, int length, bint bad, _Record *r
) noexcept nogil:
    # 0 when the field's content t[:length] is valid (and stored in r), else 1.
    cdef long long v
    cdef int k
    if field == _F_SYMBOL:
        # packets.SYMBOL_RULE: 1-4 printable ASCII characters.
        if bad or length < 1 or length > 4:
            return 1
        for k in range(length):
            if t[k] < 0x20 or t[k] > 0x7E:
                return 1
        memset(r.symbol, 0, 4)
        memcpy(r.symbol, t, length)
        return 0
    if field == _F_SIDE:
        if bad or length != 1 or (t[0] != 0x42 and t[0] != 0x53):
            return 1
        r.side = t[0]
        return 0
    if not _parse_int(t, length, _field_low(field), &v):
        return 1
    r.values[field] = v
    return 0


cdef int _json_value(_Scan *s, int field, Py_ssize_t i, Py_ssize_t *end, _Record *r) noexcept nogil:
    cdef unsigned char text[16]
    cdef int length = 0
    cdef bint bad = False
    cdef int rc = _extent(s, i, end)
    if rc != _OK:
        return rc
    if field <= _F_SIDE:
        if s.b[i] != 0x22:
            return _fail(s, _E_VALUE, field, i, end[0], s.index)
        rc = _decode_string(s, i + 1, end[0] - 1, text, 16, &length, &bad)
        if rc != _OK:
            return rc
        if _check_field(s, field, text, length, bad, r):
            return _fail(s, _E_VALUE, field, i, end[0], s.index)
        return _OK
    if s.b[i] == 0x22 or end[0] - i > 11 or _check_field(
        s, field, s.b + i, <int>(end[0] - i), False, r
    ):
        return _fail(s, _E_VALUE, field, i, end[0], s.index)
    return _OK


cdef int _json_record(_Scan *s, Py_ssize_t i) noexcept nogil:
    # The object at b[i] == "{": stored and committed, or _MORE with nothing changed.
    cdef const unsigned char *b = s.b
    cdef Py_ssize_t n = s.n, end
    cdef unsigned int seen = 0
    cdef int field, rc, length
    cdef bint bad
    cdef unsigned char key[16]
    cdef _Record r
    memset(&r, 0, sizeof(r))
    i = _skip_ws(b, i + 1, n)
    if i >= n:
        return _MORE
    if b[i] != 0x7D:
        while True:
            if b[i] != 0x22:
                return _syntax(s, i, s.index)
            rc = _extent(s, i, &end)
            if rc != _OK:
                return rc
            rc = _decode_string(s, i + 1, end - 1, key, 16, &length, &bad)
            if rc != _OK:
                return rc
            field = -1 if bad or length > 16 else _key_id(key, length)
            if field < 0:
                return _fail(s, _E_UNKNOWN_KEY, -1, i + 1, end - 1, s.index)
            if seen & (1u << field):
                return _fail(s, _E_REPEATED, field, i + 1, end - 1, s.index)
            seen |= 1u << field
            i = _skip_ws(b, end, n)
            if i >= n:
                return _MORE
            if b[i] != 0x3A:
                return _syntax(s, i, s.index)
            i = _skip_ws(b, i + 1, n)
            if i >= n:
                return _MORE
            rc = _json_value(s, field, i, &end, &r)
            if rc != _OK:
                return rc
            i = _skip_ws(b, end, n)
            if i >= n:
                return _MORE
            if b[i] == 0x2C:
                i = _skip_ws(b, i + 1, n)
                if i >= n:
                    return _MORE
                continue
            if b[i] != 0x7D:
                return _syntax(s, i, s.index)
            break
    if seen != 31:
        field = 0
        while seen & (1u << field):
            field += 1
        return _fail(s, _E_MISSING, field, i, i + 1, s.index)
    rc = _store(s, &r)
    if rc == _OK:
        s.pos = i + 1
    return rc


cdef int _json_element(_Scan *s, Py_ssize_t i) noexcept nogil:
    # A record where one is due: an object, else the error naming what is there.
    cdef Py_ssize_t end
    cdef int rc
    cdef unsigned char c = s.b[i]
    if c == 0x7B:
        return _json_record(s, i)
    if c == 0x5D or c == 0x2C or c == 0x3A or c == 0x7D:
        return _syntax(s, i, -1)
    rc = _extent(s, i, &end)
    if rc != _OK:
        return rc
    return _fail(s, _E_NOT_OBJECT, -1, i, end, s.index)


cdef int _csv_field(
    _Scan *s, Py_ssize_t i, unsigned char *out, int *length, Py_ssize_t *end,
    const unsigned char **text
) noexcept nogil:
    # One field at b[i]: its content (text, length; quoted content unescaped into out,
    # at most 16 bytes kept) and end, the index of its terminator.
    cdef const unsigned char *b = s.b
    cdef Py_ssize_t n = s.n, j
    cdef int count = 0
    if i < n and b[i] == 0x22:
        j = i + 1
        while True:
            if j >= n:
                return _syntax(s, j, s.index) if s.final else _MORE
            if b[j] == 0x22:
                if j + 1 >= n and not s.final:
                    return _MORE
                if j + 1 < n and b[j + 1] == 0x22:
                    j += 1
                else:
                    j += 1
                    break
            if count < 16:
                out[count] = b[j]
            count += 1
            j += 1
        if j < n and b[j] != 0x2C and b[j] != 0x0A and b[j] != 0x0D:
            return _syntax(s, j, s.index)
        text[0] = out
        length[0] = count
        end[0] = j
        return _OK
    j = i
    while j < n and b[j] != 0x2C and b[j] != 0x0A and b[j] != 0x0D and b[j] != 0x22:
        j += 1
    if j < n and b[j] == 0x22:
        return _syntax(s, j, s.index)
    if j >= n and not s.final:
        return _MORE
    text[0] = b + i
    length[0] = <int>min(j - i, <Py_ssize_t>0x7FFF)
    end[0] = j
    return _OK


cdef int _csv_row(_Scan *s, Py_ssize_t i) noexcept nogil:
    # The row at b[i]: stored and committed, or _MORE with nothing changed.
    cdef const unsigned char *b = s.b
    cdef Py_ssize_t n = s.n, end
    cdef int field, rc, length
    cdef unsigned char out[16]
    cdef const unsigned char *text
    cdef _Record r
    memset(&r, 0, sizeof(r))
    for field in range(5):
        rc = _csv_field(s, i, out, &length, &end, &text)
        if rc != _OK:
            return rc
        if _check_field(s, field, text, length, False, &r):
            return _fail(s, _E_VALUE, field, i, end, s.index)
        if field < 4:
            if end >= n or b[end] != 0x2C:
                return _fail(s, _E_FIELDS, -1, i, end, s.index)
            i = end + 1
    i = end
    if i < n and b[i] == 0x2C:
        return _fail(s, _E_FIELDS, -1, i, i + 1, s.index)
    if i < n and b[i] == 0x0D:
        if i + 1 >= n and not s.final:
            return _MORE
        i += 1
    if i < n:
        if b[i] != 0x0A:
            return _syntax(s, i, s.index)
        i += 1
    rc = _store(s, &r)
    if rc == _OK:
        s.pos = i
    return rc


cdef int _csv_header(_Scan *s) noexcept nogil:
    # The first line, exactly the header, ended by LF, CRLF or the end of the input.
    cdef const unsigned char *b = s.b + s.pos
    cdef Py_ssize_t n = s.n - s.pos
    cdef Py_ssize_t h = 53  # len(_CSV_HEADER)
    cdef Py_ssize_t line = 0
    cdef Py_ssize_t text
    while line < n and b[line] != 0x0A:
        line += 1
    if line >= n and not s.final:
        return _MORE if n <= h + 1 else _fail(s, _E_HEADER, -1, s.pos, s.pos, -1)
    text = line - 1 if line > 0 and b[line - 1] == 0x0D else line
    if text != h or memcmp(b, b"symbol,buysellindicator,quantity,price,packetSequence", h) != 0:
        return _fail(s, _E_HEADER, -1, s.pos, s.pos, -1)
    s.pos += min(line + 1, n)
    s.state = _ST_NEXT
    return _OK


cdef int _scan(_Scan *s) noexcept nogil:
    # Parse records from s.pos on until the input ends (_MORE), is full or fails.
    cdef const unsigned char *b = s.b
    cdef Py_ssize_t n = s.n, i
    cdef int rc
    cdef unsigned char c
    while True:
        i = s.pos
        if s.form == _FORM_CSV:
            if s.state == _ST_START:
                rc = _csv_header(s)
                if rc != _OK:
                    return rc
                continue
            if i >= n:
                return _MORE
            if b[i] == 0x0A:
                # A blank line holds no record.
                s.pos = i + 1
                continue
            rc = _csv_row(s, i)
            if rc != _OK:
                return rc
            continue
        if s.form == _FORM_NDJSON:
            if s.state == _ST_NEXT:
                while i < n and (b[i] == 0x20 or b[i] == 0x09 or b[i] == 0x0D):
                    i += 1
                s.pos = i
                if i >= n:
                    return _MORE
                if b[i] != 0x0A:
                    return _syntax(s, i, -1)
                s.pos = i + 1
                s.state = _ST_START
                continue
            i = _skip_ws(b, i, n)
            s.pos = i
            if i >= n:
                return _MORE
            rc = _json_element(s, i)
            if rc != _OK:
                return rc
            s.state = _ST_NEXT
            continue
        i = _skip_ws(b, i, n)
        s.pos = i
        if i >= n:
            return _MORE
        c = b[i]
        if s.state == _ST_START:
            if c != 0x5B:
                return _fail(s, _E_NOT_ARRAY, -1, i, i + 1, -1)
            s.pos = i + 1
            s.state = _ST_FIRST
        elif s.state == _ST_NEXT:
            if c == 0x2C:
                s.state = _ST_COMMA
            elif c == 0x5D:
                s.state = _ST_DONE
            else:
                return _syntax(s, i, -1)
            s.pos = i + 1
        elif s.state == _ST_DONE:
            return _syntax(s, i, -1)
        elif s.state == _ST_FIRST and c == 0x5D:
            s.pos = i + 1
            s.state = _ST_DONE
        else:
            rc = _json_element(s, i)
            if rc != _OK:
                return rc
            s.state = _ST_NEXT


cdef class TextParser:
    """Parse a json, ndjson or csv document fed in chunks split at any byte."""

    cdef int _form
    cdef int _state
    cdef long long _index
    # Stream offset of the first byte held in _carry.
    cdef long long _offset
    cdef bytes _carry
    cdef bint _closed
    cdef readonly str form

    def __init__(self, form: str) -> None:
        self._form = _form_id(form)
        self.form = form
        self._state = _ST_START
        self._index = 0
        self._offset = 0
        self._carry = b""
        self._closed = False

    @property
    def records(self) -> int:
        """Records parsed so far."""
        return self._index

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record held for the next chunk."""
        return len(self._carry)

    def feed(self, chunk) -> Packets:
        """Parse ``chunk`` and return the records it completed."""
        cdef Py_buffer view
        if self._closed:
            raise ValueError("feed() after close()")
        if self._carry:
            data = self._carry + bytes(chunk)
            return self._run(data, <const unsigned char *>PyBytes_AS_STRING(data), len(data), False)
        _acquire(chunk, &view)
        try:
            return self._run(chunk, <const unsigned char *>view.buf, view.len, False)
        finally:
            PyBuffer_Release(&view)

    def close(self) -> Packets:
        """Parse what is held and check that the document ended; return the last records."""
        if self._closed:
            return _empty_batch()
        if not self._offset and not self._carry:
            # Not a byte fed: a 0-byte document is an empty feed, in every format.
            self._closed = True
            return _empty_batch()
        data = self._carry
        batch = self._run(data, <const unsigned char *>PyBytes_AS_STRING(data), len(data), True)
        self._closed = True
        return batch

    cdef object _run(self, object owner, const unsigned char *b, Py_ssize_t n, bint final):
        cdef _Scan s
        cdef Py_ssize_t capacity = n // (_CSV_MIN if self._form == _FORM_CSV else _JSON_MIN) + 2
        cdef int rc
        memset(&s, 0, sizeof(s))
        s.b = b
        s.n = n
        s.final = final
        s.form = self._form
        s.state = self._state
        s.index = self._index
        symbol = np.empty(capacity, _S4)
        side = np.empty(capacity, _S1)
        quantity = np.empty(capacity, _INT32)
        price = np.empty(capacity, _INT32)
        sequence = np.empty(capacity, _INT32)
        while True:
            s.symbol = <unsigned char *>_data(symbol)
            s.side = <unsigned char *>_data(side)
            s.quantity = <int32_t *>_data(quantity)
            s.price = <int32_t *>_data(price)
            s.sequence = <int32_t *>_data(sequence)
            s.capacity = capacity
            if n >= 65536:
                with nogil:
                    rc = _scan(&s)
            else:
                rc = _scan(&s)
            if rc != _FULL:
                break
            capacity *= 2
            for column in (symbol, side, quantity, price, sequence):
                column.resize(capacity, refcheck=False)
        if rc == _ERROR:
            raise self._error(&s)
        if final:
            self._check_end(&s)
        self._state = s.state
        self._index = s.index
        self._offset += s.pos
        self._carry = bytes(owner[s.pos:]) if s.pos < n else b""
        count = s.count
        if count < capacity:
            symbol = symbol[:count].copy()
            side = side[:count].copy()
            quantity = quantity[:count].copy()
            price = price[:count].copy()
            sequence = sequence[:count].copy()
        return _from_columns(symbol, side, quantity, price, sequence)

    cdef int _check_end(self, _Scan *s) except -1:
        # At the end of the input: only whitespace may be left, and a json document
        # must have closed its array.
        cdef Py_ssize_t i = _skip_ws(s.b, s.pos, s.n)
        if i < s.n or (self._form == _FORM_JSON and s.state != _ST_DONE):
            s.err = _E_SYNTAX
            s.err_index = s.index if i < s.n else -1
            s.tok0 = s.tok1 = s.err_pos = s.n
            raise self._error(s)
        return 0

    cdef object _error(self, _Scan *s):
        token = s.b[s.tok0:s.tok1] if s.tok1 > s.tok0 else b""
        return text_error(
            self.form, s.err, s.err_index, s.err_field, token, self._offset + s.err_pos,
            s.err_pos >= s.n,
        )
