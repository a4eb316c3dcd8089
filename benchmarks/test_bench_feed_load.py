"""Loading a 10-million-record JSON feed, as packetcore-serve --feed does: time and peak RSS.

docs/performance.md quotes what this prints.  Each load runs in a fresh process that reports its
own peak RSS (VmHWM): ``load`` is :func:`packetcore.io.feeds.load_feed` (the columns),
``serve`` is ``packetcore-serve --feed FILE.json`` itself, from its start until it says
it listens (the columns, then the feed's wire bytes, which are all it keeps).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from packetcore.io.feeds import synthetic

import packetcore

COUNT = 10_000_000

_LOAD = """
import sys, time
started = time.perf_counter()
from packetcore.io.feeds import load_feed
feed = load_feed(sys.argv[1])
took = time.perf_counter() - started
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"{took:.3f} {peak}")
"""


def _load(path: Path) -> tuple[float, int]:
    """Return the seconds and the peak RSS (bytes) of load_feed in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1]) * 1024


def _serve(path: Path) -> tuple[float, int]:
    """Return the seconds packetcore-serve takes to listen on ``path``, and its peak RSS."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
         "--feed", str(path), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        took = time.perf_counter() - started
        assert "listening on port" in line, line
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:"))
        held = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        _HELD.append(held * 1024)
    finally:
        server.terminate()
        server.communicate(timeout=60)
    return took, peak * 1024


#: What each served feed's server held once listening (its RSS then), in bytes.
_HELD: list[int] = []


@pytest.fixture(scope="module")
def feed_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("feed") / "feed.json"
    packetcore.write(path, synthetic(COUNT, seed=1))
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
@pytest.mark.parametrize("what", ["load", "serve"])
def test_bench_load_a_10m_json_feed(benchmark: Any, feed_json: Path, what: str) -> None:
    measured: list[tuple[float, int]] = []

    def load() -> None:
        measured.append((_load if what == "load" else _serve)(feed_json))

    benchmark.group = "feed load: 10M json"
    benchmark.pedantic(load, rounds=3, iterations=1, warmup_rounds=0)
    seconds = min(took for took, _ in measured)
    peak = max(rss for _, rss in measured)
    benchmark.extra_info.update(seconds=round(seconds, 2), peak_rss_mib=peak >> 20)
    held = f", {max(_HELD) >> 20} MiB held once listening" if what == "serve" else ""
    print(
        f"\n{what}: {COUNT:,} JSON records ({feed_json.stat().st_size >> 20} MiB) in "
        f"{seconds:.2f} s, peak RSS {peak >> 20} MiB ({peak / COUNT:.1f} B/record){held}"
    )
