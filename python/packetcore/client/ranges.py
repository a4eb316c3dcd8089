"""Runs of sequences as ``(start, count)`` rows: merging, coalescing, counting.

Gaps come out of the store as an ``(n, 2)`` int64 array of ``(start, count)`` rows,
sorted and disjoint; everything here works on that form, so its cost follows the
number of gaps, never the length of the feed (which a server merely announces).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from ..packets import Packets

__all__ = [
    "asked_for_again",
    "coalesce",
    "format_ranges",
    "inclusive",
    "merge",
]

Ranges = npt.NDArray[np.int64]


def coalesce(ranges: Ranges, gap: int) -> Ranges:
    """Merge ``(start, count)`` ranges that fewer than ``gap`` held sequences separate."""
    if len(ranges) < 2:
        return ranges
    ends = ranges[:, 0] + ranges[:, 1]
    held = ranges[1:, 0] - ends[:-1]
    breaks = np.flatnonzero(held > gap)
    starts = ranges[np.concatenate(([0], breaks + 1)), 0]
    stops = ends[np.concatenate((breaks, [len(ranges) - 1]))]
    return np.stack((starts, stops - starts), axis=1)


def merge(ranges: Ranges) -> Ranges:
    """Sort ``(start, count)`` ranges and merge those that touch or overlap."""
    ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    if len(ranges) < 2:
        return ranges
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    stops = np.maximum.accumulate(ranges[:, 0] + ranges[:, 1])
    # A range starts a new run where it begins after every earlier one has stopped.
    new = np.concatenate(([True], ranges[1:, 0] > stops[:-1]))
    starts = ranges[new, 0]
    ends = stops[np.concatenate((np.flatnonzero(new)[1:] - 1, [len(ranges) - 1]))]
    return np.stack((starts, ends - starts), axis=1)


def inclusive(ranges: Ranges) -> tuple[tuple[int, int], ...]:
    """Return ``(start, count)`` rows as inclusive ``(first, last)`` pairs."""
    return tuple((start, start + count - 1) for start, count in ranges.tolist())


def format_ranges(ranges: Iterable[tuple[int, int]], limit: int | None = None) -> str:
    """Return inclusive ``(first, last)`` ranges as ``1-3, 7, 9-12`` (at most ``limit``)."""
    listed = list(ranges)
    shown = listed if limit is None else listed[:limit]
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in shown)
    if len(shown) < len(listed):
        text += f", ... ({len(listed) - len(shown)} more ranges)"
    return text


def asked_for_again(missing: Ranges, first: int, last: int) -> Callable[[Packets], int]:
    """Return a counter of the packets in a batch that were held when ``missing`` was.

    A round asks for coalesced ranges, so some packets it brings were held already:
    those repeats were asked for and are no duplicates.
    """
    starts = np.ascontiguousarray(missing[:, 0], dtype=np.int64)
    stops = starts + missing[:, 1]

    def asked(batch: Packets) -> int:
        sequences = batch.sequence.astype(np.int64)
        sequences = sequences[(sequences >= first) & (sequences <= last)]
        if len(starts) == 0:
            return len(sequences)
        # The last range starting at or before each sequence; missing if it reaches it.
        at = np.searchsorted(starts, sequences, side="right") - 1
        gap = (at >= 0) & (sequences < stops[np.maximum(at, 0)])
        return int(len(sequences) - np.count_nonzero(gap))

    return asked
