"""The package's layout: every module placed by the import contracts; start-up stays lazy."""

from __future__ import annotations

import configparser
import pkgutil
import subprocess
import sys
from pathlib import Path

import packetcore

CONTRACTS = Path(__file__).resolve().parent.parent / ".importlinter"

#: Beside the layers: imported by all of them (errors, packets, protocol, _build_check),
#: the facade over them (__main__), and _build (written by the build: the engine's flag).
SHARED = {"errors", "packets", "protocol", "seeds", "_build_check", "_build", "__main__"}


def contracts() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    assert config.read(CONTRACTS), f"no {CONTRACTS.name} beside tests/"
    return config


def listed(value: str) -> set[str]:
    """The top-level module names a contract's list names (``a | b`` on one line)."""
    names = {n.strip() for line in value.splitlines() for n in line.split("|")}
    return {n.removeprefix("packetcore.") for n in names if n}


def test_every_top_level_module_is_in_a_layer_or_shared() -> None:
    # A new subpackage or module must be placed in .importlinter's layers (or here as
    # shared), or the contracts would not see it.
    layers = listed(contracts()["importlinter:contract:layers"]["layers"])
    modules = {m.name for m in pkgutil.iter_modules(packetcore.__path__)}
    assert modules - SHARED - layers == set()
    assert layers <= modules


def test_the_engine_contract_forbids_every_other_module() -> None:
    # "The engine imports nothing of the package but errors, packets and _build_check":
    # a forbidden list, so it must name every module but those.
    forbidden = listed(contracts()["importlinter:contract:engine"]["forbidden_modules"])
    modules = {m.name for m in pkgutil.iter_modules(packetcore.__path__)}
    allowed = {"engine", "errors", "packets", "_build_check", "_build"}
    assert forbidden == modules - allowed


def imported_at_start(*args: str) -> tuple[int, set[str]]:
    """Run ``python -X importtime -m packetcore ARGS``; its exit status and modules loaded."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "packetcore", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return result.returncode, modules


def test_the_command_line_loads_no_numpy_before_a_command_runs() -> None:
    # The usage, the version and a usage error answer at once: no numpy, no engine.
    for args, status in ((["--help"], 0), (["--version"], 0), (["nonsense"], 2)):
        code, modules = imported_at_start(*args)
        assert code == status, args
        assert "packetcore.__main__" in modules or "packetcore" in modules, args
        assert not {m for m in modules if m.split(".")[0] == "numpy"}, args
        assert not {m for m in modules if m.startswith("packetcore.engine")}, args


def test_every_benchmark_module_imports() -> None:
    # `make bench` is not run by `make test`: a module moved in the package must not
    # leave a benchmark that cannot even be collected.
    root = CONTRACTS.parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(root / "benchmarks")],
        capture_output=True, text=True, timeout=120, cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
