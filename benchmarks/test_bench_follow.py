"""Following a live feed: does ``packetcore.follow()`` keep up with the server's clock?

``packetcore-serve --live RATE --until N --drop P`` runs in a process of its own and
publishes by the clock from start-up; the follow runs here, through the public API, and
checks that every batch continues the one before (in order, nothing lost, nothing
twice).  Goals: at 200,000 packets/s and loss 0.05, 2,000,000 packets in order within
2,000,000 / 200,000 s + 3 s, gap-repair p99 under 50 ms.  Then the highest rate a
follow keeps up with (target 1,000,000/s): each rate publishes for a few seconds, and
keeping up means the whole feed arrived in order within that time + 0.5 s (the
server's own publishing included: a server that falls behind its clock counts too).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from packetcore.client.follow import FollowStats, follow

SEED = 1
GROUP = "follow a live server"


class _LiveServe:
    """``packetcore-serve --live`` in a process of its own, on a free loopback port."""

    def __init__(self, rate: float, until: int, drop: float) -> None:
        command = [
            sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
            "--live", str(rate), "--until", str(until), "--drop", str(drop),
            "--seed", str(SEED), "-q",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        match = re.search(r"listening on port (\d+)", line)
        if match is None:
            self.stop()
            pytest.fail(f"packetcore-serve --live did not start: {line}")
        self.port = int(match.group(1))
        # Drain the log so the server never blocks on it.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _follow(port: int, until: int) -> tuple[float, int, bool, FollowStats]:
    """Follow to ``until``; return the wall time, packets, whether in order, the stats."""

    async def run() -> tuple[float, int, bool, FollowStats]:
        started = time.perf_counter()
        count = 0
        previous = 0
        in_order = True
        async with follow("127.0.0.1", port, until=until) as feed:
            async for batch in feed:
                sequence = batch.sequence
                if int(sequence[0]) != previous + 1 or not bool(np.all(np.diff(sequence) == 1)):
                    in_order = False
                previous = int(sequence[-1])
                count += len(batch)
        return time.perf_counter() - started, count, in_order and previous == until, feed.stats

    return asyncio.run(run())


def _latencies(stats: FollowStats) -> dict[str, float]:
    """Return the repair and publication-to-hand-on latencies' percentiles in ms."""
    figures: dict[str, float] = {}
    for name, latencies in (("repair", stats.repair), ("publication", stats.publication)):
        for q in (50, 99, 99.9):
            figures[f"{name}_p{q:g}_ms"] = round(latencies.percentile(q) * 1e3, 2)
        figures[f"{name}_max_ms"] = round(latencies.max * 1e3, 2)
    return figures


def _run(rate: float, until: int, drop: float) -> tuple[float, int, bool, FollowStats]:
    server = _LiveServe(rate, until, drop)
    try:
        return _follow(server.port, until)
    finally:
        server.stop()


@pytest.mark.benchmark(group=GROUP)
def test_follow_keeps_up_at_200k_per_second(benchmark: Any) -> None:
    rate, until, drop = 200_000, 2_000_000, 0.05
    results: list[tuple[float, int, bool, FollowStats]] = []
    benchmark.pedantic(lambda: results.append(_run(rate, until, drop)), rounds=1)
    seconds, count, in_order, stats = results[0]
    budget = until / rate + 3
    benchmark.extra_info.update(
        {
            "rate": rate,
            "packets": count,
            "in_order_and_complete": in_order,
            "seconds": round(seconds, 3),
            "budget_seconds": budget,
            "gaps": stats.gaps,
            "repaired": stats.repaired,
            **_latencies(stats),
            "max_lag": stats.max_lag,
            "reconnects": stats.reconnects,
        }
    )
    print(f"\n200k/s: {stats.summary()}")
    assert in_order and count == until
    assert seconds <= budget, f"{seconds:.2f} s for {until} packets at {rate}/s"
    assert stats.repair_p99_ms < 50.0


