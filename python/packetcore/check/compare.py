"""Judge what a client wrote against the feed it was served.

:func:`read_output` reads a client's output in any format :func:`packetcore.read` reads,
and, where the strict readers refuse a JSON or NDJSON file for its keys alone (public
clients write ``packetsequence`` or ``packetSequence``, some add fields), reads it again
with the reference's field names matched case-insensitively.  :func:`compare` gives the
verdict's reason, the details a report shows and the sequence map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FeedError
from ..io.formats import format_named_by, read
from ..packets import JSON_KEYS, Packet, Packets
from .model import Mark, SequenceRun, runs_of

__all__ = ["Comparison", "UnreadableOutput", "compare", "read_output"]

#: How many sequences a detail list names (the counts are always whole).
LISTED = 50

_LOWER_KEYS = {key.lower(): key for key in JSON_KEYS}


class UnreadableOutput(ValueError):
    """The client's output is not a feed in any format the check reads."""


def read_output(path: str | os.PathLike[str]) -> Packets:
    """Return the packets of a client's output file, in the order it holds them.

    :class:`UnreadableOutput` says why it cannot, in words that follow the file's name
    ("is not a json document: ...").
    """
    form = format_named_by(path) or "json"
    try:
        return read(path, form)
    except (FeedError, ValueError) as exc:
        if form not in ("json", "ndjson"):
            raise UnreadableOutput(f"is not a {form} feed: {_unplaced(exc, path)}") from None
        strict = _unplaced(exc, path)
    try:
        with open(path, encoding="utf-8-sig") as file:  # a byte-order mark is no fault
            text = file.read()
        if form == "ndjson":
            records: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableOutput(f"is not a {form} document: {exc}") from None
    if not isinstance(records, list):
        raise UnreadableOutput(f"is not a {form} feed of records: {strict}")
    rows = [_normalised(r, i) for i, r in enumerate(records)]
    try:
        return Packets.from_records(rows)
    except (TypeError, ValueError) as exc:
        raise UnreadableOutput(f"is not a feed of packet records: {exc}") from None


def _unplaced(exc: BaseException, path: str | os.PathLike[str]) -> str:
    """Return ``exc``'s message with the file's path said as its name alone."""
    return str(exc).replace(os.fspath(path), os.path.basename(path))


_INTEGERS = ("quantity", "price", "packetSequence")


def _normalised(record: Any, index: int) -> dict[str, Any]:
    """Return ``record`` with the reference's keys, matched case-insensitively.

    :class:`UnreadableOutput` names the record (from 0) and the field that is amiss.
    """
    where = f"record {index}"
    if not isinstance(record, Mapping):
        raise UnreadableOutput(f"is not a feed of records: {where} is {_shown(record)}")
    out: dict[str, Any] = {}
    for key, value in record.items():
        text = str(key)
        name = _LOWER_KEYS.get(text.lower()) if text.isascii() else None
        if name is None:
            continue
        if name in _INTEGERS:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise UnreadableOutput(f"{where}: {key} is {_shown(value)}, not an integer")
            try:
                number = float(value) if isinstance(value, str) else value
                if number != int(number):
                    raise ValueError
            except (ValueError, OverflowError):
                raise UnreadableOutput(
                    f"{where}: {key} is {_shown(value)}, not an integer"
                ) from None
            value = int(number)
            if not -(2**31) <= value < 2**31:
                raise UnreadableOutput(f"{where}: {key} is {value}, beyond a packet's int32")
        elif not isinstance(value, str):
            raise UnreadableOutput(f"{where}: {key} is {_shown(value)}, not a string")
        out[name] = value
    missing = [k for k in JSON_KEYS if k not in out]
    if missing:
        raise UnreadableOutput(f"{where} lacks {', '.join(missing)}")
    return out


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Comparison:
    """What an output holds against the feed: the reason, its details, the sequence map."""

    matches: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    sequence_map: list[SequenceRun] = field(default_factory=list)


def _listed(values: npt.NDArray[np.int64]) -> list[int]:
    return [int(v) for v in values[:LISTED]]


def _spans(values: npt.NDArray[np.int64]) -> str:
    """Return sorted sequences as ``3, 5-9, 14`` (at most a few spans, then a count)."""
    if not values.size:
        return ""
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    parts = []
    for chunk in np.split(values, breaks)[:4]:
        a, b = int(chunk[0]), int(chunk[-1])
        parts.append(str(a) if a == b else f"{a}-{b}")
    more = len(breaks) + 1 - len(parts)
    return ", ".join(parts) + (f" and {more} more spans" if more > 0 else "")


