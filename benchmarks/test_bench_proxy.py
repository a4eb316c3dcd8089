"""packetcore-proxy with no fault: what the hop costs on a 10,000,000-packet stream.

The upstream is a packetcore server (in this process, its own thread) streaming a
synthetic feed with nothing dropped; the proxy is ``packetcore-proxy`` in its own
process; one raw-socket reader, in a third, times each fetch from connect to end of
file.  Each round fetches once directly (the rival: no hop at all) and once through the
proxy, so both see the same machine load; the result is the proxied throughput as a
ratio of the direct one (goal: >= 0.7).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packetcore.io.feeds import synthetic
from packetcore.server.server import Server
from pytest_benchmark.fixture import BenchmarkFixture

COUNT = 10_000_000
SEED = 1

# Reads one line "port" at a time, streams everything, prints "bytes seconds".
READER = """
import socket, sys, time
view = memoryview(bytearray(1 << 20))
for line in sys.stdin:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", int(line))) as sock:
        sock.sendall(bytes((1, 0)))
        total = 0
        while n := sock.recv_into(view):
            total += n
    print(total, time.perf_counter() - start, flush=True)
"""


class Reader:
    """A raw-socket reader in its own process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def fetch(self, port: int) -> tuple[int, float]:
        """Return the bytes of one stream-all and its throughput in bytes per second."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{port}\n")
        self.process.stdin.flush()
        size, seconds = self.process.stdout.readline().split()
        return int(size), int(size) / float(seconds)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


class ProxyProcess:
    """``packetcore-proxy`` with no fault in its own process, its log drained by a thread."""

    def __init__(self, upstream: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "packetcore", "proxy", "--host", "127.0.0.1", "--listen",
             "0", "--upstream", f"127.0.0.1:{upstream}", "-q"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        found = re.search(r"listening on port (\d+)", line)
        if found is None:
            self.process.kill()
            raise RuntimeError(f"packetcore-proxy did not start: {line!r}")
        self.port = int(found.group(1))
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    feed = synthetic(COUNT, seed=SEED)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0, idle_timeout=120) as running:
        yield running


def test_bench_proxy_stream_10m_vs_direct(benchmark: BenchmarkFixture, upstream: Server) -> None:
    reader = Reader()
    proxy = ProxyProcess(upstream.port)
    direct: list[float] = []
    proxied: list[float] = []
    expected = 17 * COUNT

    def direct_round() -> None:
        # Untimed setup of each round: the rival, interleaved with the proxy's rounds.
        size, rate = reader.fetch(upstream.port)
        assert size == expected
        direct.append(rate)

    def proxy_round() -> None:
        size, rate = reader.fetch(proxy.port)
        assert size == expected  # nothing lost on the way
        proxied.append(rate)

    try:
        reader.fetch(upstream.port)  # warm both paths once
        reader.fetch(proxy.port)
        benchmark.group = "proxy stream 10M"
        benchmark.pedantic(proxy_round, setup=direct_round, rounds=5, iterations=1)
    finally:
        proxy.stop()
        reader.close()
    ratio = statistics.median(proxied) / statistics.median(direct)
    benchmark.extra_info.update(
        proxy_gbps=round(statistics.median(proxied) / 1e9, 3),
        direct_gbps=round(statistics.median(direct) / 1e9, 3),
        ratio=round(ratio, 3),
    )
    print(
        f"\nstream 10M: through packetcore-proxy {statistics.median(proxied) / 1e9:.2f} GB/s, "
        f"direct {statistics.median(direct) / 1e9:.2f} GB/s, ratio {ratio:.2f} (goal >= 0.7)"
    )


def test_bench_fetch_through_the_proxy_vs_direct(
    benchmark: BenchmarkFixture, upstream: Server, tmp_path: Path
) -> None:
    # What a user sees: packetcore-fetch of the same 10M packets (nothing dropped) into
    # a .bin, directly and through the proxy, alternating, so both see the same load.
    proxy = ProxyProcess(upstream.port)
    direct: list[float] = []
    proxied: list[float] = []

    def fetch(port: int) -> float:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "packetcore", "fetch", "--host", "127.0.0.1", "--port",
             str(port), "-q", "-o", str(tmp_path / "out.bin")],
            check=True,
        )  # fmt: skip
        took = time.perf_counter() - started
        assert (tmp_path / "out.bin").stat().st_size == 17 * COUNT
        return took

    try:
        benchmark.group = "proxy fetch 10M"
        benchmark.pedantic(
            lambda: proxied.append(fetch(proxy.port)),
            setup=lambda: direct.append(fetch(upstream.port)),
            rounds=3,
            iterations=1,
        )
    finally:
        proxy.stop()
    ratio = min(direct) / min(proxied)  # a time ratio: the proxied speed as part of direct
    benchmark.extra_info.update(
        direct_s=round(min(direct), 2), proxied_s=round(min(proxied), 2), ratio=round(ratio, 3)
    )
    print(f"\nfetch 10M: through packetcore-proxy {ratio:.2f}x the direct speed (goal >= 0.7)")
