"""Prometheus metrics: every counter agrees with what raw clients received."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import packetcore.server.workers
import pytest
from packetcore.cli.serve import main as serve_main
from packetcore.faults.model import FaultPlan, Faults
from packetcore.faults.proxy import Proxy
from packetcore.net.metrics import MetricsServer, serve_metrics
from packetcore.protocol import (
    INFO_SIZE,
    hello_request,
    resend_request,
    stream_all_request,
    subscribe_request,
)
from packetcore.server.conversation import ServerStats
from packetcore.server.server import Server
from packetcore.server.workers import WorkerReport, Workers
from prometheus_client.parser import text_string_to_metric_families
from serverutil import (
    PACKET,
    TIMEOUT,
    ServeProcess,
    range_request,
    recv_all,
    recv_exact,
    wait_until,
)

BOOK = 14
#: A callType no server knows: ignored and counted as a bad request.
UNKNOWN = bytes([9, 0])
#: Sequences the feed lacks: also bad requests, nothing sent.
MISSING = 200


@dataclass
class Seen:
    """What the raw clients received, counted on their sockets."""

    connections: int = 0
    streams: int = 0
    streamed: int = 0  #: packets received from stream-alls
    resent: int = 0  #: packets received from resends and ranges
    asked_resends: int = 0  #: packets asked for by resends and ranges (the feed has them)
    bad_requests: int = 0
    bytes: int = 0

    def expected(self) -> dict[str, float]:
        return {
            "packetcore_connections_total": self.connections,
            "packetcore_streams_total": self.streams,
            "packetcore_packets_sent_total": self.streamed,
            "packetcore_packets_resent_total": self.resent,
            "packetcore_packets_dropped_total": (
                self.streams * BOOK - self.streamed + self.asked_resends - self.resent
            ),
            "packetcore_bad_requests_total": self.bad_requests,
            "packetcore_bytes_written_total": self.bytes,
            "packetcore_refused_connections_total": 0,
            "packetcore_timeouts_total": 0,
            "packetcore_subscriptions_total": 0,
            "packetcore_slow_disconnects_total": 0,
            "packetcore_active_connections": 0,
        }


def stream(port: int, seen: Seen) -> None:
    """Ask for the whole feed on a connection of its own; count what arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(stream_all_request())
        data = recv_all(sock)
    assert len(data) % PACKET == 0
    seen.connections += 1
    seen.streams += 1
    seen.streamed += len(data) // PACKET
    seen.bytes += len(data)


def conversation(port: int, seen: Seen) -> None:
    """Hello, an unknown callType, resends, a range, a missing resend, hello; half-close."""
    resends = [1, 2, 3, 4, 5, 14]
    request = hello_request() + UNKNOWN
    request += b"".join(resend_request(sequence) for sequence in resends)
    request += range_request(1, BOOK) + resend_request(MISSING) + hello_request()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock)
    # Answers come in request order: an info frame, the packets, an info frame.
    body = len(data) - 2 * INFO_SIZE
    assert data[:4] == data[-INFO_SIZE:][:4] == b"PKCI"
    assert body % PACKET == 0
    seen.connections += 1
    seen.resent += body // PACKET
    seen.asked_resends += len(resends) + BOOK
    seen.bad_requests += 2
    seen.bytes += len(data)


