"""packetcore: fetch a sequenced exchange feed over TCP, repair its gaps, write JSON."""

from __future__ import annotations

from .client import FetchError, FetchResult, fetch, fetch_async
from .engine import (
    MAX_SEQUENCE,
    PACKET_SIZE,
    Decoder,
    GapTracker,
    PacketStore,
    decode,
    encode,
    implementation,
    to_json,
)
from .errors import FeedError, PacketcoreError, ProtocolError
from .formats import FORMATS, read, write
from .packets import Packet, Packets

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "MAX_SEQUENCE",
    "PACKET_SIZE",
    "Decoder",
    "FeedError",
    "FetchError",
    "FetchResult",
    "GapTracker",
    "Packet",
    "PacketStore",
    "PacketcoreError",
    "Packets",
    "ProtocolError",
    "__version__",
    "decode",
    "encode",
    "fetch",
    "fetch_async",
    "implementation",
    "read",
    "to_json",
    "write",
]
