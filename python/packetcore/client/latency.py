"""Latencies counted as they happen: HdrHistogram's percentiles, Prometheus's buckets.

A follow measures two latencies (see :mod:`packetcore.client.follow`): each gap's
repair, and each packet's time from its publication by the server's clock to being
handed on.  The second comes in batches of thousands of packets, at millions a second:
:meth:`Latencies.add_many` counts a whole batch into the HdrHistogram with numpy (its
counts array, indexed as :meth:`HdrHistogram.record_value` indexes it: the tests hold
the two equal), where one ``record_value`` call a packet would cost 3 us.  The
percentiles are HdrHistogram's; the Prometheus buckets (:data:`BOUNDS`) are kept beside
it for the metrics, with the exact count and sum.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # no type information

__all__ = ["BOUNDS", "HIGHEST_US", "Latencies"]

#: Microseconds counted up to 2**42 (about 51 days; above: counted as that), to 3
#: significant digits: a feed followed from its start, long after, is timed truly.
HIGHEST_US = 2**42
_DIGITS = 3
#: The Prometheus buckets' upper bounds, in seconds (the last bucket, +Inf, takes the rest).
BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Latencies:
    """Durations in seconds: percentiles to 0.1 % (the maximum exact), buckets, count, sum."""

    def __init__(self) -> None:
        self._histogram = HdrHistogram(1, HIGHEST_US, _DIGITS)
        histogram = self._histogram
        # The histogram's own counts, as numpy sees them: add_many counts into them.
        self._counts = np.ctypeslib.as_array(histogram.counts)
        self._unit = int(histogram.unit_magnitude)
        self._half = int(histogram.sub_bucket_half_count)
        self._half_magnitude = int(histogram.sub_bucket_half_count_magnitude)
        self._mask = int(histogram.sub_bucket_mask)
        #: Durations counted at or below each of :data:`BOUNDS`, and above the last.
        self.buckets = np.zeros(len(BOUNDS) + 1, dtype=np.int64)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Count one duration (a negative one as 0)."""
        seconds = max(seconds, 0.0)
        self.count += 1
        self.sum += seconds
        self.max = max(self.max, seconds)
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1
        self._histogram.record_value(min(max(round(seconds * 1e6), 0), HIGHEST_US))

    def add_many(self, seconds: npt.NDArray[np.float64]) -> None:
        """Count many durations at once (no Python work per duration).

        A negative duration (two clocks apart) counts as 0.
        """
        if not len(seconds):
            return
        seconds = np.maximum(seconds, 0.0)
        self.count += len(seconds)
        self.sum += float(seconds.sum())
        least, most = float(seconds.min()), float(seconds.max())
        self.max = max(self.max, most)
        # A batch's durations span a bucket or two: count per bound only between them.
        first = bisect.bisect_left(BOUNDS, least)
        last = bisect.bisect_left(BOUNDS, most)
        below = 0
        for at in range(first, last):
            at_most = int(np.count_nonzero(seconds <= BOUNDS[at]))
            self.buckets[at] += at_most - below
            below = at_most
        self.buckets[last] += len(seconds) - below
        micros = np.clip(np.rint(seconds * 1e6), 0, HIGHEST_US).astype(np.int64)
        # HdrHistogram's index of a value: its bucket (the power of two above it, the
        # sub-bucket mask or'ed in) and its sub-bucket, as record_value computes them.
        _, exponents = np.frexp((micros | self._mask).astype(np.float64))
        bucket = exponents.astype(np.int64) - self._unit - (self._half_magnitude + 1)
        index = ((bucket + 1) << self._half_magnitude) + (micros >> (bucket + self._unit))
        index -= self._half
        low = int(index.min())
        counted = np.bincount(index - low)
        self._counts[low : low + len(counted)] += counted.astype(self._counts.dtype)
        histogram = self._histogram
        histogram.total_count += len(micros)
        histogram.min_value = min(histogram.min_value, int(micros.min()))
        histogram.max_value = max(histogram.max_value, int(micros.max()))

    def percentile(self, q: float) -> float:
        """Return the ``q``-th percentile (0..100) in seconds; 0 when nothing was counted."""
        if not self.count:
            return 0.0
        value = float(self._histogram.get_value_at_percentile(q)) / 1e6
        return min(value, self.max) if self.max > 0 else value
