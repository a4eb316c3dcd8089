"""Whether this copy of packetcore was built with its compiled engine, and still has it.

Imports nothing heavy: ``import packetcore`` runs :func:`check_build` at once, and
:mod:`packetcore.engine` asks :func:`forced_twin` which engine to load.
"""

from __future__ import annotations

import importlib.machinery
import os

__all__ = ["check_build", "forced_twin"]


def forced_twin() -> bool:
    """Return whether ``PACKETCORE_NO_EXTENSIONS`` asks for the pure-Python twin."""
    return os.environ.get("PACKETCORE_NO_EXTENSIONS", "") not in ("", "0")


def check_build() -> None:
    """Raise ImportError if this copy was built with the compiled engine and lost it.

    Cheap (it imports nothing heavy), so ``import packetcore`` runs it at once.
    """
    if forced_twin():
        return
    # setup.py writes _build.py into every built package; a source tree has none.
    try:
        from ._build import COMPILED_ENGINE  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        return
    if COMPILED_ENGINE and not _compiled_engine_present():
        raise ImportError(
            "packetcore was built with its compiled engine, but packetcore.engine._engine is "
            "missing: reinstall packetcore, or set PACKETCORE_NO_EXTENSIONS=1"
        )


def _compiled_engine_present() -> bool:
    # Looked for on disk: finding the module's spec would import packetcore.engine,
    # and numpy with it, at ``import packetcore``.
    folder = os.path.join(os.path.dirname(__file__), "engine")
    return any(
        os.path.exists(os.path.join(folder, "_engine" + suffix))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )
