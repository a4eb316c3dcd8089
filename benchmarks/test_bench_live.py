"""The live server's publish rate: the highest rate one raw subscriber keeps up with.

``packetcore-serve --live RATE --until N`` runs in its own process, publishing N = RATE x
SECONDS synthetic packets; one raw-socket subscriber (callType 5 from sequence 1), in
another process, reads to the end of the feed as fast as the socket gives.  It kept up
when every packet the loss simulation kept arrived (the server disconnects a subscriber
that falls ``--max-lag`` behind) and the feed ended within SLACK of its last packet's
publication: the server paced by the clock, never by its own speed.

The ladder doubles the rate from 250,000 packets/s until the subscriber falls behind
(target: 1,000,000 packets/s kept).  The rival from outside is a raw blocking socket's
``sendall`` of the same bytes to the same reader: how fast this machine's loopback moves
packets at all, the ceiling of any publisher.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from packetcore.protocol import subscribe_request
from packetcore.server.live import LiveFeed
from pytest_benchmark.fixture import BenchmarkFixture

SECONDS = 2.0
#: A feed kept up with ends at most this long after its last packet is due.
SLACK = 0.25
LADDER = (250_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000)
TARGET = 1_000_000
SEED = 12

# Reads "port request-hex k" lines; for each, k threads connect, send, read to EOF (or
# a reset); prints "bytes seconds last-sequence" of each, on one line, space-separated.
READER = """
import socket, sys, threading, time
def one(port, request, out):
    view = memoryview(bytearray(1 << 22))
    sock = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    sock.sendall(request)
    total, tail = 0, b""
    try:
        while n := sock.recv_into(view):
            total += n
            tail = (tail + bytes(view[:n]))[-17:] if n < 17 else bytes(view[n - 17:n])
    except ConnectionResetError:
        pass
    seconds = time.perf_counter() - start
    sock.close()
    last = int.from_bytes(tail[13:17], "big") if len(tail) == 17 and total % 17 == 0 else -1
    out.append(f"{total} {seconds} {last}")
