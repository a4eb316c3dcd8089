"""Pick the engine: the compiled ``_engine``, or the pure-Python twin ``_pure``.

``PACKETCORE_NO_EXTENSIONS=1`` forces the twin.  Otherwise the compiled module is
used whenever the package was built with it; a package built on purpose without it
(``PACKETCORE_NO_EXTENSIONS=1`` at install time) has only the twin.  A compiled
module that fails to import, or is missing from a package built with it, is an error,
never a silent fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from .._build_check import check_build, forced_twin

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
    "valid_symbols",
]

implementation: Literal["cython", "python"]


if TYPE_CHECKING or forced_twin():
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
        valid_symbols,
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
            valid_symbols,
        )

        implementation = "cython"
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._engine":
            raise
        check_build()
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
            valid_symbols,
        )

        implementation = "python"
