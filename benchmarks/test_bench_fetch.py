"""End to end: ``packetcore-fetch`` as a user runs it, against the floor and the twin.

A feed at loss 0.25 is served by ``packetcore-serve`` in its own process; the fetch
runs as the command, in a process of its own, writing ``output.json``.  Its wall time
is compared, in the same run, with the floor no fetch can beat: starting an interpreter
that imports numpy and asyncio, receiving the feed's bytes (17 a packet, once) over a
raw loopback socket, and writing an output of the same size atomically (new file,
fsync, rename).  The floor is sized by the feed alone, so it does not depend on what
the fetch received nor on the order the benchmarks run in.

Goals: 1M packets <= 2x the floor, 10M <= 1.5x; peak RSS <= 40 B a packet + 150 MB;
with ``-o -`` the first record on stdout within 30 % of the fetch's time; the compiled
engine far ahead of the pure-Python twin.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SEED = 1
LOSS = 0.25
RESULTS: dict[str, float] = {}
GROUP = "fetch command, loss 0.25"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Serve:
    """``packetcore-serve`` with a synthetic feed, in a process of its own."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.port = _free_port()
        command = [
            sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--feed", f"synthetic:{count}", "--seed", str(SEED),
            "--drop", str(LOSS), "-q",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("packetcore serve did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module", params=[1_000_000, 10_000_000], ids=["1M", "10M"])
def served(request: pytest.FixtureRequest) -> Iterator[_Serve]:
    server = _Serve(request.param)
    try:
        yield server
    finally:
        server.close()


# A Python command that reports its own peak RSS (VmHWM) on the way out.  Not the
# child's rusage: Linux counts in it the memory of the parent it was forked from.
_PEAK = (
    "import atexit, runpy, sys\n"
    "def report():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('peak-rss-kib ' + line.split()[1] + '\\n')\n"
    "atexit.register(report)\n"
    "sys.argv = sys.argv[1:]\n"
    "if sys.argv[0] == '-m':\n"
    "    sys.argv = sys.argv[1:]\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "else:\n"
    "    exec(compile(sys.argv[0], '<floor>', 'exec'))\n"
)


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``python ARGS``; return (wall seconds, its own peak RSS in bytes)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, "-c", _PEAK, *command], stdout=subprocess.DEVNULL, stderr=err,
            env=env,
        )  # fmt: skip
        code = process.wait()
        took = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode()
    if code != 0:
        raise RuntimeError(f"{command[:3]} failed: {text[-2000:]}")
    peaks = [int(line.split()[1]) for line in text.splitlines() if line.startswith("peak-rss")]
    return took, peaks[-1] * 1024 if peaks else 0


def _fetch(port: int, output: Path, *extra: str) -> list[str]:
    return ["-m", "packetcore", "fetch", "--port", str(port), "-o", str(output), "-q", *extra]


_FLOOR = """
import asyncio, os, socket, sys, tempfile
import numpy
port, output, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with socket.create_connection(("127.0.0.1", port)) as sock:
    buffer = memoryview(bytearray(1 << 20))
    while sock.recv_into(buffer):
        pass
chunk = b"x" * (8 << 20)
directory = os.path.dirname(output)
fd, temp = tempfile.mkstemp(dir=directory)
left = size
while left:
    left -= os.write(fd, chunk[: min(left, len(chunk))])
os.fsync(fd)
os.close(fd)
os.replace(temp, output)
"""


def _floor(count: int, output: Path, size: int) -> float:
    """Return the wall time of the floor for a feed of ``count`` packets."""
    listener = socket.create_server(("127.0.0.1", 0))
    payload = bytes(count * 17)

    def send() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(payload)

    sender = threading.Thread(target=send)
    sender.start()
    port = listener.getsockname()[1]
    took, _ = _run([_FLOOR, str(port), str(output), str(size)])
    sender.join()
    listener.close()
    return took