for line in sys.stdin:
    port, request, k = line.split()
    out = []
    threads = [threading.Thread(target=one, args=(int(port), bytes.fromhex(request), out))
               for _ in range(int(k))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(" ".join(out), flush=True)
"""


@dataclass
class Run:
    """One subscription to the end of a live feed."""

    rate: int
    count: int
    received: int  # packets
    seconds: float
    last: int

    @property
    def kept_up(self) -> bool:
        """Return whether every packet arrived and the feed ended on time."""
        return self.last == self.count and self.seconds <= (self.count - 1) / self.rate + SLACK

    @property
    def end_lag_ms(self) -> float:
        """Return how long after its due time the final packet arrived (about)."""
        return (self.seconds - (self.count - 1) / self.rate) * 1000


class Reader:
    """A raw-socket subscriber in its own process (no interpreter lock shared)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def read(self, port: int, request: bytes, k: int = 1) -> list[tuple[int, float, int]]:
        """Return (bytes, seconds, last sequence) of each of ``k`` connections at once."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{port} {request.hex()} {k}\n")
        self.process.stdin.flush()
        fields = self.process.stdout.readline().split()
        return [
            (int(fields[i]), float(fields[i + 1]), int(fields[i + 2]))
            for i in range(0, len(fields), 3)
        ]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def reader() -> Iterator[Reader]:
    process = Reader()
    yield process
    process.close()


class LiveProcess:
    """``packetcore-serve --live RATE --until N`` on a free loopback port.

    ``--keep-last``: the final packet always arrives, so its sequence tells a subscriber
    that was cut off from one that got the whole feed.
    """

    def __init__(self, rate: int, count: int, drop: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
             "--live", str(rate), "--until", str(count), "--drop", str(drop),
             "--seed", str(SEED), "--keep-last", "-q"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        match = re.search(r"listening on port (\d+)", line)
        assert match, line
        self.port = int(match.group(1))
        # Keep the pipe drained: a slow-subscriber warning must never block the server.
        self._drain = threading.Thread(target=self.process.stderr.read, daemon=True)
        self._drain.start()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def subscribe_runs(reader: Reader, rate: int, drop: float = 0.0, k: int = 1) -> list[Run]:
    """Start a live server at ``rate``; ``k`` subscribers from 1 to the end; their runs."""
    count = int(rate * SECONDS)
    server = LiveProcess(rate, count, drop)
    try:
        answers = reader.read(server.port, subscribe_request(1), k)
    finally:
        server.close()
    return [Run(rate, count, size // 17, seconds, last) for size, seconds, last in answers]


def subscribe_run(reader: Reader, rate: int, drop: float = 0.0) -> Run:
    """Start a live server at ``rate``, subscribe from 1 to the end; return the run."""
    return subscribe_runs(reader, rate, drop)[0]


def test_bench_live_subscriber_at_1m_packets_per_second(
    benchmark: BenchmarkFixture, reader: Reader
) -> None:
    runs: list[Run] = []
    benchmark.group = "live subscribe"
    benchmark.pedantic(lambda: runs.append(subscribe_run(reader, TARGET)), rounds=3, iterations=1)
    for run in runs:
        assert run.received == run.count, "packets lost at drop 0"
    kept = sum(run.kept_up for run in runs)
    lags = ", ".join(f"{run.end_lag_ms:.0f}" for run in runs)
    benchmark.extra_info.update(rate=TARGET, kept_up=f"{kept}/{len(runs)}", end_lag_ms=lags)
    print(f"\nlive 1M packets/s for {SECONDS:g}s: kept up {kept}/{len(runs)}, end lag ms {lags}")
    assert kept == len(runs)


@pytest.mark.parametrize("drop", [0.0, 0.05])
def test_bench_live_highest_rate_kept_up(
    benchmark: BenchmarkFixture, reader: Reader, drop: float
) -> None:
    runs: list[Run] = []

    def ladder() -> None:
        for rate in LADDER:
            run = subscribe_run(reader, rate, drop)
            runs.append(run)
            if not run.kept_up:
                break

    benchmark.group = f"live ladder drop {drop:g}"
    benchmark.pedantic(ladder, rounds=1, iterations=1)
    highest = max([run.rate for run in runs if run.kept_up], default=0)
    raw = raw_socket_packets_per_second(reader)
    for run in runs:
        expected_fraction = 1.0 - drop
        assert run.received <= run.count
        if run.kept_up:
            assert abs(run.received / run.count - expected_fraction) < 0.01
        print(
            f"\n  drop {drop:g} rate {run.rate:>10,}: {run.received:>10,} of {run.count:,} "
            f"in {run.seconds:.2f}s, end lag {run.end_lag_ms:7.0f} ms, "
            f"{'kept up' if run.kept_up else 'FELL BEHIND'}",
            end="",
        )
    print(
        f"\nhighest rate kept up at drop {drop:g}: {highest:,} packets/s (target "
        f"{TARGET:,}); raw socket sendall to the same reader: {raw:,.0f} packets/s"
    )
    benchmark.extra_info.update(highest=highest, raw_socket_pps=round(raw))
    assert highest >= TARGET


def raw_socket_packets_per_second(reader: Reader) -> float:
    """Return how fast a blocking ``sendall`` of a synthetic feed reaches the reader."""
    count = 4_000_000
    payload = bytes(LiveFeed(1.0, seed=SEED).rows(0, count))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(6)
            conn.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    [(size, seconds, _)] = reader.read(listener.getsockname()[1], subscribe_request(1))
    thread.join(30)
    listener.close()
    assert size == len(payload)
    return count / seconds


@pytest.mark.parametrize("subscribers", [8, 32])
def test_bench_live_many_subscribers_at_1m(
    benchmark: BenchmarkFixture, reader: Reader, subscribers: int
) -> None:
    runs: list[Run] = []
    benchmark.group = "live subscribers"
    benchmark.pedantic(
        lambda: runs.extend(subscribe_runs(reader, TARGET, 0.05, subscribers)),
        rounds=1, iterations=1,
    )  # fmt: skip
    kept = sum(run.kept_up for run in runs)
    worst = max(run.end_lag_ms for run in runs)
    complete = sum(run.last == run.count for run in runs)
    print(
        f"\n{subscribers} subscribers at {TARGET:,} packets/s, drop 0.05: {complete} got "
        f"every packet, {kept} kept up (within {SLACK * 1000:.0f} ms), worst end lag "
        f"{worst:.0f} ms; reader threads share one process and the 2 cores"
    )
    benchmark.extra_info.update(complete=complete, kept_up=kept, worst_end_lag_ms=round(worst))
    assert complete == subscribers  # nobody disconnected, nothing lost but the drops
