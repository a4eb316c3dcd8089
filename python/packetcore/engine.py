"""Pick the engine: the compiled ``_engine``, or the pure-Python twin ``_pure``.

``PACKETCORE_NO_EXTENSIONS=1`` forces the twin.  Otherwise the compiled module is
used whenever the package was built with it; a package built on purpose without it
(``PACKETCORE_NO_EXTENSIONS=1`` at install time) has only the twin.  A compiled
module that exists but fails to import is an error, never a silent fallback.
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
    "decode",
    "encode",
    "gather",
    "implementation",
    "to_json",
]

implementation: Literal["cython", "python"]

if TYPE_CHECKING or os.environ.get("PACKETCORE_NO_EXTENSIONS", "") not in ("", "0"):
    from ._pure import (
        MAX_SEQUENCE,
        PACKET_SIZE,
        Decoder,
        GapTracker,
        PacketStore,
        decode,
        encode,
        gather,
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
            decode,
            encode,
            gather,
            to_json,
        )

        implementation = "cython"
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._engine":
            raise
        from ._pure import (
            MAX_SEQUENCE,
            PACKET_SIZE,
            Decoder,
            GapTracker,
            PacketStore,
            decode,
            encode,
            gather,
            to_json,
        )

        implementation = "python"