def scrape(port: int) -> dict[str, float]:
    """Return every sample at ``/metrics`` by name (labels as ``name{k=v}``)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.fixture
def lossy() -> Iterator[Server]:
    """A seeded server that drops streamed and resent packets."""
    with Server(host="127.0.0.1", port=0, drop=0.3, drop_resends=0.4, seed=17) as running:
        yield running


def test_counters_match_what_the_clients_received(lossy: Server) -> None:
    with serve_metrics("127.0.0.1", 0, lambda: lossy.stats) as metrics:
        assert scrape(metrics.port) == Seen().expected()
        seen = Seen()
        for _ in range(3):
            stream(lossy.port, seen)
        conversation(lossy.port, seen)
        # The server lowers its gauge after the client has seen the end of the stream.
        wait_until(lambda: lossy.stats.active == 0)
        assert scrape(metrics.port) == seen.expected()
    # The seeded run dropped some of both, so the dropped counter is tested on both paths.
    assert 0 < seen.streamed < 3 * BOOK
    assert 0 < seen.resent < seen.asked_resends


def test_a_subscription_is_counted_as_its_subscriber_received_it() -> None:
    # A live feed of 3,000 packets published in about 0.15 s, a seeded drop.
    live = Server(host="127.0.0.1", port=0, live=20_000, until=3000, drop=0.2, seed=5)
    with live, serve_metrics("127.0.0.1", 0, lambda: live.stats) as metrics:
        with socket.create_connection(("127.0.0.1", live.port), timeout=TIMEOUT) as sock:
            sock.sendall(subscribe_request(1))
            data = recv_all(sock)  # the server closes after the final packet
        wait_until(lambda: live.stats.active == 0)
        got = scrape(metrics.port)
    received = len(data) // PACKET
    assert len(data) % PACKET == 0 and 0 < received < 3000
    assert got["packetcore_subscriptions_total"] == 1
    assert got["packetcore_packets_sent_total"] == received
    assert got["packetcore_packets_dropped_total"] == 3000 - received
    assert got["packetcore_bytes_written_total"] == len(data)


def test_active_connections_is_a_gauge_of_open_ones(lossy: Server) -> None:
    with (
        serve_metrics("127.0.0.1", 0, lambda: lossy.stats) as metrics,
        socket.create_connection(("127.0.0.1", lossy.port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(hello_request())
        assert recv_exact(sock, INFO_SIZE)[:4] == b"PKCI"
        samples = scrape(metrics.port)
        assert samples["packetcore_active_connections"] == 1
        assert samples["packetcore_bytes_written_total"] == INFO_SIZE
    wait_until(lambda: lossy.stats.active == 0)


@dataclass
class ProxyLike:
    """A stats object as a proxy may have it: no refused, no timeouts, some faults."""

    connections: int = 2
    active: int = 1
    streams: int = 1
    packets_sent: int = 10
    packets_resent: int = 0
    packets_dropped: int = 3
    bad_requests: int = 0
    bytes_written: int = 170
    faults: dict[str, int] = field(default_factory=lambda: {"loss": 3, "corrupt": 1})


def test_faults_are_labelled_by_kind_and_absent_counters_left_out() -> None:
    with serve_metrics("127.0.0.1", 0, ProxyLike) as metrics:
        samples = scrape(metrics.port)
    assert samples["packetcore_faults_injected_total{kind=loss}"] == 3
    assert samples["packetcore_faults_injected_total{kind=corrupt}"] == 1
    assert samples["packetcore_packets_dropped_total"] == 3
    assert "packetcore_refused_connections_total" not in samples
    assert "packetcore_timeouts_total" not in samples


def test_stop_frees_the_port_and_is_idempotent() -> None:
    metrics = MetricsServer("127.0.0.1", 0, ServerStats)
    port = metrics.port
    metrics.stop()  # never started: only the socket to close
    metrics.stop()
    with serve_metrics("127.0.0.1", port, ServerStats) as again:
        assert scrape(again.port)["packetcore_connections_total"] == 0
    with pytest.raises(RuntimeError):
        again.start()


# -- --workers: the parent sums the workers live ------------------------------------------------


def test_workers_total_sums_dict_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class WithFaults(ServerStats):
        faults: dict[str, int] = field(default_factory=dict)

    # ServerStats gains a faults dict on the fault-injection branch: sum it by kind.
    monkeypatch.setattr(packetcore.server.workers, "ServerStats", WithFaults)
    workers = Workers([], lambda *_: WithFaults())
    workers.reports = [
        WorkerReport(0, 1, stats=WithFaults(connections=2, faults={"loss": 3, "split": 1})),
        WorkerReport(1, 2, latest=WithFaults(connections=1, faults={"loss": 4})),
        WorkerReport(2, 3),
    ]
    total = workers.total()
    assert dataclasses.asdict(total) == dataclasses.asdict(
        WithFaults(connections=3, faults={"loss": 7, "split": 1})
    )


def test_two_workers_are_summed_exactly_while_they_serve() -> None:
    lossy = ("--seed", "5", "--drop", "0.3", "--drop-resends", "0.4")
    metrics_args = ("--metrics-host", "127.0.0.1", "--metrics-port", "0")
    with ServeProcess("--workers", "2", *lossy, *metrics_args) as server:
        found = re.search(r"metrics on port (\d+)", "".join(server.log))
        assert found, server.log
        metrics = int(found.group(1))
        seen = Seen()
        for _ in range(6):
            stream(server.port, seen)
        conversation(server.port, seen)
        expected = seen.expected()
        wait_until(lambda: scrape(metrics) == expected)
        # Live: more traffic, a higher sum, without a restart.
        stream(server.port, seen)
        expected = seen.expected()
        wait_until(lambda: scrape(metrics) == expected)
        assert 0 < seen.streamed < seen.streams * BOOK
    # The final sums, sent at the stop, agree with the live ones.
    summary = server.log[-1]
    assert f"2 workers: {seen.connections} connections (0 refused)" in summary, summary
    assert f"{seen.streamed} packets sent, {seen.resent} resent" in summary, summary


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "65536", "x", ""])
def test_bad_metrics_port_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        serve_main(["--metrics-port", value])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "argument --metrics-port" in errors[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_port_in_use_fails_before_serving(
    workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        status = serve_main(
            ["--host", "127.0.0.1", "--port", "0", "--workers", workers, "-q",
             "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
        )  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"packetcore-serve: error: cannot serve metrics on 127.0.0.1 port {port}: "
        "Address already in use"
    ]


def test_prometheus_client_is_imported_only_for_metrics() -> None:
    # The commands keep their start-up light: a server without --metrics-port never loads it.
    code = (
        "import sys, packetcore.cli.serve as serve, packetcore.net.metrics; "
        "serve.build_parser().parse_args([]); "
        "print('prometheus_client' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(packetcore.server.workers.__file__).parent.parent))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert result.stdout == "False\n", result.stderr


def test_a_proxy_counts_what_its_clients_received_and_its_faults() -> None:
    # A lossy, duplicating proxy in front of a clean server: its metrics must say what
    # the raw clients got through it, and the faults it injected, by kind.
    plan = FaultPlan(Faults(loss=0.3, duplicate=0.2), seed=3)
    with Server(host="127.0.0.1", port=0, drop=0.0, seed=1) as upstream:
        proxy = Proxy(("127.0.0.1", upstream.port), plan)
        with proxy, serve_metrics("127.0.0.1", 0, lambda: proxy.stats) as metrics:
            got = b"".join(_through(proxy.port) for _ in range(5))
            assert proxy.wait_idle()
            samples = scrape(metrics.port)
    assert len(got) % PACKET == 0
    assert samples["packetcore_bytes_written_total"] == len(got)
    assert samples["packetcore_connections_total"] == 5
    assert samples["packetcore_packets_sent_total"] == len(got) // PACKET
    faults = {k: v for k, v in samples.items() if k.startswith("packetcore_faults_injected")}
    assert faults == {
        f"packetcore_faults_injected_total{{kind={kind}}}": count
        for kind, count in proxy.stats.faults.items()
    }
    lost, doubled = proxy.stats.faults["loss"], proxy.stats.faults["duplicate"]
    assert lost > 0 and doubled > 0
    # Every packet of the five streams arrived, or was lost, or came twice.
    assert len(got) // PACKET == 5 * BOOK - lost + doubled


def _through(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(stream_all_request())
        return recv_all(sock)


def _port_said(lines: IO[str], what: str) -> int:
    """Read log lines until one says ``what`` and a port number; return the port."""
    for line in lines:
        found = re.search(what + r" (\d+)", line)
        if found:
            return int(found[1])
    raise AssertionError(f"no line said {what!r}")


def test_the_proxy_command_serves_metrics() -> None:
    with Server(host="127.0.0.1", port=0, drop=0.0) as upstream:
        command = [
            sys.executable, "-m", "packetcore", "proxy", "--listen", "0", "--host",
            "127.0.0.1", "--upstream", f"127.0.0.1:{upstream.port}", "--metrics-port", "0",
            "--metrics-host", "127.0.0.1", "--loss", "0.5", "--seed", "2",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(Path(packetcore.server.workers.__file__).parents[1]))
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stderr is not None
            metrics_port = _port_said(proc.stderr, "metrics on port")
            port = _port_said(proc.stderr, "listening on port")
            got = _through(port)
            wait_until(lambda: scrape(metrics_port)["packetcore_active_connections"] == 0)
            samples = scrape(metrics_port)
        finally:
            proc.terminate()
            proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143
    assert samples["packetcore_bytes_written_total"] == len(got)
    assert samples["packetcore_faults_injected_total{kind=loss}"] == BOOK - len(got) // PACKET


# -- idle and too many connections --------------------------------------------------------------


def closed_by_the_server(sock: socket.socket) -> bool:
    """Tell whether the server closed ``sock`` (EOF or a reset) within the client's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_are_closed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # 400 half-open connections held 400 threads forever, and slowed every accept.
    import packetcore.net.metrics

    monkeypatch.setattr(packetcore.net.metrics, "CONNECTION_TIMEOUT", 0.2, raising=False)
    with serve_metrics("127.0.0.1", 0, ServerStats) as metrics:
        idle = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(3)]
        half = socket.create_connection(("127.0.0.1", metrics.port))
        try:
            half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            for sock in [*idle, half]:
                sock.settimeout(TIMEOUT)
                assert closed_by_the_server(sock)
            assert scrape(metrics.port)["packetcore_connections_total"] == 0
        finally:
            for sock in [*idle, half]:
                sock.close()


