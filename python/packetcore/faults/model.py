"""The fault model: what a hostile network does to each connection of a feed.

:class:`Faults` says what one connection suffers: probabilities per packet (``loss``
with ``burst``, ``duplicate``, ``reorder``, ``corrupt``), timing (``latency``,
``jitter``, ``bandwidth``, ``split``), byte positions where the connection ends
(``close_after``, ``reset_after``, ``stall_after``), exact, deterministic faults for
tests (``duplicate_at``, ``reorder_at``, ``corrupt_at``, ``swallow_resends``, ``hang``) and
faults keyed to what the client asks for (``drop_sequences``, ``drop_resends``,
``close_at_request``).  :class:`FaultPlan` chooses the faults of each connection by its
number (from 0, in accept order) and the time since start, hands out each connection's
random stream (:mod:`packetcore.seeds`) and keeps the :class:`Ledger` of the sequences
its connections have dropped once already.  A scenario file produces one (:mod:`.scenario`); a
:class:`~packetcore.faults.shaper.Shaper` applies the faults to the bytes, a
:class:`~packetcore.faults.delivery.Delivery` writes them when due.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from ..seeds import Kind, Streams

__all__ = [
    "MAX_LISTED",
    "FaultCounts",
    "FaultPlan",
    "Faults",
    "Ledger",
    "Rule",
    "Script",
    "parse_rate",
    "parse_sequences",
]

_RATE_SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


class FaultCounts(dict[str, int]):
    """Injected faults by kind, each once per event ("loss", "reset", ...)."""


def parse_rate(text: str | float) -> float:
    """Return a rate in bytes/s from ``text`` such as ``500``, ``64k`` or ``1.5M``."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        body = text.strip()
        if body.endswith(("B", "b")) and body[-2:-1] in _RATE_SUFFIXES:
            body = body[:-1]
        suffix = body[-1:] if body[-1:] in _RATE_SUFFIXES else ""
        try:
            value = float(body[: len(body) - len(suffix)]) * _RATE_SUFFIXES[suffix]
        except ValueError:
            raise ValueError(f"{text!r} is not a rate in bytes/s (e.g. 500, 64k, 1.5M)") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r} is not a rate in bytes/s above 0")
    return value


#: The most sequences one list (``drop_sequences``, ``drop_resends``) may name.
MAX_LISTED = 1_000_000
_SEQUENCE_MAX = 2**31 - 1


def parse_sequences(items: str | int | Iterable[str | int]) -> frozenset[int]:
    """Return the sequences a list names: ``"14"``, ``"100-120,200"`` or ``[14, "100-120"]``.

    Ranges are inclusive; every sequence is in 0..2**31-1 and at most :data:`MAX_LISTED`
    are named.  A bad list raises one :class:`ValueError`.
    """
    if isinstance(items, str):
        parts: list[str | int] = [part.strip() for part in items.split(",")]
    elif isinstance(items, int):
        parts = [items]  # a bool too: refused below
    else:
        parts = list(items)
    out: set[int] = set()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            raise ValueError(f"{part!r} is not a sequence or a range A-B of them")
        if isinstance(part, int):
            low = high = part
        else:
            low_text, dash, high_text = part.strip().partition("-")
            try:
                low = int(low_text)
                high = int(high_text) if dash else low
            except ValueError:
                raise ValueError(
                    f"{part!r} is not a sequence or a range A-B of them (e.g. 14 or 100-120)"
                ) from None
        if not 0 <= low <= high <= _SEQUENCE_MAX:
            raise ValueError(
                f"{part!r} is not a sequence in 0..{_SEQUENCE_MAX} or a range A-B with A <= B"
            )
        if len(out) + high - low + 1 > MAX_LISTED:
            raise ValueError(f"a list of sequences may name at most {MAX_LISTED:,}")
        out.update(range(low, high + 1))
    return frozenset(out)


def _indices(values: Iterable[int]) -> list[int]:
    out = [int(v) for v in values]
    if any(v < 0 for v in out):
        raise ValueError(f"indices and offsets must be >= 0, got {sorted(out)}")
    return out


