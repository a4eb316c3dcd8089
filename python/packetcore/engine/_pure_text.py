"""The pure-Python twin of the engine's text forms: ``text_rows`` and ``TextParser``.

The parser is the compiled one's state machine, step for step, so that both accept the
same documents and fail with the same :class:`~packetcore.errors.FeedError`; a regular
expression takes the common record (as ``text_rows`` writes it) in one match.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

import numpy as np

from ..errors import FeedError
from ..packets import JSON_KEYS, SYMBOL_RULE, Packets, valid_symbol

__all__ = ["TEXT_FORMS", "TextParser", "text_error", "text_rows"]

#: The forms ``text_rows`` writes and ``TextParser`` reads.
TEXT_FORMS: Final = ("json", "ndjson", "csv")

CSV_HEADER: Final = b"symbol,buysellindicator,quantity,price,packetSequence"

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

# Error codes, shared with the compiled parser (_text.pxi).
_E_SYNTAX = 1
_E_NOT_ARRAY = 2
_E_NOT_OBJECT = 3
_E_UNKNOWN_KEY = 4
_E_REPEATED = 5
_E_MISSING = 6
_E_VALUE = 7
_E_FIELDS = 8
_E_HEADER = 9

_EXPECTED = (
    SYMBOL_RULE,
    "'B' or 'S'",
    f"an integer in {_INT32_MIN}..{_INT32_MAX}",
    f"an integer in {_INT32_MIN}..{_INT32_MAX}",
    f"an integer in 1..{_INT32_MAX}",
)
_GOT_MAX = 40


def _shown(token: bytes) -> str:
    # A file's text is UTF-8 (ASCII in what packetcore writes): shown so, bytes that are
    # not UTF-8 escaped.
    text = token[:_GOT_MAX].decode("utf-8", "backslashreplace")
    return text + "..." if len(token) > _GOT_MAX else text


def text_error(
    form: str, code: int, index: int, field: int, token: bytes, offset: int, at_end: bool
) -> FeedError:
    """Return the error a parser of ``form`` reports (both engines word it here)."""
    name = JSON_KEYS[field] if 0 <= field < len(JSON_KEYS) else ""
    if code == _E_SYNTAX:
        what = "unexpected end" if at_end else f"unexpected {_shown(token)!r}"
        where = f"record {index}: " if index >= 0 else ""
        return FeedError(f"{where}not valid {form.upper()}: {what} at byte {offset}", index)
    if code == _E_NOT_ARRAY:
        return FeedError(f"expected a JSON array of packets, got {_shown(token)!r}...")
    if code == _E_NOT_OBJECT:
        return FeedError(f"record {index} is {_shown(token)}, not an object", index)
    if code == _E_UNKNOWN_KEY:
        key = _shown(token)
        return FeedError(
            f"record {index}, field {key!r}: not a packet field (expected {', '.join(JSON_KEYS)})",
            index,
            key,
        )
    if code == _E_REPEATED:
        return FeedError(f"record {index}, field {name!r}: repeated", index, name)
    if code == _E_MISSING:
        return FeedError(f"record {index}, field {name!r}: missing", index, name)
    if code == _E_VALUE:
        return FeedError(
            f"record {index}, field {name!r}: expected {_EXPECTED[field]}, got {_shown(token)}",
            index,
            name,
        )
    if code == _E_FIELDS:
        return FeedError(f"record {index}: expected 5 comma-separated fields", index)
    return FeedError(f"expected the csv header {CSV_HEADER.decode()!r} as the first line")


# ---------------------------------------------------------------------------- writers

# JSON string escapes exactly as json.dumps (ensure_ascii) writes them, per byte; a
# byte is read as the latin-1 code point it stands for.
_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES[0x09] = "\\t"
_JSON_CHAR = [_ESCAPES.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\u{b:04x}") for b in range(256)]
_CSV_SPECIAL = re.compile(rb'[,"\r\n]')


def _json_string(raw: bytes) -> str:
    return "".join([_JSON_CHAR[b] for b in raw])


def _csv_field(raw: bytes) -> str:
    text = raw.decode("latin-1")
    if _CSV_SPECIAL.search(raw):
        return '"' + text.replace('"', '""') + '"'
    return text


def _columns(packets: Packets) -> Iterator[tuple[bytes, bytes, int, int, int]]:
    return packets.rows()


def json_lines(packets: Packets) -> list[str]:
    """Return each packet's record as json.dumps writes it, in the order given."""
    return [
        f'{{"symbol": "{_json_string(symbol)}", "buysellindicator": "{_json_string(side)}", '
        f'"quantity": {quantity}, "price": {price}, "packetSequence": {sequence}}}'
        for symbol, side, quantity, price, sequence in _columns(packets)
    ]


