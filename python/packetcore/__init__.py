"""packetcore: fetch a sequenced exchange feed over TCP, repair its gaps, write JSON.

The names below load on first use (PEP 562), so that ``import packetcore.cli.fetch``
starts fast and loads numpy and the engine only when the command runs.
"""

from __future__ import annotations

import importlib

# Not typing's: importing typing is most of this module's start-up time, and every
# command starts here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .client.fetch import FetchResult, fetch, fetch_async
    from .client.follow import Follow, FollowStats, follow
    from .client.session import FetchOptions
    from .engine import (
        MAX_SEQUENCE,
        PACKET_SIZE,
        Decoder,
        GapTracker,
        PacketStore,
        TextParser,
        decode,
        encode,
        implementation,
        text_rows,
        to_json,
    )
    from .errors import FeedError, FetchError, PacketcoreError, ProtocolError
    from .io.formats import FORMATS, read, write
    from .packets import Packet, Packets

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "MAX_SEQUENCE",
    "PACKET_SIZE",
    "Decoder",
    "FeedError",
    "FetchError",
    "FetchOptions",
    "FetchResult",
    "Follow",
    "FollowStats",
    "GapTracker",
    "Packet",
    "PacketStore",
    "PacketcoreError",
    "Packets",
    "ProtocolError",
    "TextParser",
    "__version__",
    "decode",
    "encode",
    "fetch",
    "fetch_async",
    "follow",
    "implementation",
    "read",
    "text_rows",
    "to_json",
    "write",
]

# Where each name of __all__ lives.
_WHERE = {
    "FetchResult": ".client.fetch",
    "fetch": ".client.fetch",
    "fetch_async": ".client.fetch",
    "MAX_SEQUENCE": ".engine",
    "PACKET_SIZE": ".engine",
    "Decoder": ".engine",
    "GapTracker": ".engine",
    "PacketStore": ".engine",
    "TextParser": ".engine",
    "decode": ".engine",
    "encode": ".engine",
    "implementation": ".engine",
    "text_rows": ".engine",
    "to_json": ".engine",
    "FeedError": ".errors",
    "FetchError": ".errors",
    "PacketcoreError": ".errors",
    "ProtocolError": ".errors",
    "Follow": ".client.follow",
    "FollowStats": ".client.follow",
    "follow": ".client.follow",
    "FORMATS": ".io.formats",
    "read": ".io.formats",
    "write": ".io.formats",
    "Packet": ".packets",
    "Packets": ".packets",
    "FetchOptions": ".client.session",
}


def _check_build() -> None:
    # A build made with the compiled engine that lost it fails here, at import, rather
    # than fall back to the twin; the check imports nothing heavy.
    from ._build_check import check_build

    check_build()


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


_check_build()