def test_connections_beyond_the_cap_are_closed_and_scrapes_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import packetcore.net.metrics

    monkeypatch.setattr(packetcore.net.metrics, "MAX_SCRAPES", 2, raising=False)
    monkeypatch.setattr(packetcore.net.metrics, "CONNECTION_TIMEOUT", 60.0, raising=False)
    with serve_metrics("127.0.0.1", 0, ServerStats) as metrics:
        held = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(2)]
        try:
            # Accepted in order: the two held take both slots, the third is closed at once.
            with socket.create_connection(("127.0.0.1", metrics.port), timeout=TIMEOUT) as extra:
                assert closed_by_the_server(extra)
            # A held connection still scrapes; once it is answered its slot is free again.
            held[0].sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            held[0].settimeout(TIMEOUT)
            answer = recv_all(held[0])
            assert answer.startswith(b"HTTP/1.0 200") and b"packetcore_connections_total" in answer
            wait_until(lambda: _scrapes(metrics.port))
        finally:
            for sock in held:
                sock.close()


def test_a_slowloris_holds_a_slot_no_longer_than_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Clients that sent a header line every 3 s (the timeout restarted with each byte)
    # held every slot forever: 0 of 236 scrapes got through.  Now the timeout counts
    # from the accept, for the whole request and answer.
    import packetcore.net.metrics

    limit = 0.6
    monkeypatch.setattr(packetcore.net.metrics, "MAX_SCRAPES", 2, raising=False)
    monkeypatch.setattr(packetcore.net.metrics, "CONNECTION_TIMEOUT", limit, raising=False)
    with serve_metrics("127.0.0.1", 0, ServerStats) as metrics:
        slow = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(2)]
        opened = time.monotonic()
        closed: dict[int, float] = {}
        try:
            for sock in slow:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")
                sock.setblocking(False)
            # Both slots are taken: a scrape now is closed on arrival.
            with socket.create_connection(("127.0.0.1", metrics.port), timeout=TIMEOUT) as extra:
                assert closed_by_the_server(extra)
            # A byte every 50 ms, far inside any gap a per-read timeout would allow.
            while len(closed) < len(slow) and time.monotonic() - opened < TIMEOUT:
                for index, sock in enumerate(slow):
                    if index in closed:
                        continue
                    try:
                        sock.sendall(b"X")
                        if sock.recv(1) == b"":
                            closed[index] = time.monotonic() - opened
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[index] = time.monotonic() - opened
                time.sleep(0.05)
            assert len(closed) == len(slow)
            # Cut at the deadline (give or take the serving thread's 0.1 s poll).
            for held in closed.values():
                assert limit - 0.05 <= held <= limit + 0.5, closed
            # The slots are free again: scrapes get through.
            wait_until(lambda: _scrapes(metrics.port))
            assert scrape(metrics.port)["packetcore_connections_total"] == 0
        finally:
            for sock in slow:
                sock.close()


