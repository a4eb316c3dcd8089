"""packetcore-check: how long the battery takes against a correct client of the book.

Goal (issue 18): the whole required battery, one scenario at a time, in under 30 s.
Graded: tests/clients/feedclient.py (a small base-protocol client in Python, a process
per scenario) and packetcore-fetch.  Each prints its wall time and the verdicts;
``make bench`` shows them beside the timings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from packetcore.check.client import check_client
from packetcore.check.model import Level
from packetcore.check.scenarios import SCENARIOS
from pytest_benchmark.fixture import BenchmarkFixture

CLIENT = Path(__file__).parent.parent / "tests" / "clients" / "feedclient.py"
REQUIRED = [s.name for s in SCENARIOS if s.level is Level.REQUIRED]
CLIENTS = {
    "feedclient": [sys.executable, str(CLIENT), "--port", "{port}", "--output", "{output}"],
    "packetcore-fetch": [sys.executable, "-m", "packetcore", "fetch", "--port", "{port}",
                         "-o", "{output}", "-q"],
}  # fmt: skip


@pytest.mark.benchmark(group="check")
@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("scope", ["required", "both levels"])
def test_check_battery(benchmark: BenchmarkFixture, client: str, scope: str) -> None:
    only = REQUIRED if scope == "required" else []
    level = Level.REQUIRED if scope == "required" else Level.HARDENING

    def battery() -> float:
        began = time.monotonic()
        run = check_client(CLIENTS[client], only=only, level=level, seed=0)
        assert run.passed, run.summary()
        return time.monotonic() - began

    seconds = benchmark.pedantic(battery, rounds=1, iterations=1, warmup_rounds=0)
    count = len(only) or len(SCENARIOS)
    print(f"\n{client}: {count} scenarios ({scope}), one at a time: {seconds:.1f} s "
          f"(goal for the required battery: under 30 s)")  # fmt: skip
