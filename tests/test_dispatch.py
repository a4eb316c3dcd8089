"""Which engine loads: the compiled one by default, the twin only when asked."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    import packetcore.engine._engine as compiled

    import packetcore

    if os.environ.get("PACKETCORE_NO_EXTENSIONS"):
        pytest.fail("c_extension tests must be deselected when the twin is forced")
    assert packetcore.decode is compiled.decode
    assert packetcore.GapTracker is compiled.GapTracker


@pytest.mark.parametrize("value", ["1", "yes"])
def test_switch_forces_the_twin(value: str) -> None:
    assert implementation(PACKETCORE_NO_EXTENSIONS=value) == "python"


@pytest.mark.c_extension
def test_switch_set_to_zero_is_off() -> None:
    assert implementation(PACKETCORE_NO_EXTENSIONS="0") == "cython"


def test_the_build_records_whether_it_compiled_the_engine() -> None:
    from packetcore import _build  # written by setup.py into every installed build

    compiled = importlib.util.find_spec("packetcore.engine._engine") is not None
    assert _build.COMPILED_ENGINE is compiled


@pytest.mark.c_extension
def test_a_missing_engine_in_a_compiled_build_is_an_error(tmp_path: Path) -> None:
    # A copy of the installed package without its compiled module: importing it must
    # fail loudly rather than fall back to the 500-times-slower twin.
    import packetcore

    copy = tmp_path / "packetcore"
    shutil.copytree(
        Path(packetcore.__file__).parent, copy, ignore=shutil.ignore_patterns("_engine*.so")
    )
    environment = {k: v for k, v in os.environ.items() if k != "PACKETCORE_NO_EXTENSIONS"}
    environment["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import packetcore"],
        env=environment,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "built with its compiled engine" in result.stderr


def test_the_dispatcher_exports_the_chosen_engine_whole() -> None:
    # packetcore.engine spells the engine's names out again: none may be missing, and
    # each must be the chosen engine's own object (the stub's names: test_parity).
    import packetcore.engine as dispatcher

    chosen = importlib.import_module(
        "packetcore.engine._engine"
        if dispatcher.implementation == "cython"
        else "packetcore.engine._pure"
    )
    assert sorted(dispatcher.__all__) == sorted([*chosen.__all__, "implementation"])
    for name in chosen.__all__:
        assert getattr(dispatcher, name) is getattr(chosen, name), name
