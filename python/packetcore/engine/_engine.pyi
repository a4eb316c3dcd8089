"""Type stub of the compiled engine ``packetcore.engine._engine`` (the twin of ``_pure``)."""

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

from ..packets import Packets

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
    "text_rows",
    "to_json",
    "valid_symbols",
]

PACKET_SIZE: int
MAX_SEQUENCE: int

# A compiled (cdef) class: no class can derive from it and another such base at once.
@disjoint_base
class Decoder:
    """Decode a byte stream split into chunks at any byte."""

    strict: bool
    def __init__(self, strict: bool = False) -> None: ...
    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held for the next chunk."""
    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet decoded (the pending tail's start)."""
    @property
    def invalid_count(self) -> int:
        """Packets rejected as invalid so far."""
    def feed(self, chunk: bytes | bytearray | memoryview) -> Packets:
        """Decode ``chunk`` and return the packets it completed."""

def decode(buf: bytes | bytearray | memoryview, strict: bool = False) -> Packets:
    """Decode whole packets; invalid ones are skipped and listed in ``invalid``."""

def encode(packets: Packets) -> bytes:
    """Encode packets as their wire bytes (the inverse of :func:`decode`)."""

def valid_symbols(symbols: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Return a mask of a symbol column: True where a symbol keeps the protocol's rule."""

def gather(wire: bytes | bytearray | memoryview, keep: npt.ArrayLike) -> bytes:
    """Return the wire bytes of the packets whose ``keep`` flag is set, in order."""

@disjoint_base
class GapTracker:
    """A bitmap of the sequences seen, one bit per sequence from ``first`` to ``last``."""

    received: int
    duplicates: int
    out_of_range: int
    def __init__(self, first: int = 1, last: int | None = None) -> None: ...
    @property
    def first(self) -> int:
        """The lowest sequence of the feed."""
    @property
    def last(self) -> int | None:
        """The last sequence: as set, else the highest seen, else ``None``."""
    @last.setter
    def last(self, value: int) -> None: ...
    @property
    def last_known(self) -> bool:
        """Whether ``last`` was set rather than inferred from the sequences seen."""
    @property
    def highest(self) -> int | None:
        """The highest sequence seen, or ``None``."""
    @property
    def complete(self) -> bool:
        """Whether ``last`` is known and every sequence up to it was seen."""
    def __contains__(self, sequence: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def add(self, sequences: Iterable[int] | npt.ArrayLike) -> int:
        """Mark sequences seen; return how many were new."""
    def missing(self) -> npt.NDArray[np.int64]:
        """Return the sequences from ``first`` to ``last`` not seen, ascending."""
    def missing_ranges(self) -> npt.NDArray[np.int64]:
        """Return the missing runs as an ``(n, 2)`` array of ``(start, count)``."""
    def missing_count(self) -> int:
        """Return how many sequences from ``first`` to ``last`` were not seen."""

@disjoint_base
class PacketStore:
    """Put packets arriving in any order into sequence order, without sorting."""

    def __init__(self, first: int = 1, last: int | None = None) -> None: ...
    @property
    def first(self) -> int:
        """The lowest sequence of the feed."""
    @property
    def last(self) -> int | None:
        """The last sequence: as fixed, else the highest seen, else ``None``."""
    @last.setter
    def last(self, value: int) -> None: ...
    @property
    def last_known(self) -> bool:
        """Whether ``last`` was fixed rather than inferred from the sequences seen."""
    @property
    def highest(self) -> int | None:
        """The highest sequence ever held, taken ones included, or ``None``."""
    @property
    def cursor(self) -> int:
        """The sequence the next :meth:`take` starts from."""
    @property
    def pending(self) -> int:
        """Packets held and not yet taken."""
    @property
    def complete(self) -> bool:
        """Whether ``last`` is known and every sequence up to it was held or taken."""
    @property
    def nbytes(self) -> int:
        """Bytes allocated: dense chunks, the chunk table, the sparse table, skipped runs."""
    @property
    def received(self) -> int:
        """Packets received within ``first..last``, duplicates included (read-only)."""
    @property
    def duplicates(self) -> int:
        """Later arrivals of a sequence with the payload held (or already taken)."""
    @property
    def conflicts(self) -> int:
        """Later arrivals whose payload differed from the one held."""
    @property
    def out_of_range(self) -> int:
        """Packets outside ``first..last`` (or in a run :meth:`take` passed), dropped."""
    def __len__(self) -> int: ...
    def __contains__(self, sequence: object, /) -> bool: ...
    def bound(self, first: int, last: int | None) -> None:
        """Narrow the feed to ``first..last``; held packets outside are dropped."""
    def add(self, packets: Packets) -> int:
        """Store the packets; return how many sequences were new."""
    def contiguous(self) -> int:
        """Return the first sequence from the cursor on that is not held."""
    def missing_ranges(self, stop: int | None = None) -> npt.NDArray[np.int64]:
        """Return the missing runs from the cursor on as ``(n, 2)`` ``(start, count)``."""
    def missing_count(self) -> int:
        """Return how many sequences from the cursor to ``last`` are not held."""
    def take(self, stop: int) -> Packets:
        """Return the held packets below ``stop`` from the cursor on, and forget them."""
    def replace(self, packets: Packets) -> None:
        """Overwrite the payload of held sequences not yet taken."""
    def discard(self, sequences: npt.ArrayLike) -> int:
        """Forget held sequences not yet taken, so they are missing again; count them."""
    def peek(self, sequences: npt.ArrayLike) -> Packets:
        """Return the packets held and not yet taken among ``sequences``, in order."""
    def conflicting(self) -> Packets:
        """Return the later arrivals whose payload differed from the packet held."""

def to_json(packets: Packets) -> bytes:
    """Return the ``output.json`` document: one object per packet, in sequence order."""

def text_rows(packets: Packets, form: str) -> bytes:
    """Return the packets' records as ``form`` text, in the order given, without framing."""

@disjoint_base
class TextParser:
    """Parse a json, ndjson or csv document fed in chunks split at any byte."""

    @property
    def form(self) -> str:
        """The form parsed: ``json``, ``ndjson`` or ``csv``."""
    def __init__(self, form: str) -> None: ...
    @property
    def records(self) -> int:
        """Records parsed so far."""
    @property
    def pending(self) -> int:
        """Bytes of an incomplete record held for the next chunk."""
    def feed(self, chunk: bytes | bytearray | memoryview) -> Packets:
        """Parse ``chunk`` and return the records it completed."""
    def close(self) -> Packets:
        """Parse what is held and check that the document ended; return the last records."""
