"""Pick the engine: the compiled ``_engine``, or the pure-Python twin ``_pure``.

``PACKETCORE_NO_EXTENSIONS=1`` forces the twin.  Otherwise the compiled module is
used whenever the package was built with it; a package built on purpose without it
(``PACKETCORE_NO_EXTENSIONS=1`` at install time) has only the twin.  A compiled
module that fails to import, or is missing from a package built with it, is an error,
never a silent fallback.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

__all__ = [
    "MAX_SEQUENCE",
    "PACKET_SIZE",
    "Decoder",
    "GapTracker",
    "PacketStore",
    "TextParser",
    "decode",
    "encode",
    "gather",
    "implementation",
    "text_rows",
    "to_json",
]

implementation: Literal["cython", "python"]


def _built_with_compiled_engine() -> bool:
    # setup.py writes _build.py into every built package; a source tree has none.
    try:
        from ._build import COMPILED_ENGINE  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        return False
    return bool(COMPILED_ENGINE)


if TYPE_CHECKING or os.environ.get("PACKETCORE_NO_EXTENSIONS", "") not in ("", "0"):
    from ._pure import (
        MAX_SEQUENCE,
        PACKET_SIZE,
        Decoder,
        GapTracker,
        PacketStore,
        TextParser,
        decode,
        encode,
        gather,
        text_rows,
        to_json,
    )

    implementation = "python"
else:
    try:
        from ._engine import (
            MAX_SEQUENCE,
            PACKET_SIZE,
            Decoder,
            GapTracker,
            PacketStore,
            TextParser,
            decode,
            encode,
            gather,
            text_rows,
            to_json,
        )

        implementation = "cython"
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._engine":
            raise
        if _built_with_compiled_engine():
            raise ImportError(
                "packetcore was built with its compiled engine, but packetcore._engine is "
                "missing: reinstall packetcore, or set PACKETCORE_NO_EXTENSIONS=1"
            ) from exc
        from ._pure import (
            MAX_SEQUENCE,
            PACKET_SIZE,
            Decoder,
            GapTracker,
            PacketStore,
            TextParser,
            decode,
            encode,
            gather,
            text_rows,
            to_json,
        )

        implementation = "python"
