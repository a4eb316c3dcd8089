"""Latencies: HdrHistogram's percentiles, counted one by one or a batch at a time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from packetcore.client.latency import BOUNDS, HIGHEST_US, Latencies

# Run once, on the compiled engine: numpy and HdrHistogram, no engine.
pytestmark = pytest.mark.engine_neutral


def test_the_percentiles_are_close_to_exact() -> None:
    latencies = Latencies()
    values = np.random.default_rng(1).exponential(0.005, 10_000)
    for value in values:
        latencies.add(float(value))
    for q in (50, 99, 99.9):
        exact = float(np.percentile(values, q))
        assert abs(latencies.percentile(q) - exact) <= 0.002 * exact + 1e-6
    assert latencies.max == float(values.max())


# Seconds from 0 to past the histogram's hour, the buckets' bounds among them.
_SECONDS = st.one_of(
    st.floats(0, 2 * HIGHEST_US / 1e6, allow_nan=False),
    st.sampled_from(BOUNDS),
    st.floats(0, 0.01, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 300), elements=_SECONDS))
def test_a_batch_counts_as_each_of_its_values_would(values: np.ndarray) -> None:
    one_by_one, batch = Latencies(), Latencies()
    for value in values:
        one_by_one.add(float(value))
    batch.add_many(values)
    # The same HdrHistogram, count for count, and so the same percentiles.
    assert list(batch._histogram.counts) == list(one_by_one._histogram.counts)
    assert batch._histogram.get_total_count() == one_by_one._histogram.get_total_count()
    assert batch._histogram.get_min_value() == one_by_one._histogram.get_min_value()
    assert batch._histogram.get_max_value() == one_by_one._histogram.get_max_value()
    for q in (0, 50, 99, 99.9, 100):
        assert batch.percentile(q) == one_by_one.percentile(q)
    assert batch.buckets.tolist() == one_by_one.buckets.tolist()
    assert batch.count == one_by_one.count == len(values)
    assert batch.max == one_by_one.max
    assert batch.sum == pytest.approx(one_by_one.sum)


def test_the_buckets_count_each_value_at_or_below_its_bound() -> None:
    latencies = Latencies()
    latencies.add_many(np.array([0.0001, 0.00010001, 0.001, 0.0011, 11.0, 0.0]))
    cumulative = latencies.buckets.cumsum()
    assert cumulative[BOUNDS.index(0.0001)] == 2  # 0 and 0.0001 itself
    assert cumulative[BOUNDS.index(0.001)] == 4
    assert cumulative[BOUNDS.index(10.0)] == 5
    assert cumulative[-1] == latencies.count == 6


def test_nothing_counted_reads_as_zero() -> None:
    latencies = Latencies()
    latencies.add_many(np.array([]))
    assert latencies.count == 0
    assert latencies.percentile(99) == 0.0