@dataclass(frozen=True)
class Faults:
    """The faults applied to one connection; the default is a clean pass-through.

    Times are in seconds, ``bandwidth`` in bytes/s; packet indexes count the packets
    of the stream from 0 (info frames excluded), byte offsets the bytes the peer gets.
    """

    latency: float = 0.0  #: every chunk is held back this long
    jitter: float = 0.0  #: plus a uniform draw in -jitter..+jitter (bytes never overtake)
    bandwidth: float | None = None  #: at most this many bytes/s
    split: int | None = None  #: write at most this many bytes at a time
    loss: float = 0.0  #: chance that a packet is dropped
    burst: float = 1.0  #: mean length of a loss burst (1: independent losses)
    duplicate: float = 0.0  #: chance that a packet is sent twice
    reorder: float = 0.0  #: chance that a packet is swapped with one of the next few
    corrupt: float = 0.0  #: chance that one byte of a packet is changed
    close_after: int | None = None  #: FIN after this many bytes
    reset_after: int | None = None  #: RST after this many bytes
    stall_after: int | None = None  #: forward nothing after this many bytes; stay open
    duplicate_at: frozenset[int] = frozenset()  #: these packets are sent twice
    reorder_at: frozenset[int] = frozenset()  #: each is swapped with the packet after it
    corrupt_at: tuple[int, ...] = ()  #: the bytes at these offsets are XORed with corrupt_xor
    corrupt_xor: int = 0xFF
    #: a connection that resends before it streams gets silence (but its first info frame)
    swallow_resends: bool = False
    hang: bool = False  #: accept, read, never answer, never close
    #: the first copy of each of these sequences in a stream (callType 1 or 5) is dropped
    drop_sequences: frozenset[int] = frozenset()
    #: the first answer to a resend or range asking for each of these is dropped
    drop_resends: frozenset[int] = frozenset()
    #: the connection closes (FIN) when its N-th request (from 1) arrives, unanswered
    close_at_request: int | None = None
    #: the first copy of each of these sequences in a stream claims a sequence 65,536
    #: higher (a bit of its sequence field flipped in flight, past every checksum)
    corrupt_sequences: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        """Normalise the collections and reject impossible values."""
        for name in ("drop_sequences", "drop_resends", "corrupt_sequences"):
            object.__setattr__(self, name, parse_sequences(getattr(self, name)))
        if self.close_at_request is not None and (
            isinstance(self.close_at_request, bool) or self.close_at_request < 1
        ):
            raise ValueError(f"close_at_request must be 1 or more, not {self.close_at_request}")
        object.__setattr__(self, "duplicate_at", frozenset(_indices(self.duplicate_at)))
        object.__setattr__(self, "reorder_at", frozenset(_indices(self.reorder_at)))
        object.__setattr__(self, "corrupt_at", tuple(sorted(_indices(self.corrupt_at))))
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, not {value}")
        for name in ("latency", "jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be 0 seconds or more, not {value}")
        for name in ("close_after", "reset_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 bytes or more, not {value}")
        if self.bandwidth is not None and not (
            math.isfinite(self.bandwidth) and self.bandwidth > 0
        ):
            raise ValueError(f"bandwidth must be above 0 bytes/s, not {self.bandwidth}")
        if self.split is not None and self.split < 1:
            raise ValueError(f"split must be 1 byte or more, not {self.split}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst must be a mean length of 1 or more, not {self.burst}")
        if self.burst > 1 and self.loss > self.burst / (self.burst + 1):
            # Gilbert-Elliott: a good run lasts at least one packet between bursts.
            raise ValueError(
                f"loss {self.loss} cannot come in bursts of mean length {self.burst}: "
                f"at most {self.burst / (self.burst + 1):.4g}"
            )
        if not 1 <= self.corrupt_xor <= 0xFF:
            raise ValueError(f"corrupt_xor must be in 1..255, not {self.corrupt_xor}")

    @property
    def limit(self) -> int | None:
        """Return how many bytes the peer gets before the connection ends or stalls."""
        cuts = [n for n in (self.close_after, self.reset_after, self.stall_after) if n is not None]
        return min(cuts) if cuts else None

    @property
    def limit_kind(self) -> str:
        """Return how the limit ends the connection: "reset", "close" or "stall"."""
        for kind in ("reset", "close", "stall"):  # on a tie: reset, then close
            if getattr(self, f"{kind}_after") == self.limit:
                return kind
        return "close"

    @property
    def packet_faults(self) -> bool:
        """Return whether any fault acts on whole packets (the stream must be framed)."""
        return bool(
            self.loss or self.duplicate or self.reorder or self.corrupt
            or self.duplicate_at or self.reorder_at or self.swallow_resends
            or self.drop_sequences or self.drop_resends or self.corrupt_sequences
        )  # fmt: skip

    @property
    def keyed(self) -> bool:
        """Return whether faults pick packets by their sequence (and their request)."""
        return bool(self.drop_sequences or self.drop_resends or self.corrupt_sequences)

    @property
    def timed(self) -> bool:
        """Return whether writes are delayed, split or paced."""
        return bool(self.latency or self.jitter or self.bandwidth or self.split)

    @property
    def active(self) -> bool:
        """Return whether these faults change anything at all."""
        return self != Faults(corrupt_xor=self.corrupt_xor)

    def replace(self, **changes: Any) -> Faults:
        """Return a copy with ``changes`` (field names as in the constructor)."""
        return dataclasses.replace(self, **changes)


