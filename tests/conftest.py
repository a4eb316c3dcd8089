"""Shared fixtures: the engine implementations, tested as equals."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("PACKETCORE_NO_EXTENSIONS", "") not in ("", "0")

ENGINES = [
    pytest.param("packetcore.engine._engine", id="c", marks=pytest.mark.c_extension),
    pytest.param("packetcore.engine._pure", id="py"),
]


@pytest.fixture(scope="session", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation of the hot paths: the compiled engine and its twin."""
    return importlib.import_module(request.param)
