"""A follow's metrics in Prometheus text: what ``packetcore-fetch --follow --metrics-port`` serves.

:class:`FollowCollector` reads a follow's :class:`~packetcore.client.follow.FollowStats`
at every scrape, as the server's and proxy's collectors read theirs
(:mod:`packetcore.net.metrics`): the follow counts once, in its stats, and pays
nothing for metrics between scrapes.  The latencies are Prometheus histograms in
seconds, with the buckets of :data:`packetcore.client.latency.BOUNDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .latency import BOUNDS, Latencies

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .follow import FollowStats

__all__ = ["METRICS", "REASONS", "FollowCollector"]

#: Why ranges are asked for (``packetcore_follow_repair_requests_total{reason=...}``).
REASONS = ("range", "tail", "again", "reconnect")

#: Every metric of a follow: its name as exposed, its type and its help text.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("packetcore_follow_packets_total", "counter", "Packets handed on in sequence order."),
    (
        "packetcore_follow_packets_repaired_total",
        "counter",
        "Packets the repair connection brought.",
    ),
    ("packetcore_follow_gaps_total", "counter", "Gaps (runs of missing sequences) detected."),
    ("packetcore_follow_gaps_repaired_total", "counter", "Gaps repaired: all their packets held."),
    ("packetcore_follow_gaps_open", "gauge", "Gaps asked for and not repaired yet."),
    (
        "packetcore_follow_repair_requests_total",
        "counter",
        "Ranges asked for on the repair connection, by reason: range (a gap seen), tail "
        "(published, never brought), again (unanswered), reconnect (on a new connection).",
    ),
    (
        "packetcore_follow_reconnects_total",
        "counter",
        "Connections replaced after a failure, by connection (subscription or repair).",
    ),
    ("packetcore_follow_duplicates_total", "counter", "Identical copies of packets held already."),
    ("packetcore_follow_conflicts_total", "counter", "Copies that differed, settled by a vote."),
    ("packetcore_follow_invalid_total", "counter", "Packets the decoder rejected."),
    ("packetcore_follow_delivered_sequence", "gauge", "The last sequence handed on."),
    (
        "packetcore_follow_published_sequence",
        "gauge",
        "The highest sequence the server said it had published.",
    ),
    (
        "packetcore_follow_lag_packets",
        "gauge",
        "Packets published and not handed on yet, at the latest hello.",
    ),
    (
        "packetcore_follow_lag_seconds",
        "gauge",
        "How long ago the first packet not handed on was published (0: none waits); "
        "only from a server that sends its clock.",
    ),
    (
        "packetcore_follow_repair_latency_seconds",
        "histogram",
        "From a gap seen to all its packets held.",
    ),
    (
        "packetcore_follow_publication_latency_seconds",
        "histogram",
        "From a packet's publication by the server's clock to its hand-on in order; "
        "only from a server that sends its clock.",
    ),
)
_HELP = {name: text for name, _, text in METRICS}


class FollowCollector:
    """A prometheus-client collector that reads a follow's stats at every scrape."""

    def __init__(self, source: Callable[[], FollowStats]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of the follow's stats as they are now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._source()

        def counter(name: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, _HELP[name], value=value)

        def gauge(name: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, _HELP[name], value=value)

        yield counter("packetcore_follow_packets_total", stats.packets)
        # The repairs as the session counts them while the follow runs.
        yield counter("packetcore_follow_packets_repaired_total", stats.repaired)
        yield counter("packetcore_follow_gaps_total", stats.gaps)
        yield counter("packetcore_follow_gaps_repaired_total", stats.repair.count)
        yield gauge("packetcore_follow_gaps_open", stats.gaps_open)
        name = "packetcore_follow_repair_requests_total"
        requests = CounterMetricFamily(name, _HELP[name], labels=["reason"])
        counts = dict(stats.requests)
        for reason in REASONS:
            requests.add_metric([reason], counts.get(reason, 0))
        yield requests
        name = "packetcore_follow_reconnects_total"
        reconnects = CounterMetricFamily(name, _HELP[name], labels=["connection"])
        reconnects.add_metric(["subscription"], stats.reconnects)
        reconnects.add_metric(["repair"], stats.repair_reconnects)
        yield reconnects
        yield counter("packetcore_follow_duplicates_total", stats.duplicates)
        yield counter("packetcore_follow_conflicts_total", stats.conflicts)
        yield counter("packetcore_follow_invalid_total", stats.invalid)
        yield gauge("packetcore_follow_delivered_sequence", stats.delivered)
        yield gauge("packetcore_follow_published_sequence", stats.published)
        yield gauge("packetcore_follow_lag_packets", stats.lag)
        lag = stats.lag_seconds()
        if lag is not None:
            yield gauge("packetcore_follow_lag_seconds", lag)
        yield _histogram("packetcore_follow_repair_latency_seconds", stats.repair)
        if stats.clock is not None:
            yield _histogram("packetcore_follow_publication_latency_seconds", stats.publication)


def _histogram(name: str, latencies: Latencies) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    # A copy, then the count from it: the buckets add up to the count, whatever the
    # follow counts meanwhile (the sum may be a batch ahead).
    counts = latencies.buckets.copy().cumsum().tolist()
    buckets = [(f"{bound:g}", count) for bound, count in zip(BOUNDS, counts, strict=False)]
    buckets.append(("+Inf", counts[-1]))
    return HistogramMetricFamily(name, _HELP[name], buckets=buckets, sum_value=latencies.sum)
