"""Shared fixtures: the engine implementations, tested as equals."""

from __future__ import annotations

import importlib
import os
import signal
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("PACKETCORE_NO_EXTENSIONS", "") not in ("", "0")

# Each run tests its own engine: the compiled one on its run, the twin on the twin's
# (PACKETCORE_NO_EXTENSIONS=1, where the compiled one is deselected as c_extension).  The
# twin loads nothing of the chosen engine, so its cases on the compiled run were the
# twin's run over again, the same tests twice.
ENGINES = [
    pytest.param("packetcore.engine._engine", id="c", marks=pytest.mark.c_extension),
    *([pytest.param("packetcore.engine._pure", id="py")] if NO_EXTENSIONS else []),
]


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a shell without job control (`make test &`)
    # inherits SIGINT ignored, and so would every process it starts: the signal tests
    # would fail for that alone.  Python's own handler again, which children reset.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation of the hot paths this run tests: the compiled engine or its twin."""
    return importlib.import_module(request.param)
