"""Prometheus metrics: a server's (or a proxy's) counters as text at ``/metrics``.

The counters are not kept twice: :class:`StatsCollector` calls a ``source`` at every
scrape and reports what the stats object it returns says, so the serving code counts
once, in its own stats, and pays nothing for metrics between scrapes.  The HTTP side is
prometheus-client's (its text format, its WSGI app) on a thread of its own; the package
is imported only here, and this module only when metrics are asked for, so the commands
start as fast without them.

Metric names: ``packetcore_connections_total``, ``packetcore_streams_total``,
``packetcore_packets_sent_total``, ``packetcore_packets_resent_total``,
``packetcore_packets_dropped_total``, ``packetcore_bad_requests_total``,
``packetcore_bytes_written_total``, ``packetcore_faults_injected_total{kind=...}``, the
gauge ``packetcore_active_connections``, and, where the stats have them,
``packetcore_refused_connections_total``, ``packetcore_timeouts_total``,
``packetcore_subscriptions_total`` and ``packetcore_slow_disconnects_total``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CONNECTION_TIMEOUT",
    "COUNTERS",
    "MAX_SCRAPES",
    "Collects",
    "MetricsServer",
    "StatsCollector",
    "StatsLike",
    "serve_metrics",
]


#: How often the serving thread looks for stop(): what stop() may wait.
_POLL_SECONDS = 0.1
#: Seconds a connection may last, from its accept to the end of its answer, before it is
#: closed: an idle client, or a slowloris one that drips a byte now and then, must not
#: keep a thread (and a slot) longer.
CONNECTION_TIMEOUT = 10.0
#: Connections served at once (a thread each); more are closed on arrival.  A scraper
#: makes one at a time: a few are plenty.
MAX_SCRAPES = 8


@runtime_checkable
class Collects(Protocol):
    """A prometheus-client collector: what a metrics server serves at each scrape."""

    def collect(self) -> Iterator[Metric]: ...


class StatsLike(Protocol):
    """What a metrics source returns: the counters of a server or a proxy.

    ``faults`` (kind -> count), ``refused``, ``timeouts``, ``subscriptions`` and
    ``slow_disconnects`` are read where present.
    """

    @property
    def connections(self) -> int: ...
    @property
    def active(self) -> int: ...
    @property
    def streams(self) -> int: ...
    @property
    def packets_sent(self) -> int: ...
    @property
    def packets_resent(self) -> int: ...
    @property
    def packets_dropped(self) -> int: ...
    @property
    def bad_requests(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...


#: Counter name (without ``_total``), the stats attribute it reads, and its help text.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("packetcore_connections", "connections", "Connections accepted and served."),
    ("packetcore_streams", "streams", "Stream-all requests answered."),
    ("packetcore_packets_sent", "packets_sent", "Packets written by stream-all and subscriptions."),
    ("packetcore_packets_resent", "packets_resent", "Packets written by resend requests."),
    ("packetcore_packets_dropped", "packets_dropped", "Packets the loss simulation dropped."),
    (
        "packetcore_bad_requests",
        "bad_requests",
        "Unknown callTypes, resends of sequences the feed lacks, subscriptions beyond 2^31-1.",
    ),
    ("packetcore_bytes_written", "bytes_written", "Bytes written to clients."),
)
#: Counters a source may lack (a proxy refuses nothing): reported only where present.
_OPTIONAL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "packetcore_refused_connections",
        "refused",
        "Connections closed on arrival for lack of a slot.",
    ),
    ("packetcore_timeouts", "timeouts", "Connections closed for idling."),
    ("packetcore_subscriptions", "subscriptions", "Subscriptions to a live feed answered."),
    (
        "packetcore_slow_disconnects",
        "slow_disconnects",
        "Subscribers disconnected for falling too far behind a live feed.",
    ),
)


class StatsCollector:
    """A prometheus-client collector that reads a stats source at every scrape."""

    def __init__(self, source: Callable[[], StatsLike]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of the source's stats as they are now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._source()
        for name, attribute, text in COUNTERS:
            yield CounterMetricFamily(name, text, value=getattr(stats, attribute))
        for name, attribute, text in _OPTIONAL_COUNTERS:
            value = getattr(stats, attribute, None)
            if value is not None:
                yield CounterMetricFamily(name, text, value=value)
        faults = CounterMetricFamily(
            "packetcore_faults_injected", "Faults injected, by kind.", labels=["kind"]
        )
        # getattr: the stats of a server without fault injection have no such field.
        kinds: Mapping[str, int] = getattr(stats, "faults", None) or {}
        for kind, count in sorted(kinds.items()):
            faults.add_metric([kind], count)
        yield faults
        yield GaugeMetricFamily(
            "packetcore_active_connections", "Connections open now.", value=stats.active
        )


class _QuietHandler(WSGIRequestHandler):
    """A request handler that logs nothing: a scrape every few seconds is not news."""

    def setup(self) -> None:
        # No single read or write waits past the deadline; the serving thread shuts the
        # socket at the deadline however the bytes trickle in (_Server.service_actions).
        self.request.settimeout(CONNECTION_TIMEOUT)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up the next one; the threads die with the process.
    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        # The first address the host resolves to, as the listener would pick for a client.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        # The connections being served, and when each must be done (monotonic seconds);
        # the lock keeps a socket from being shut as its thread closes it.
        self._deadlines: dict[Any, float] = {}
        self._deadlines_lock = threading.Lock()
        super().__init__((str(address[0]), *address[1:]), _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Called on the serving thread, one connection at a time: no slot, no thread.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        with self._deadlines_lock:
            # Read at each connection (not a class attribute): a test can lower it.
            self._deadlines[request] = time.monotonic() + CONNECTION_TIMEOUT
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._deadlines_lock:
                self._deadlines.pop(request, None)
            self._slots.release()
            raise

    def service_actions(self) -> None:
        # On the serving thread, at least every _POLL_SECONDS: a connection past its
        # deadline is shut, which ends its thread's read or write at once.
        super().service_actions()
        now = time.monotonic()
        with self._deadlines_lock:
            late = [request for request, due in self._deadlines.items() if due <= now]
            for request in late:
                del self._deadlines[request]
                with contextlib.suppress(OSError):  # already gone
                    request.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: Any) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out, reset or left: its connection is closed, nothing to say.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class MetricsServer:
    """An HTTP server of ``/metrics`` on a thread; bound at creation, served after start()."""

    def __init__(self, host: str, port: int, source: Callable[[], StatsLike] | Collects) -> None:
        """Bind ``host:port`` (0 picks a free port); raise :class:`OSError` if it fails.

        ``source``: a server's or proxy's stats (a callable returning them), or any
        collector (a follow's: :class:`packetcore.client.follow_metrics.FollowCollector`).
        """
        from prometheus_client import CollectorRegistry, make_wsgi_app

        # A registry of its own: two servers in one process (tests, a proxy beside a
        # server) never see each other's metrics, nor prometheus-client's process ones.
        self.registry = CollectorRegistry(auto_describe=False)
        collector = source if isinstance(source, Collects) else StatsCollector(source)
        self.registry.register(collector)
        self._httpd = _Server(host, port)
        self._httpd.set_app(make_wsgi_app(self.registry))
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> MetricsServer:
        """Serve scrapes on a daemon thread; return self."""
        if self._closed or self._thread is not None:
            raise RuntimeError("the metrics server was already started or stopped")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(_POLL_SECONDS,),
            name=f"packetcore-metrics:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent, and safe before start()."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.host} port {self.port}>"


def serve_metrics(
    host: str, port: int, source: Callable[[], StatsLike] | Collects
) -> MetricsServer:
    """Serve ``source()``'s counters as Prometheus text at ``http://host:port/metrics``."""
    return MetricsServer(host, port, source).start()