def _scrapes(port: int) -> bool:
    try:
        return scrape(port)["packetcore_connections_total"] == 0
    except (OSError, ValueError):
        return False


METRICS_DOC = Path(__file__).parent.parent / "docs" / "metrics.md"


def _documented_metrics() -> set[str]:
    """Return the metric names the server's table of docs/metrics.md lists.

    The follow's table (packetcore_follow_*) is checked in test_dashboard.py.
    """
    names = set()
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| `(packetcore_\w+)(?:\{[^}]*\})?`( \(gauge\))? \|", line)
        if row and not row.group(1).startswith("packetcore_follow_"):
            names.add(row.group(1))
    return names


def _exposed(port: int) -> set[str]:
    """Return the metric names ``/metrics`` declares (families with no sample too)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    names = set()
    for line in text.splitlines():
        declared = re.fullmatch(r"# TYPE (\w+) (\w+)", line)
        if declared:
            name, kind = declared.groups()
            # Some versions of prometheus-client declare a counter without its _total.
            counter = kind == "counter" and not name.endswith("_total")
            names.add(name + "_total" if counter else name)
    return names


def test_the_docs_list_exactly_the_metrics_a_server_exposes() -> None:
    # A live server with faults: every metric the server can expose is there.
    faults = FaultPlan(Faults(loss=0.1), seed=1)
    live = Server(host="127.0.0.1", port=0, live=1000, until=10, seed=1, faults=faults)
    with live, serve_metrics("127.0.0.1", 0, lambda: live.stats) as metrics:
        exposed = _exposed(metrics.port)
    listed = _documented_metrics()
    assert "packetcore_connections_total" in listed  # the table was found at all
    assert listed == exposed, (
        f"in docs/metrics.md only: {sorted(listed - exposed)}; "
        f"exposed only: {sorted(exposed - listed)}"
    )


def test_the_docs_name_the_attributes_serve_metrics_reads() -> None:
    from packetcore.net.metrics import _OPTIONAL_COUNTERS, COUNTERS

    text = METRICS_DOC.read_text(encoding="utf-8")
    paragraph = text[text.index("`packetcore.net.metrics.serve_metrics(host, port, source)`") :]
    paragraph = paragraph.split("\n\n")[0]  # to the paragraph's end, or the file's
    named = set(re.findall(r"`([a-z_]+)`", paragraph))
    read = {attribute for _, attribute, _ in COUNTERS + _OPTIONAL_COUNTERS}
    assert read | {"active", "faults"} <= named
    # Every name it gives is one a server's stats have.
    fields = {f.name for f in dataclasses.fields(ServerStats)}
    assert named - {"source"} <= fields