@pytest.mark.benchmark(group=GROUP)
def test_follow_latency_at_1m_per_second(benchmark: Any) -> None:
    rate, until, drop = 1_000_000, 5_000_000, 0.05
    results: list[tuple[float, int, bool, FollowStats]] = []
    benchmark.pedantic(lambda: results.append(_run(rate, until, drop)), rounds=1)
    seconds, count, in_order, stats = results[0]
    benchmark.extra_info.update(
        {"rate": rate, "packets": count, "seconds": round(seconds, 3), **_latencies(stats)}
    )
    print(f"\n1M/s: {stats.summary()}")
    assert in_order and count == until
    assert stats.publication.count == until


@pytest.mark.benchmark(group=GROUP)
def test_bare_subscriber_latency_at_200k(benchmark: Any) -> None:
    """What the server's delivery alone costs: a raw socket, no follow, packets timed."""
    import socket

    from packetcore.protocol import decode_clock, decode_info, hello_request, subscribe_request

    rate, seconds = 200_000, 4.0
    server = _LiveServe(rate, 10**9, 0.0)
    latencies: list[np.ndarray] = []

    def read() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as hello:
            hello.sendall(hello_request())
            last = decode_info(hello.recv(16)).last
        with socket.create_connection(("127.0.0.1", server.port)) as sub:
            sub.sendall(subscribe_request(last + 1, clock=True))
            head = b""
            while len(head) < 32:
                head += sub.recv(32 - len(head))
            clock = decode_clock(head)
            pending, end = b"", time.monotonic() + seconds
            while time.monotonic() < end:
                data = sub.recv(1 << 20)
                now = time.time()
                pending += data
                whole = len(pending) // 17
                rows = np.frombuffer(pending, np.uint8, whole * 17).reshape(whole, 17)
                sequences = rows[:, 13:17].copy().view(">u4").ravel().astype(np.int64)
                pending = pending[whole * 17 :]
                latencies.append(now - clock.published(sequences))

    try:
        benchmark.pedantic(read, rounds=1)
    finally:
        server.stop()
    measured = np.concatenate(latencies) * 1e3
    figures = {f"p{q:g}_ms": round(float(np.percentile(measured, q)), 2) for q in (50, 99, 99.9)}
    figures["max_ms"] = round(float(measured.max()), 2)
    benchmark.extra_info.update({"rate": rate, "packets": len(measured), **figures})
    print(f"\nbare subscriber at 200k/s, publication to arrival: {figures}")
    assert len(measured) > rate * seconds * 0.9


#: The rates tried, in order, each for a couple of seconds of feed.
RATES = (200_000, 500_000, 1_000_000, 1_500_000, 2_000_000, 2_500_000, 3_000_000, 4_000_000)
SECONDS_EACH = 2.0
#: Keeping up: the whole feed in order at most this long after its last publication.
SLACK = 0.5


@pytest.mark.benchmark(group=GROUP)
def test_highest_rate_a_follow_keeps_up_with(benchmark: Any) -> None:
    kept: dict[int, dict[str, Any]] = {}
    missed: dict[int, dict[str, Any]] = {}

    def search() -> None:
        for rate in RATES:
            until = int(rate * SECONDS_EACH)
            seconds, _, in_order, stats = _run(rate, until, 0.05)
            figures = {
                "seconds": round(seconds, 2),
                "in_order_and_complete": in_order,
                "repair_p99_ms": round(stats.repair_p99_ms, 2),
                "publication_p99_ms": round(stats.publication.percentile(99) * 1e3, 2),
                "max_lag": stats.max_lag,
            }
            if in_order and seconds <= SECONDS_EACH + SLACK:
                kept[rate] = figures
            else:
                missed[rate] = figures
                break

    benchmark.pedantic(search, rounds=1)
    highest = max(kept, default=0)
    benchmark.extra_info.update(
        {"highest_rate_kept_up": highest, "kept": kept, "first_missed": missed}
    )
    print(f"\nhighest rate kept up with: {highest}/s; kept {kept}; missed {missed}")
    assert highest >= 200_000
    assert all(figures["in_order_and_complete"] for figures in kept.values())
