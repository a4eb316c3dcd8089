"""Loading a 10-million-record JSON feed, as packetcore-serve --feed does: time and peak RSS.

The README quotes what this prints.  Each load runs in a fresh process that reports its
own peak RSS (VmHWM): ``load`` is :func:`packetcore.feeds.load_feed` (the columns),
``serve`` is what ``packetcore-serve --feed FILE.json`` builds before it listens (the
columns, then the feed's wire bytes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packetcore.feeds import synthetic

import packetcore

COUNT = 10_000_000

_MEASURE = """
import sys, time
started = time.perf_counter()
from packetcore.feeds import load_feed, open_feed
from packetcore.wire_index import WireIndex
feed = load_feed(sys.argv[2]) if sys.argv[1] == "load" else WireIndex(open_feed(sys.argv[2]))
took = time.perf_counter() - started
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"{took:.3f} {peak}")
"""


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
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, what, str(feed_json)],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        measured.append((float(out[0]), int(out[1]) * 1024))

    benchmark.group = "feed load: 10M json"
    benchmark.pedantic(load, rounds=3, iterations=1, warmup_rounds=0)
    seconds = min(took for took, _ in measured)
    peak = max(rss for _, rss in measured)
    benchmark.extra_info.update(seconds=round(seconds, 2), peak_rss_mib=peak >> 20)
    print(
        f"\n{what}: {COUNT:,} JSON records ({feed_json.stat().st_size >> 20} MiB) in "
        f"{seconds:.2f} s, peak RSS {peak >> 20} MiB ({peak / COUNT:.1f} B/record)"
    )
