"""End to end: a 1,000,000-packet feed at loss 0.25, served by packetcore-serve, fetched
to output.json, against the floor and against the pure-Python engine.

The server runs in its own process (as it would in use), so it does not share the
client's interpreter lock.  The floor is what no fetch can beat: receiving the bytes
the fetch received over a raw loopback socket, plus writing (and fsyncing) the same
output bytes.  Goals: fetch <= 2x the floor; the compiled engine >= 20x the pure one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packetcore.client import fetch
from packetcore.feeds import synthetic
from packetcore.output import write_atomic, write_packets

import packetcore
from packetcore import to_json

COUNT = 1_000_000
LOSS = 0.25
SEED = 1
RESULTS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    port = _free_port()
    command = [
        sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--feed", f"synthetic:{COUNT}", "--seed", str(SEED),
        "--drop", str(LOSS), "-q",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("packetcore serve did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _fetch_to_file(port: int, output: Path) -> Any:
    result = fetch(port=port)
    assert result.complete
    write_packets(output, result.packets)
    return result


@pytest.mark.benchmark(group="fetch 1M packets, loss 0.25")
def test_fetch_to_output_json(benchmark: Any, server_port: int, tmp_path: Path) -> None:
    output = tmp_path / "output.json"
    result = benchmark.pedantic(
        _fetch_to_file, args=(server_port, output), rounds=5, warmup_rounds=1
    )
    assert output.read_bytes() == to_json(synthetic(COUNT, seed=SEED))
    RESULTS["fetch"] = benchmark.stats.stats.median
    RESULTS["received_bytes"] = result.received * packetcore.PACKET_SIZE
    RESULTS["output_bytes"] = output.stat().st_size
    benchmark.extra_info["engine"] = packetcore.implementation
    benchmark.extra_info["received_packets"] = result.received


def _floor(payload: bytes, document: bytes, output: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    thread = threading.Thread(target=lambda: (sender.sendall(payload), sender.close()))
    thread.start()
    buffer = bytearray(1 << 18)
    view = memoryview(buffer)
    while receiver.recv_into(view):
        pass
    thread.join()
    receiver.close()
    listener.close()
    write_atomic(output, document)


@pytest.mark.benchmark(group="fetch 1M packets, loss 0.25")
def test_floor_raw_socket_and_write(benchmark: Any, tmp_path: Path) -> None:
    feed = synthetic(COUNT, seed=SEED)
    document = to_json(feed)
    size = int(RESULTS.get("received_bytes", COUNT * 17 * 1.25))
    payload = bytes(size)
    benchmark.pedantic(
        _floor, args=(payload, document, tmp_path / "output.json"), rounds=5, warmup_rounds=1
    )
    RESULTS["floor"] = benchmark.stats.stats.median
    if "fetch" in RESULTS:
        ratio = RESULTS["fetch"] / RESULTS["floor"]
        benchmark.extra_info["fetch_to_floor"] = round(ratio, 2)
        print(f"\nfetch / floor: {ratio:.2f}x (goal <= 2x)")


_PURE_FETCH = """
import sys, time
from packetcore import implementation
from packetcore.client import fetch
from packetcore.output import write_packets
assert implementation == "python", implementation
started = time.perf_counter()
result = fetch(port=int(sys.argv[1]))
write_packets(sys.argv[2], result.packets)
assert result.complete
print(time.perf_counter() - started)
"""


@pytest.mark.benchmark(group="fetch 1M packets, loss 0.25")
def test_fetch_pure_python_engine(benchmark: Any, server_port: int, tmp_path: Path) -> None:
    output = tmp_path / "output.json"
    env = {**os.environ, "PACKETCORE_NO_EXTENSIONS": "1"}
    times: list[float] = []

    def run() -> None:
        done = subprocess.run(
            [sys.executable, "-c", _PURE_FETCH, str(server_port), str(output)],
            env=env, check=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        times.append(float(done.stdout.split()[-1]))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    RESULTS["pure"] = min(times)
    benchmark.extra_info["pure_fetch_seconds"] = round(RESULTS["pure"], 3)
    if "fetch" in RESULTS:
        speedup = RESULTS["pure"] / RESULTS["fetch"]
        benchmark.extra_info["speedup_vs_pure"] = round(speedup, 1)
        print(f"\ncompiled engine vs pure Python: {speedup:.1f}x faster (goal >= 20x)")
