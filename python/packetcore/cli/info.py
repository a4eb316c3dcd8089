"""``packetcore info FILE``: what a feed file holds, read a block at a time, no server.

Prints the format, the packet count, the first and last sequence, duplicates, and the
gaps (how many, how many sequences they miss, the first few ranges): one ``key: value``
line each, or one JSON object with ``--json``.  Works on every format
:func:`packetcore.read` reads.  Exit status: 0, 1 (the file cannot be read or is no
feed), 2 bad option.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import EXIT_USAGE, UserError, add_verbosity, naming, reader_left, run

__all__ = ["FeedSummary", "build_parser", "main", "readable", "summarize"]

PROGRAM = "packetcore info"
#: Gap ranges the text names before it says how many more there are.
SHOWN_RANGES = 10


@dataclass
class FeedSummary:
    """What a pass over a feed file found."""

    path: str
    format: str
    packets: int = 0
    first: int | None = None
    last: int | None = None
    in_order: bool = True  #: every sequence above the one before it
    duplicates: int = 0
    gaps: int = 0
    missing: int = 0
    #: The first gap ranges, inclusive (first, last) pairs.
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        return {
            "file": self.path, "format": self.format, "packets": self.packets,
            "first": self.first, "last": self.last, "in_order": self.in_order,
            "duplicates": self.duplicates, "gaps": self.gaps, "missing": self.missing,
            "first_gaps": [list(pair) for pair in self.ranges],
        }  # fmt: skip

    def lines(self) -> list[str]:
        """Return the summary as ``key: value`` lines."""
        from ..client.ranges import format_ranges

        if self.first is None:
            sequences = "none"
        else:
            order = "in order" if self.in_order else "not in sequence order"
            sequences = f"{self.first}..{self.last} ({order})"
        gaps = "none"
        if self.gaps:
            shown = format_ranges(self.ranges)
            more = (
                f", ... ({self.gaps - len(self.ranges)} more)"
                if self.gaps > len(self.ranges)
                else ""
            )
            gaps = f"{self.gaps} ({self.missing} sequences missing): {shown}{more}"
        return [
            f"file: {self.path}",
            f"format: {self.format}",
            f"packets: {self.packets}",
            f"sequences: {sequences}",
            f"duplicates: {self.duplicates}",
            f"gaps: {gaps}",
        ]


def readable(path: str) -> None:
    """Raise a one-line :class:`UserError` (exit 1) if ``path`` cannot be opened to read."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def summarize(path: str, form: str | None = None, shown: int = SHOWN_RANGES) -> FeedSummary:
    """Read the feed at ``path`` a block at a time and return what it holds.

    One pass while the sequences rise; a file out of sequence order is read a second
    time into a :class:`~packetcore.engine.GapTracker` over its extent.
    """
    import numpy as np

    from ..io.formats import format_for, iter_packets

    form = format_for(path, form)
    summary = FeedSummary(path, form)
    previous: int | None = None
    for batch in iter_packets(path, form):
        sequences = batch.sequence.astype(np.int64)
        summary.packets += len(sequences)
        low, high = int(sequences.min()), int(sequences.max())
        summary.first = low if summary.first is None else min(summary.first, low)
        summary.last = high if summary.last is None else max(summary.last, high)
        if not summary.in_order:
            continue
        if previous is not None:
            sequences = np.concatenate(([previous], sequences))
        steps = np.diff(sequences)
        previous = int(sequences[-1])
        if (steps <= 0).any():
            summary.in_order = False
            continue
        at = np.flatnonzero(steps > 1)
        summary.gaps += len(at)
        summary.missing += int((steps[at] - 1).sum())
        room = shown - len(summary.ranges)
        summary.ranges += [
            (int(sequences[i]) + 1, int(sequences[i + 1]) - 1) for i in at[:room]
        ]  # fmt: skip
    if not summary.in_order:
        _tracked(summary, shown)
    return summary


def _tracked(summary: FeedSummary, shown: int) -> None:
    """Count duplicates and gaps of a file out of order with a second pass."""
    from ..engine import GapTracker
    from ..io.formats import iter_packets

    assert summary.first is not None and summary.last is not None
    tracker = GapTracker(first=summary.first, last=summary.last)
    distinct = 0
    for batch in iter_packets(summary.path, summary.format):
        distinct += tracker.add(batch.sequence)
    summary.duplicates = summary.packets - distinct
    ranges = tracker.missing_ranges()  # (start, count) rows
    summary.gaps = len(ranges)
    summary.missing = int(ranges[:, 1].sum()) if len(ranges) else 0
    summary.ranges = [(int(a), int(a + n - 1)) for a, n in ranges[:shown]]


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the parser of the info options."""
    from ..io.formats import FORMATS

    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Say what a feed file holds: its format, packets, first and last sequence, "
            "duplicates and gaps (the first few ranges).  Every format packetcore reads: "
            f"{', '.join(FORMATS)}.  Reads the file a block at a time; needs no server.  "
            "Exit status: 0, 1 the file cannot be read or is no feed, 2 bad option."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the feed file")
    parser.add_argument(
        "--format", choices=FORMATS, default=None,
        help="the file's format (default: from its extension)",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of key: value lines"
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore info``; return the exit status."""
    return run(PROGRAM, build_parser(prog), _info, argv)


def _info(args: argparse.Namespace) -> int:
    from ..errors import FeedError
    from ..io import is_nats

    if is_nats(args.file):
        raise UserError(
            f"{args.file} is a stream: info reads feed files (packetcore.read reads a stream)",
            EXIT_USAGE,
        )
    readable(args.file)
    try:
        summary = summarize(args.file, args.format)
    except FeedError as exc:
        raise UserError(naming(args.file, exc)) from None
    try:
        if args.json:
            print(json.dumps(summary.as_dict()))
        else:
            print("\n".join(summary.lines()))
        sys.stdout.flush()
    except BrokenPipeError:
        return reader_left()
    return 0


if __name__ == "__main__":
    sys.exit(main())