def text_rows(packets: Packets, form: str) -> bytes:
    """Return the packets' records as ``form`` text, in the order given, without framing."""
    _check_form(form)
    if len(packets) == 0:
        return b""
    if form == "csv":
        rows = [
            f"{_csv_field(symbol)},{_csv_field(side)},{quantity},{price},{sequence}\n"
            for symbol, side, quantity, price, sequence in _columns(packets)
        ]
        return "".join(rows).encode("latin-1")
    lines = json_lines(packets)
    if form == "ndjson":
        return ("\n".join(lines) + "\n").encode("ascii")
    return ",\n".join(lines).encode("ascii")


def _check_form(form: object) -> None:
    if form not in TEXT_FORMS:
        raise ValueError(f"unknown text form {form!r}: expected one of {', '.join(TEXT_FORMS)}")


# ---------------------------------------------------------------------------- parser

_ST_START, _ST_FIRST, _ST_NEXT, _ST_COMMA, _ST_DONE = range(5)

_WS = frozenset(b" \n\r\t")
_NUMBER_CHARS = frozenset(b"0123456789+-.eE")
_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SIMPLE_ESCAPES = {0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 8, 0x66: 12, 0x6E: 10, 0x72: 13}
_SIMPLE_ESCAPES[0x74] = 9
_KEY_IDS = {key.encode(): i for i, key in enumerate(JSON_KEYS)}
_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)\Z")
_INT_TEXT = rb"(-?(?:0|[1-9][0-9]{0,9}))"
# The record as text_rows writes it, whole: one match instead of the byte loop.
_FAST_JSON = re.compile(
    rb'\{"symbol": "([ !#-\[\]-~]{1,4})", "buysellindicator": "([BS])", '
    rb'"quantity": ' + _INT_TEXT + rb', "price": ' + _INT_TEXT + rb', "packetSequence": '
    rb"([1-9][0-9]{0,9})\}"
)
_FAST_CSV = re.compile(
    rb"([ !#-+\--~]{1,4}),([BS])," + _INT_TEXT + b"," + _INT_TEXT + b"," + _INT_TEXT + b"\n"
)


class _More(Exception):
    """The input ends inside a token: wait for the next chunk."""


class _Fail(Exception):
    def __init__(self, code: int, index: int, field: int, tok0: int, tok1: int) -> None:
        super().__init__(code)
        self.code = code
        self.index = index
        self.field = field
        self.tok0 = tok0
        self.tok1 = tok1


Row = tuple[bytes, bytes, int, int, int]


def _parse_int(text: bytes, low: int) -> int | None:
    if len(text) > 11 or not _INT.match(text):
        return None
    digits = text[1:] if text[:1] == b"-" else text
    if len(digits) > 10:
        return None
    value = int(text)
    return value if low <= value <= _INT32_MAX else None


def _check_field(field: int, text: bytes, bad: bool) -> bytes | int | None:
    if field == 0:
        return text if not bad and valid_symbol(text) else None
    if field == 1:
        return text if not bad and text in (b"B", b"S") else None
    return _parse_int(text, 1 if field == 4 else _INT32_MIN)


