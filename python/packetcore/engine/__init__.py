"""Pick the engine: the compiled ``_engine``, or the pure-Python twin ``_pure``.

``PACKETCORE_NO_EXTENSIONS=1`` forces the twin.  Otherwise the compiled module is
used whenever the package was built with it; a package built on purpose without it
(``PACKETCORE_NO_EXTENSIONS=1`` at install time) has only the twin.  A compiled
module that fails to import, or is missing from a package built with it, is an error,
never a silent fallback.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Literal

from .._build_check import check_build, forced_twin
from . import _pure

if TYPE_CHECKING:
    # Type checkers read the twin's code; the stub, _engine.pyi, is held to both engines
    # by stubtest (make lint) and tests/test_parity.py.
    from ._pure import *  # noqa: F403

#: The engine's API: the twin's names, which the compiled module has too (test_parity).
__all__ = [*_pure.__all__, "implementation"]

implementation: Literal["cython", "python"]


def _chosen() -> tuple[ModuleType, Literal["cython", "python"]]:
    if forced_twin():
        return _pure, "python"
    try:
        from . import _engine
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._engine":
            raise
        check_build()  # built without it on purpose, or it went missing: an error
        return _pure, "python"
    return _engine, "cython"


_module, implementation = _chosen()
globals().update({name: getattr(_module, name) for name in _pure.__all__})