def _record(packets: Packets, i: int) -> dict[str, Any]:
    packet: Packet = packets[int(i)]
    return packet.to_record()


def compare(feed: Packets, output: Packets) -> Comparison:
    """Compare ``output`` (in file order) with ``feed`` (sequences first..last, in order)."""
    first = int(feed.sequence[0]) if len(feed) else 1
    size = len(feed)
    seq = output.sequence.astype(np.int64)
    inside = (seq >= first) & (seq < first + size)
    index = np.where(inside, seq - first, 0)
    counts = np.bincount(index[inside], minlength=size)
    same = np.zeros(len(output), dtype=bool)
    if len(output):
        same = inside.copy()
        for name in ("symbol", "buysellindicator", "quantity", "price"):
            same &= getattr(output, name) == getattr(feed, name)[index]
    wrong_at = np.zeros(size, dtype=bool)
    wrong_at[index[inside & ~same]] = True
    missing = np.flatnonzero(counts == 0) + first
    duplicated = np.flatnonzero(counts > 1) + first
    wrong = np.flatnonzero(wrong_at) + first
    extra = np.unique(seq[~inside])
    out_of_order = np.flatnonzero(seq[1:] < seq[:-1]) + 1  # positions
    details: dict[str, Any] = {"records_written": len(output), "sequences_in_feed": size}
    for name, values in (
        ("missing", missing),
        ("extra", extra),
        ("duplicated", duplicated),
        ("wrong", wrong),
    ):
        if values.size:
            details[name] = _listed(values)
            details[f"{name}_count"] = int(values.size)
    if out_of_order.size:
        details["out_of_order"] = [
            {"position": int(p), "sequence": int(seq[p]), "after": int(seq[p - 1])}
            for p in out_of_order[:LISTED]
        ]
        details["out_of_order_count"] = int(out_of_order.size)
    # The first record that is not the one the feed holds at that position.
    n = min(len(output), size)
    differs = np.flatnonzero(~same[:n] | (seq[:n] != np.arange(first, first + n)))
    position = int(differs[0]) if differs.size else n
    if position < max(len(output), size):
        details["first_difference"] = {
            "position": position,
            "expected": _record(feed, position) if position < size else None,
            "got": _record(output, position) if position < len(output) else None,
        }
    marks = np.full(size, 0, dtype=np.int8)  # 0 received, 1 missing, 2 duplicated, 3 wrong
    marks[counts == 0] = 1
    marks[counts > 1] = 2
    marks[wrong_at] = 3
    kinds = (Mark.RECEIVED, Mark.MISSING, Mark.DUPLICATED, Mark.WRONG)
    pairs = [(first + i, kinds[m]) for i, m in enumerate(marks.tolist())]
    pairs += [(int(s), Mark.EXTRA) for s in extra]
    pairs.sort(key=lambda pair: pair[0])
    matches = "first_difference" not in details
    return Comparison(
        matches,
        "" if matches else _reason(details, missing, extra, duplicated, wrong, out_of_order),
        details,
        runs_of(pairs),
    )


def _reason(
    details: Mapping[str, Any],
    missing: npt.NDArray[np.int64],
    extra: npt.NDArray[np.int64],
    duplicated: npt.NDArray[np.int64],
    wrong: npt.NDArray[np.int64],
    out_of_order: npt.NDArray[np.int64],
) -> str:
    parts = []
    if missing.size:
        parts.append(f"{missing.size} missing ({_spans(missing)})")
    if wrong.size:
        parts.append(f"{wrong.size} with a wrong record ({_spans(wrong)})")
    if duplicated.size:
        parts.append(f"{duplicated.size} duplicated ({_spans(duplicated)})")
    if extra.size:
        parts.append(f"{extra.size} not in the feed ({_spans(extra)})")
    if out_of_order.size:
        parts.append(f"{out_of_order.size} out of order")
    if not parts:  # the same records, the count right: cannot happen, but say what differs
        parts.append(f"record {details['first_difference']['position']} differs")
    written, size = details["records_written"], details["sequences_in_feed"]
    return f"{written} records for {size} sequences: " + "; ".join(parts)
