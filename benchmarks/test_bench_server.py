"""The server under load: one big lossy stream against a raw socket, and 200 clients at once.

Stream: a 10,000,000-packet synthetic feed at loss 0.25 streamed to one client on
loopback.  The baseline is a raw blocking socket ``sendall`` of the same number of
kept bytes from memory, the fastest any server could hand them to the kernel.  Both
are read by one raw-socket reader in its own process (so it shares no interpreter
lock with the server), which times each fetch from connect to end of file; the
result is the server's throughput as a ratio of the baseline's (goal: >= 0.8).

Load: 200 concurrent clients, in their own process, each doing stream-all and then
one pipelined resend connection for what the stream lost, against the book;
reported as completed fetches per second.

Scaling: both again against ``packetcore-serve`` processes, with 1 or 2 workers on the
asyncio or the uvloop loop; the table printed at the end of the module (run with -s)
puts the four side by side, each stream as a ratio of the raw socket measured in the
same rounds.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from packetcore.io.feeds import book, synthetic
from packetcore.server.server import Server
from pytest_benchmark.fixture import BenchmarkFixture

from packetcore import encode

COUNT = 10_000_000
LOSS = 0.25
SEED = 1
CLIENTS = 200
FETCHES_PER_CLIENT = 5

# Reads one line "host port request-hex" at a time, fetches, prints "bytes seconds".
READER = """
import socket, sys, time
view = memoryview(bytearray(1 << 20))
for line in sys.stdin:
    host, port, request = line.split()
    start = time.perf_counter()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(bytes.fromhex(request))
        total = 0
        while n := sock.recv_into(view):
            total += n
    print(total, time.perf_counter() - start, flush=True)
"""

# CLIENTS concurrent fetches of the book, each: stream-all, then resend what it lost.
LOAD = """
import asyncio, sys, time
port, clients, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
async def exchange(request):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return data
async def fetch():
    data = await exchange(bytes((1, 0)))
    seen = {int.from_bytes(data[i + 13:i + 17], "big") for i in range(0, len(data), 17)}
    missing = [s for s in range(1, 15) if s not in seen]
    if missing:
        data = await exchange(b"".join(bytes((2, s)) for s in missing))
        assert len(data) == 17 * len(missing), len(data)
async def client():
    for _ in range(rounds):
        await fetch()
async def main():
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    print(clients * rounds, time.perf_counter() - start, flush=True)
asyncio.run(main())
"""


class Reader:
    """A raw-socket reader in its own process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def fetch(self, port: int, request: bytes = b"\x01\x00") -> float:
        """Return the throughput of one fetch in bytes per second."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"127.0.0.1 {port} {request.hex()}\n")
        self.process.stdin.flush()
        size, seconds = self.process.stdout.readline().split()
        return int(size) / float(seconds)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


class RawSender:
    """Answer every connection with ``payload`` by one blocking ``sendall``."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(2)
                conn.sendall(self.payload)


@pytest.fixture(scope="module")
def big_feed_server() -> Iterator[Server]:
    feed = synthetic(COUNT, seed=SEED)
    with Server(feed, host="127.0.0.1", port=0, drop=LOSS, seed=SEED, idle_timeout=120) as run:
        yield run


@pytest.fixture(scope="module")
def reader() -> Iterator[Reader]:
    process = Reader()
    yield process
    process.close()


def test_bench_stream_10m_at_loss_vs_raw_socket(
    benchmark: BenchmarkFixture, big_feed_server: Server, reader: Reader
) -> None:
    feed = big_feed_server.feed
    rows = np.frombuffer(encode(feed), dtype="V17")
    kept = rows[np.random.default_rng(SEED).random(len(rows)) >= LOSS].tobytes()
    raw = RawSender(kept)
    raw_rates: list[float] = []
    server_rates: list[float] = []

    def raw_round() -> None:
        # Untimed setup of each round: the baseline, interleaved with the server's
        # rounds so both see the same machine load.
        raw_rates.append(reader.fetch(raw.port))

    def server_round() -> None:
        server_rates.append(reader.fetch(big_feed_server.port))

    reader.fetch(big_feed_server.port)  # warm both paths once
    reader.fetch(raw.port)
    benchmark.group = "server stream 10M"
    benchmark.pedantic(server_round, setup=raw_round, rounds=7, iterations=1)
    raw.listener.close()
    ratio = statistics.median(server_rates) / statistics.median(raw_rates)
    benchmark.extra_info.update(
        server_gbps=round(statistics.median(server_rates) / 1e9, 3),
        raw_gbps=round(statistics.median(raw_rates) / 1e9, 3),
        ratio=round(ratio, 3),
        kept_bytes=len(kept),
    )
    print(
        f"\nstream 10M @ {LOSS}: server {statistics.median(server_rates) / 1e9:.2f} GB/s, "
        f"raw socket {statistics.median(raw_rates) / 1e9:.2f} GB/s, ratio {ratio:.2f} "
        "(goal >= 0.8)"
    )