class _Scan:
    """One pass over the input held: the compiled _scan, step for step."""

    def __init__(self, b: bytes, form: str, state: int, index: int, final: bool) -> None:
        self.b = b
        self.n = len(b)
        self.pos = 0
        self.form = form
        self.state = state
        self.index = index
        self.final = final
        self.rows: list[Row] = []

    def syntax(self, at: int, index: int) -> _Fail:
        return _Fail(_E_SYNTAX, index, -1, at, at + 1 if at < self.n else at)

    def skip_ws(self, i: int) -> int:
        b, n = self.b, self.n
        while i < n and b[i] in _WS:
            i += 1
        return i

    def extent(self, i: int) -> int:
        b, n = self.b, self.n
        c = b[i]
        j = i + 1
        if c == 0x22:
            while True:
                if j >= n:
                    raise _More
                if b[j] == 0x5C:
                    j += 2
                elif b[j] == 0x22:
                    return j + 1
                else:
                    j += 1
        if c in (0x5B, 0x7B):
            return j
        if c in _NUMBER_CHARS:
            while j < n and b[j] in _NUMBER_CHARS:
                j += 1
        elif c in _LETTERS:
            while j < n and b[j] in _LETTERS:
                j += 1
        else:
            raise self.syntax(i, self.index)
        if j >= n and not self.final:
            raise _More
        return j

    def decode_string(self, i: int, end: int) -> tuple[bytes, bool]:
        b = self.b
        out = bytearray()
        bad = False
        while i < end:
            c = b[i]
            if c == 0x5C:
                if i + 1 >= end:
                    raise self.syntax(i, self.index)
                c = b[i + 1]
                if c == 0x75:
                    if i + 6 > end:
                        raise self.syntax(i, self.index)
                    cp = 0
                    for k in range(4):
                        h = int(chr(b[i + 2 + k]), 16) if chr(b[i + 2 + k]) in _HEX else -1
                        if h < 0:
                            raise self.syntax(i + 2 + k, self.index)
                        cp = (cp << 4) | h
                    i += 6
                elif c in _SIMPLE_ESCAPES:
                    cp = _SIMPLE_ESCAPES[c]
                    i += 2
                else:
                    raise self.syntax(i + 1, self.index)
            elif c < 0x20:
                raise self.syntax(i, self.index)
            elif c < 0x80:
                cp = c
                i += 1
            elif c in (0xC2, 0xC3) and i + 1 < end and b[i + 1] & 0xC0 == 0x80:
                cp = ((c & 0x1F) << 6) | (b[i + 1] & 0x3F)
                i += 2
            else:
                cp = 0x100
                i += 1
            if cp == 0 or cp > 0xFF:
                bad = True
            out.append(cp & 0xFF)
        return bytes(out), bad

    def json_value(self, field: int, i: int) -> tuple[int, bytes | int]:
        b = self.b
        end = self.extent(i)
        if field <= 1:
            if b[i] != 0x22:
                raise _Fail(_E_VALUE, self.index, field, i, end)
            text, bad = self.decode_string(i + 1, end - 1)
        else:
            if b[i] == 0x22:
                raise _Fail(_E_VALUE, self.index, field, i, end)
            text, bad = b[i:end], False
        value = _check_field(field, text, bad)
        if value is None:
            raise _Fail(_E_VALUE, self.index, field, i, end)
        return end, value

    def json_record(self, i: int) -> None:
        b, n = self.b, self.n
        values: list[bytes | int] = [b"", b"", 0, 0, 0]
        seen = 0
        i = self.skip_ws(i + 1)
        if i >= n:
            raise _More
        if b[i] != 0x7D:
            while True:
                if b[i] != 0x22:
                    raise self.syntax(i, self.index)
                end = self.extent(i)
                key, bad = self.decode_string(i + 1, end - 1)
                field = -1 if bad else _KEY_IDS.get(key, -1)
                if field < 0:
                    raise _Fail(_E_UNKNOWN_KEY, self.index, -1, i + 1, end - 1)
                if seen & (1 << field):
                    raise _Fail(_E_REPEATED, self.index, field, i + 1, end - 1)
                seen |= 1 << field
                i = self.skip_ws(end)
                if i >= n:
                    raise _More
                if b[i] != 0x3A:
                    raise self.syntax(i, self.index)
                i = self.skip_ws(i + 1)
                if i >= n:
                    raise _More
                end, values[field] = self.json_value(field, i)
                i = self.skip_ws(end)
                if i >= n:
                    raise _More
                if b[i] == 0x2C:
                    i = self.skip_ws(i + 1)
                    if i >= n:
                        raise _More
                    continue
                if b[i] != 0x7D:
                    raise self.syntax(i, self.index)
                break
        if seen != 31:
            field = 0
            while seen & (1 << field):
                field += 1
            raise _Fail(_E_MISSING, self.index, field, i, i + 1)
        self.store(values)
        self.pos = i + 1

    def store(self, values: list[bytes | int]) -> None:
        self.rows.append(tuple(values))  # type: ignore[arg-type]
        self.index += 1

    def fast(self, match: re.Match[bytes] | None) -> bool:
        """Take the row a fast-path ``match`` holds, if it is a plain one; say whether it was."""
        row = None if match is None else _fast_row(match)
        if row is None:
            return False
        assert match is not None
        self.rows.append(row)
        self.index += 1
        self.pos = match.end()
        return True

    def json_element(self, i: int) -> None:
        c = self.b[i]
        if c == 0x7B:
            if not self.fast(_FAST_JSON.match(self.b, i)):
                self.json_record(i)
            return
        if c in (0x5D, 0x2C, 0x3A, 0x7D):
            raise self.syntax(i, -1)
        end = self.extent(i)
        raise _Fail(_E_NOT_OBJECT, self.index, -1, i, end)

    def csv_field(self, i: int) -> tuple[bytes, int]:
        b, n = self.b, self.n
        if i < n and b[i] == 0x22:
            out = bytearray()
            j = i + 1
            while True:
                if j >= n:
                    if self.final:
                        raise self.syntax(j, self.index)
                    raise _More
                if b[j] == 0x22:
                    if j + 1 >= n and not self.final:
                        raise _More
                    if j + 1 < n and b[j + 1] == 0x22:
                        j += 1
                    else:
                        j += 1
                        break
                out.append(b[j])
                j += 1
            if j < n and b[j] not in (0x2C, 0x0A, 0x0D):
                raise self.syntax(j, self.index)
            return bytes(out), j
        j = i
        while j < n and b[j] not in (0x2C, 0x0A, 0x0D, 0x22):
            j += 1
        if j < n and b[j] == 0x22:
            raise self.syntax(j, self.index)
        if j >= n and not self.final:
            raise _More
        return b[i:j], j

    def csv_row(self, i: int) -> None:
        b, n = self.b, self.n
        if self.fast(_FAST_CSV.match(b, i)):
            return
        values: list[bytes | int] = []
        end = i
        for field in range(5):
            text, end = self.csv_field(i)
            value = _check_field(field, text, False)
            if value is None:
                raise _Fail(_E_VALUE, self.index, field, i, end)
            values.append(value)
            if field < 4:
                if end >= n or b[end] != 0x2C:
                    raise _Fail(_E_FIELDS, self.index, -1, i, end)
                i = end + 1
        i = end
        if i < n and b[i] == 0x2C:
            raise _Fail(_E_FIELDS, self.index, -1, i, i + 1)
        if i < n and b[i] == 0x0D:
            if i + 1 >= n and not self.final:
                raise _More
            i += 1
        if i < n:
            if b[i] != 0x0A:
                raise self.syntax(i, self.index)
            i += 1
        self.store(values)
        self.pos = i

    def csv_header(self) -> None:
        b, n = self.b, self.n
        start = self.pos
        line = b.find(b"\n", start)
        if line < 0:
            if not self.final:
                if n - start <= len(CSV_HEADER) + 1:
                    raise _More
                raise _Fail(_E_HEADER, -1, -1, start, start)
            line = n
        text = line - 1 if line > start and b[line - 1] == 0x0D else line
        if b[start:text] != CSV_HEADER:
            raise _Fail(_E_HEADER, -1, -1, start, start)
        self.pos = min(line + 1, n)
        self.state = _ST_NEXT

    def scan(self) -> None:
        """Parse records until the input ends (raises _More) or fails (_Fail)."""
        b, n = self.b, self.n
        while True:
            i = self.pos
            if self.form == "csv":
                if self.state == _ST_START:
                    self.csv_header()
                    continue
                if i >= n:
                    raise _More
                if b[i] == 0x0A:
                    self.pos = i + 1
                    continue
                self.csv_row(i)
                continue
            if self.form == "ndjson":
                if self.state == _ST_NEXT:
                    while i < n and b[i] in (0x20, 0x09, 0x0D):
                        i += 1
                    self.pos = i
                    if i >= n:
                        raise _More
                    if b[i] != 0x0A:
                        raise self.syntax(i, -1)
                    self.pos = i + 1
                    self.state = _ST_START
                    continue
                i = self.skip_ws(i)
                self.pos = i
                if i >= n:
                    raise _More
                self.json_element(i)
                self.state = _ST_NEXT
                continue
            i = self.skip_ws(i)
            self.pos = i
            if i >= n:
                raise _More
            c = b[i]
            if self.state == _ST_START:
                if c != 0x5B:
                    raise _Fail(_E_NOT_ARRAY, -1, -1, i, i + 1)
                self.pos = i + 1
                self.state = _ST_FIRST
            elif self.state == _ST_NEXT:
                if c == 0x2C:
                    self.state = _ST_COMMA
                elif c == 0x5D:
                    self.state = _ST_DONE
                else:
                    raise self.syntax(i, -1)
                self.pos = i + 1
            elif self.state == _ST_DONE:
                raise self.syntax(i, -1)
            elif self.state == _ST_FIRST and c == 0x5D:
                self.pos = i + 1
                self.state = _ST_DONE
            else:
                self.json_element(i)
                self.state = _ST_NEXT


