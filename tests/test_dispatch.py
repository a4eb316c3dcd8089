"""Which engine loads: the compiled one by default, the twin only when asked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def implementation(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "PACKETCORE_NO_EXTENSIONS"}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", "import packetcore; print(packetcore.implementation)"],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.c_extension
def test_compiled_engine_loads_by_default() -> None:
    assert implementation() == "cython"


@pytest.mark.c_extension
def test_compiled_engine_is_what_the_package_exports() -> None:
    import packetcore._engine as compiled

    import packetcore

    if os.environ.get("PACKETCORE_NO_EXTENSIONS"):
        pytest.fail("c_extension tests must be deselected when the twin is forced")
    assert packetcore.decode is compiled.decode
    assert packetcore.GapTracker is compiled.GapTracker


@pytest.mark.parametrize("value", ["1", "yes"])
def test_switch_forces_the_twin(value: str) -> None:
    assert implementation(PACKETCORE_NO_EXTENSIONS=value) == "python"


def test_switch_set_to_zero_is_off() -> None:
    assert implementation(PACKETCORE_NO_EXTENSIONS="0") == implementation()