def test_bench_200_clients_fetching_the_book(benchmark: BenchmarkFixture) -> None:
    rates: list[float] = []
    with Server(book(), host="127.0.0.1", port=0, drop=LOSS, seed=SEED) as running:

        def load() -> None:
            result = subprocess.run(
                [sys.executable, "-c", LOAD, str(running.port), str(CLIENTS),
                 str(FETCHES_PER_CLIENT)],
                capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            fetches, seconds = result.stdout.split()
            rates.append(int(fetches) / float(seconds))

        benchmark.group = "server load"
        benchmark.pedantic(load, rounds=3, iterations=1)
        assert running.stats.bad_requests == 0
        assert running.stats.refused == 0
    benchmark.extra_info.update(
        clients=CLIENTS, fetches_per_second=round(statistics.median(rates), 1)
    )
    print(
        f"\n{CLIENTS} clients: {statistics.median(rates):.0f} fetches/s "
        f"(stream-all + resends of the book)"
    )


# -- the same loads against packetcore-serve: workers and event loops --------------------

CONFIGS = [(1, "asyncio"), (1, "uvloop"), (2, "asyncio"), (2, "uvloop")]
IDS = [f"w{workers}-{loop}" for workers, loop in CONFIGS]


class ServeProcess:
    """``packetcore-serve`` in its own process, its stderr drained by a thread."""

    def __init__(self, workers: int, loop: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
             "--workers", str(workers), "--loop", loop, "--seed", str(SEED),
             "--drop", str(LOSS), "-q", *args],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        found = re.search(r"listening on port (\d+)", line)
        if found is None:
            self.process.kill()
            raise RuntimeError(f"packetcore-serve did not start: {line!r}")
        self.port = int(found.group(1))
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self.lines.extend(self.process.stderr)

    def stop(self) -> str:
        """Stop the server; return its summary line."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return next((line for line in self.lines if "stopped by" in line), "").strip()


@pytest.fixture(scope="module")
def scaling() -> Iterator[dict[str, dict[str, float]]]:
    """Collect each configuration's figures; print them side by side at the end."""
    table: dict[str, dict[str, float]] = {}
    yield table
    if table:
        print("\nserver scaling (one run; stream ratio = server / raw socket, same rounds):")
        for name in IDS:
            row = table.get(name, {})
            print(
                f"  {name:<11} 200 clients {row.get('fetches_per_second', float('nan')):7.0f} "
                f"fetches/s   stream 10M {row.get('stream_gbps', float('nan')):5.2f} GB/s, "
                f"ratio {row.get('stream_ratio', float('nan')):.2f}"
            )


def _needs(loop: str) -> None:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed (pip install 'packetcore[uvloop]')")


@pytest.mark.parametrize(("workers", "loop"), CONFIGS, ids=IDS)
def test_bench_200_clients_workers_and_loop(
    benchmark: BenchmarkFixture, scaling: dict[str, dict[str, float]], workers: int, loop: str
) -> None:
    _needs(loop)
    rates: list[float] = []
    server = ServeProcess(workers, loop)
    try:

        def load() -> None:
            result = subprocess.run(
                [sys.executable, "-c", LOAD, str(server.port), str(CLIENTS),
                 str(FETCHES_PER_CLIENT)],
                capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            fetches, seconds = result.stdout.split()
            rates.append(int(fetches) / float(seconds))

        benchmark.group = "server load: workers and loop"
        benchmark.pedantic(load, rounds=3, iterations=1)
    finally:
        summary = server.stop()
    assert "0 refused" in summary and "0 bad requests" in summary, summary
    rate = statistics.median(rates)
    benchmark.extra_info.update(fetches_per_second=round(rate, 1), summary=summary)
    scaling.setdefault(f"w{workers}-{loop}", {})["fetches_per_second"] = rate


@pytest.mark.parametrize(("workers", "loop"), CONFIGS, ids=IDS)
def test_bench_stream_10m_workers_and_loop(
    benchmark: BenchmarkFixture,
    scaling: dict[str, dict[str, float]],
    reader: Reader,
    workers: int,
    loop: str,
) -> None:
    _needs(loop)
    # Only the kept bytes' count matters to the baseline: any bytes of that length do.
    raw = RawSender(bytes(_kept_bytes()))
    server = ServeProcess(workers, loop, "--feed", f"synthetic:{COUNT}", "--idle-timeout", "120")
    raw_rates: list[float] = []
    server_rates: list[float] = []
    try:
        reader.fetch(server.port)  # warm both paths once
        reader.fetch(raw.port)
        benchmark.group = "server stream 10M: workers and loop"
        benchmark.pedantic(
            lambda: server_rates.append(reader.fetch(server.port)),
            setup=lambda: raw_rates.append(reader.fetch(raw.port)),
            rounds=7,
            iterations=1,
        )
    finally:
        server.stop()
        raw.listener.close()
    ratio = statistics.median(server_rates) / statistics.median(raw_rates)
    benchmark.extra_info.update(ratio=round(ratio, 3))
    row = scaling.setdefault(f"w{workers}-{loop}", {})
    row["stream_gbps"] = statistics.median(server_rates) / 1e9
    row["stream_ratio"] = ratio


def _kept_bytes() -> int:
    """Return the wire bytes a seeded stream-all of the 10M feed keeps, about 3/4 of them."""
    kept = int((np.random.default_rng(SEED).random(COUNT) >= LOSS).sum())
    return kept * 17