#: Faults per connection number: a sequence (past its end: none), or a callable.
Script: TypeAlias = Sequence[Faults | None] | Callable[[int], Faults | None]


@dataclass(frozen=True)
class Rule:
    """Overrides applied from ``after`` seconds on, to the connections ``numbers`` names."""

    changes: Mapping[str, Any]
    after: float = 0.0
    numbers: frozenset[int] | None = None  # None: every connection
    first: int = 0
    last: int | None = None

    def applies(self, number: int, elapsed: float) -> bool:
        """Return whether connection ``number`` accepted ``elapsed`` s after start is ruled."""
        if elapsed < self.after:
            return False
        if self.numbers is not None:
            return number in self.numbers
        return self.first <= number and (self.last is None or number <= self.last)


class Ledger:
    """The sequences a plan's connections have dropped once already, by kind.

    ``drop_sequences`` and ``drop_resends`` drop only the first copy of each sequence
    over every connection of one plan: a client that asks again, on any connection,
    gets it.  Shared by the plan's shapers (one process: a forked worker has its own).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a server and a proxy may share a plan, each a thread
        self._dropped: dict[str, set[int]] = {
            "drop_sequence": set(),
            "drop_resend": set(),
            "corrupt_sequence": set(),
        }

    def first(self, kind: str, sequence: int) -> bool:
        """Return whether ``sequence`` is dropped now: True once per sequence and kind."""
        with self._lock:
            dropped = self._dropped[kind]
            if sequence in dropped:
                return False
            dropped.add(sequence)
            return True

    def dropped(self, kind: str) -> frozenset[int]:
        """Return the sequences dropped so far by ``kind`` ("drop_sequence", "drop_resend")."""
        with self._lock:
            return frozenset(self._dropped[kind])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{kind} {len(s)}" for kind, s in self._dropped.items())
        return f"<Ledger {sizes}>"


@dataclass(frozen=True)
class FaultPlan:
    """Choose each connection's faults by its number and the time since start.

    ``faults`` apply to every connection; ``script`` (a sequence or a callable by
    connection number), where it gives :class:`Faults`, replaces them for that
    connection; a scenario's phases and connection rules override single fields
    (:func:`~packetcore.faults.scenario.load_scenario` reads them from a file).
    ``upstream``: the faults act on the client->server direction (a proxy only).
    ``ledger`` records what ``drop_sequences`` and ``drop_resends`` have dropped, over
    all the plan's connections.
    """

    faults: Faults = field(default_factory=Faults)
    script: Script | None = None
    seed: int | None = None
    upstream: bool = False
    rules: tuple[Rule, ...] = ()
    streams: Streams = field(init=False, repr=False, compare=False)
    ledger: Ledger = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Decide the seed's entropy once, so that every connection draws from it."""
        object.__setattr__(self, "streams", Streams(self.seed))
        object.__setattr__(self, "ledger", Ledger())

    def faults_for(self, number: int, elapsed: float = 0.0) -> Faults:
        """Return the faults of connection ``number`` accepted ``elapsed`` s after start."""
        chosen: Faults | None = None
        script = self.script
        if callable(script):
            chosen = script(number)
        elif script is not None and number < len(script):
            chosen = script[number]
        faults = self.faults if chosen is None else chosen
        for rule in self.rules:
            if rule.applies(number, elapsed):
                faults = faults.replace(**rule.changes)
        return faults

    def rng(self, number: int) -> np.random.Generator:
        """Return the generator of connection ``number``'s random faults."""
        return self.streams.for_(Kind.FAULTS, number)

    def sets(self, name: str) -> bool:
        """Return whether ``name`` (a :class:`Faults` field) is set for any connection.

        Looks at the faults for every connection and the scenario's rules (a script, a
        choice made per connection by code, is not looked into).
        """
        return bool(getattr(self.faults, name)) or any(
            bool(rule.changes.get(name)) for rule in self.rules
        )

    @property
    def active(self) -> bool:
        """Return whether any connection can suffer a fault."""
        return self.faults.active or self.script is not None or bool(self.rules)