@pytest.mark.benchmark(group=GROUP)
def test_fetch_command_against_the_floor(benchmark: Any, served: _Serve, tmp_path: Path) -> None:
    from packetcore.io.feeds import synthetic

    from packetcore import to_json

    count = served.count
    output = tmp_path / "output.json"
    rounds = 3 if count <= 1_000_000 else 1
    fetches: list[float] = []
    floors: list[float] = []
    peaks: list[int] = []

    def both() -> None:
        took, peak = _run(_fetch(served.port, output))
        fetches.append(took)
        peaks.append(peak)
        floors.append(_floor(count, tmp_path / "floor.out", output.stat().st_size))

    benchmark.pedantic(both, rounds=rounds, warmup_rounds=0)
    expected = to_json(synthetic(count, seed=SEED))
    assert output.read_bytes() == expected
    ratio = min(fetches) / min(floors)
    per_packet = (max(peaks) - (150 << 20)) / count
    label = f"{count // 1_000_000}M"
    goal = 2.0 if count <= 1_000_000 else 1.5
    benchmark.extra_info.update(
        fetch_to_floor=round(ratio, 2), peak_rss_mib=max(peaks) >> 20,
        bytes_per_packet_over_150mb=round(per_packet, 1),
    )  # fmt: skip
    RESULTS[f"fetch {label}"] = min(fetches)
    print(
        f"\n{label}: fetch / floor {ratio:.2f}x (goal <= {goal:g}x, each the best of "
        f"{rounds}); peak RSS {max(peaks) >> 20} MiB = 150 MiB + {per_packet:.1f} B/packet "
        f"(goal <= 40)"
    )


@pytest.mark.benchmark(group=GROUP)
def test_stdout_first_record(benchmark: Any, tmp_path: Path) -> None:
    # 5M packets to a pipe: when does the first record arrive, against the whole fetch?
    server = _Serve(5_000_000)
    try:
        command = [sys.executable, "-m", "packetcore", "fetch", "--port", str(server.port),
                   "-o", "-", "-q"]  # fmt: skip
        firsts: list[float] = []
        totals: list[float] = []

        def once() -> None:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.PIPE)
            assert process.stdout is not None
            fd = process.stdout.fileno()
            select.select([fd], [], [])
            first = time.perf_counter() - started
            while os.read(fd, 1 << 20):
                pass
            assert process.wait() == 0
            firsts.append(first)
            totals.append(time.perf_counter() - started)

        benchmark.pedantic(once, rounds=2, warmup_rounds=0)
    finally:
        server.close()
    share = min(f / t for f, t in zip(firsts, totals, strict=True))
    benchmark.extra_info["first_record_share"] = round(share, 3)
    print(f"\n-o - on 5M: first record at {share:.0%} of the fetch's time (goal <= 30%)")


_PURE = {**os.environ, "PACKETCORE_NO_EXTENSIONS": "1"}


@pytest.mark.benchmark(group=GROUP)
def test_compiled_against_the_twin(benchmark: Any, tmp_path: Path) -> None:
    server = _Serve(1_000_000)
    try:
        output = tmp_path / "output.json"
        compiled: list[float] = []
        pure: list[float] = []

        def both() -> None:
            compiled.append(_run(_fetch(server.port, output))[0])
            pure.append(_run(_fetch(server.port, output), env=_PURE)[0])

        benchmark.pedantic(both, rounds=1, warmup_rounds=0)
    finally:
        server.close()
    speedup = min(pure) / min(compiled)
    benchmark.extra_info["speedup_vs_pure"] = round(speedup, 1)
    print(f"\n1M fetch, compiled engine vs PACKETCORE_NO_EXTENSIONS=1: {speedup:.1f}x faster")


@pytest.mark.benchmark(group="formats, 1M packets")
def test_parquet_is_smaller_than_json(benchmark: Any, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from packetcore.io.feeds import synthetic
    from packetcore.io.formats import read, write

    feed = synthetic(1_000_000, seed=SEED)
    sizes = {}
    for form in ("json", "ndjson", "csv", "parquet", "bin"):
        path = tmp_path / f"feed.{form}"
        if form == "parquet":
            benchmark.pedantic(write, args=(path, feed), rounds=1, warmup_rounds=0)
        else:
            write(path, feed)
        assert read(path) == feed
        sizes[form] = path.stat().st_size
    ratio = sizes["json"] / sizes["parquet"]
    benchmark.extra_info.update({f"{k}_bytes": v for k, v in sizes.items()})
    print(f"\nparquet is {ratio:.1f}x smaller than json (goal >= 5x); sizes: {sizes}")