_HEX = frozenset("0123456789abcdefABCDEF")


def _fast_row(match: re.Match[bytes]) -> Row | None:
    # The regular expression bounds the digits, not the value: range-check here.
    symbol, side, quantity, price, sequence = match.groups()
    q, p, s = int(quantity), int(price), int(sequence)
    if not (
        _INT32_MIN <= q <= _INT32_MAX and _INT32_MIN <= p <= _INT32_MAX and 1 <= s <= _INT32_MAX
    ):
        return None
    return (symbol, side, q, p, s)


def _batch(rows: list[Row]) -> Packets:
    if not rows:
        return Packets.empty()
    symbol, side, quantity, price, sequence = zip(*rows, strict=True)
    return Packets._from_columns(
        np.array(symbol, dtype="S4"),
        np.array(side, dtype="S1"),
        np.array(quantity, dtype=np.int32),
        np.array(price, dtype=np.int32),
        np.array(sequence, dtype=np.int32),
    )


class TextParser:
    """Parse a json, ndjson or csv document fed in chunks split at any byte."""

    def __init__(self, form: str) -> None:
        _check_form(form)
        self._form = form
        self._state = _ST_START
        self._index = 0
        self._offset = 0
        self._carry = b""
        self._closed = False

    @property
    def form(self) -> str:
        """The form parsed: ``json``, ``ndjson`` or ``csv``."""
        return self._form

    @property
    def records(self) -> int:
        """Records parsed so far."""
        return self._index

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record held for the next chunk."""
        return len(self._carry)

    def feed(self, chunk: bytes | bytearray | memoryview) -> Packets:
        """Parse ``chunk`` and return the records it completed."""
        if self._closed:
            raise ValueError("feed() after close()")
        return self._run(self._carry + bytes(chunk), final=False)

    def close(self) -> Packets:
        """Parse what is held and check that the document ended; return the last records."""
        if self._closed:
            return Packets.empty()
        if not self._offset and not self._carry:
            # Not a byte fed: a 0-byte document is an empty feed, in every format.
            self._closed = True
            return Packets.empty()
        batch = self._run(self._carry, final=True)
        self._closed = True
        return batch

    def _run(self, data: bytes, final: bool) -> Packets:
        scan = _Scan(data, self.form, self._state, self._index, final)
        try:
            scan.scan()
        except _More:
            pass
        except _Fail as fail:
            raise self._error(scan, fail) from None
        if final:
            i = scan.skip_ws(scan.pos)
            if i < scan.n or (self.form == "json" and scan.state != _ST_DONE):
                at = scan.n
                end = _Fail(_E_SYNTAX, scan.index if i < scan.n else -1, -1, at, at)
                raise self._error(scan, end)
        self._state = scan.state
        self._index = scan.index
        self._offset += scan.pos
        self._carry = data[scan.pos :]
        return _batch(scan.rows)

    def _error(self, scan: _Scan, fail: _Fail) -> FeedError:
        token = scan.b[fail.tok0 : fail.tok1]
        return text_error(
            self.form,
            fail.code,
            fail.index,
            fail.field,
            token,
            self._offset + fail.tok0,
            fail.tok0 >= scan.n,
        )
