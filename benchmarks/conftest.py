"""Shared data for the engine benchmarks: one seeded feed of 1,000,000 packets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packetcore.packets import Packets

from packetcore.engine import _pure

N_PACKETS = 1_000_000
SEED = 20240617
LOSS = 0.25

# Ratios the engine must reach against each rival, per benchmark group.
TARGETS = {
    "decode": {"py": 100.0, "numpy": 1.0},
    "gaps": {"py": 50.0},
    "to_json": {"json": 20.0, "orjson": 3.0},
    "encode": {},
    "gather": {"numpy": 1.0},
}

_TICKERS = [b"MSFT", b"AAPL", b"AMZN", b"GOOG", b"META", b"TSLA", b"NVDA", b"IBM", b"GE", b"F"]


@pytest.fixture(scope="session")
def packets() -> Packets:
    """Return a seeded random feed, in sequence order."""
    rng = np.random.default_rng(SEED)
    return Packets(
        np.array(_TICKERS, dtype="S4")[rng.integers(0, len(_TICKERS), N_PACKETS)],
        np.array([b"B", b"S"], dtype="S1")[rng.integers(0, 2, N_PACKETS)],
        rng.integers(1, 10_000, N_PACKETS, dtype=np.int32),
        rng.integers(1, 5_000_000, N_PACKETS, dtype=np.int32),
        np.arange(1, N_PACKETS + 1, dtype=np.int32),
    )


@pytest.fixture(scope="session")
def wire(packets: Packets) -> bytes:
    """Return the feed's wire bytes."""
    return _pure.encode(packets)


@pytest.fixture(scope="session")
def arrivals() -> np.ndarray:
    """Return the sequences a stream-all pass delivers when each packet is lost at LOSS."""
    rng = np.random.default_rng(SEED + 1)
    return np.flatnonzero(rng.random(N_PACKETS) >= LOSS).astype(np.int64) + 1


@pytest.fixture(scope="session")
def records(packets: Packets) -> list[dict[str, Any]]:
    """Return the feed as output.json objects, built once outside every timing."""
    return packets.to_records()


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    """Print each group's speed-up of the compiled engine over every rival.

    Ratios of medians and of minimums, both from this one run: the machines are shared
    and noisy, so no absolute time means much, and one statistic alone can mislead.
    """
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        impl = bench.name.rsplit("[", 1)[-1].rstrip("]")
        group = stats.setdefault(bench.group or bench.name, {})
        group[impl] = (bench.stats.median, bench.stats.min)
    rows = []
    for group, by_impl in stats.items():
        if "c" not in by_impl:
            continue
        c_median, c_min = by_impl["c"]
        for impl, (median, minimum) in sorted(by_impl.items()):
            if impl == "c":
                continue
            ratio = median / c_median
            target = TARGETS.get(group, {}).get(impl)
            verdict = (
                ""
                if target is None
                else f"  target >= {target:g}x: " + ("met" if ratio >= target else "MISSED")
            )
            rows.append(
                f"{group:>8}  c vs {impl:<7} {ratio:8.1f}x median {minimum / c_min:8.1f}x min"
                + verdict
            )
    if rows:
        terminalreporter.section("engine speed-up (time of rival / time of c, one run)")
        for row in rows:
            terminalreporter.write_line(row)


# The tests' helpers that start real servers (nats-servers among them) serve the
# benchmarks too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
