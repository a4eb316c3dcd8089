"""Fault models for a feed connection: what a hostile network does to the server's stream.

:class:`Faults` says what one connection suffers: probabilities per packet (``loss``
with ``burst``, ``duplicate``, ``reorder``, ``corrupt``), timing (``latency``,
``jitter``, ``bandwidth``, ``split``), byte positions where the connection ends
(``close_after``, ``reset_after``, ``stall_after``) and exact, deterministic faults for
tests (``duplicate_at``, ``reorder_at``, ``corrupt_at``, ``swallow_resends``, ``hang``).
:class:`FaultPlan` chooses the faults of each connection by its number (from 0, in
accept order) and the time since start; a scenario TOML file produces one.

:class:`Shaper` turns one connection's byte stream into what the peer gets (no I/O):
17-byte packets, framed from the stream, and 16-byte info frames, which pass
untouched at a packet boundary after a hello.  Its random draws come from
``SeedSequence(seed, spawn_key=(2, connection))``, one chunk's worth at a time.
:class:`Delivery` writes the shaped stream to an :class:`asyncio.StreamWriter` at the
times, in the pieces and at the rate the faults say, and ends the connection as they say.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from ..engine import PACKET_SIZE
from ..net.transport import reset_transport
from ..protocol import (
    HELLO,
    INFO_MAGIC,
    INFO_SIZE,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    SUBSCRIBE,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "KINDS",
    "Delivery",
    "FaultCounts",
    "FaultPlan",
    "Faults",
    "Script",
    "Shaper",
    "parse_rate",
]

#: The kinds of injected fault counted, each once per event.
KINDS = (
    "loss", "duplicate", "reorder", "corrupt", "close", "reset", "stall", "swallow", "hang",
)  # fmt: skip
#: An info frame starts with the magic and the high byte of version 1: no packet does.
_INFO_PREFIX = INFO_MAGIC + b"\0"
#: How far ahead a randomly reordered packet may be swapped.
REORDER_SPAN = 3
#: Chunks a delivery holds back for latency before its writer waits.
_QUEUE_CHUNKS = 64
#: Pacing slices per second at a bandwidth limit.
_SLICES_PER_SECOND = 50
_RATE_SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_STREAMS = (
    "loss",
    "good",
    "bad",
    "duplicate",
    "reorder",
    "reorder_span",
    "corrupt",
    "corrupt_byte",
)
_SPAWN = 2  # spawn_key kind: LossModel uses 0 and 1 for the server's own drops


class FaultCounts(dict[str, int]):
    """Injected faults by kind; ``a + b`` sums two tallies (the workers of one port)."""

    def __add__(self, other: Mapping[str, int]) -> FaultCounts:
        total = FaultCounts(self)
        for kind, n in other.items():
            total[kind] = total.get(kind, 0) + n
        return total


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

    def __post_init__(self) -> None:
        """Normalise the collections and reject impossible values."""
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
        )  # fmt: skip

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

_FIELDS = {f.name for f in dataclasses.fields(Faults)}
_MS_FIELDS = {"latency", "jitter"}
_INT_FIELDS = {"split", "close_after", "reset_after", "stall_after", "corrupt_xor"}
_SET_FIELDS = {"duplicate_at", "reorder_at", "corrupt_at"}


def _overrides(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Turn a scenario table's options (CLI names and units) into Faults fields."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ValueError(f"{where}: unknown fault {key!r}")
        if name in _MS_FIELDS:
            out[name] = float(value) / 1000.0
        elif name == "bandwidth":
            out[name] = parse_rate(value)
        elif name in _INT_FIELDS or name in _SET_FIELDS:
            items = value if name in _SET_FIELDS else [value]
            if not isinstance(items, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in items
            ):
                raise ValueError(f"{where}: {key} must be whole numbers, not {value!r}")
            out[name] = items if name in _SET_FIELDS else items[0]
        elif name in ("swallow_resends", "hang"):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key} must be true or false, not {value!r}")
            out[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {key} must be a number, not {value!r}")
            out[name] = float(value)
    return out


@dataclass(frozen=True)
class _Rule:
    """Overrides applied from ``after`` seconds on, to the connections ``numbers`` names."""

    changes: Mapping[str, Any]
    after: float = 0.0
    numbers: frozenset[int] | None = None  # None: every connection
    first: int = 0
    last: int | None = None

    def applies(self, number: int, elapsed: float) -> bool:
        if elapsed < self.after:
            return False
        if self.numbers is not None:
            return number in self.numbers
        return self.first <= number and (self.last is None or number <= self.last)


@dataclass(frozen=True)
class FaultPlan:
    """Choose each connection's faults by its number and the time since start.

    ``faults`` apply to every connection; ``script`` (a sequence or a callable by
    connection number), where it gives :class:`Faults`, replaces them for that
    connection; a scenario's phases and connection rules override single fields.
    ``upstream``: the faults act on the client->server direction (a proxy only).
    """

    faults: Faults = field(default_factory=Faults)
    script: Script | None = None
    seed: int | None = None
    upstream: bool = False
    rules: tuple[_Rule, ...] = ()
    entropy: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Decide the seed's entropy once, so that every connection draws from it."""
        entropy = np.random.SeedSequence(self.seed).entropy
        assert isinstance(entropy, int)
        object.__setattr__(self, "entropy", entropy)

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
        sequence = np.random.SeedSequence(self.entropy, spawn_key=(_SPAWN, number))
        return np.random.Generator(np.random.PCG64(sequence))

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

    @classmethod
    def from_scenario(
        cls,
        path: str | Path,
        faults: Faults | None = None,
        *,
        seed: int | None = None,
        upstream: bool = False,
    ) -> FaultPlan:
        """Read a scenario TOML file; ``faults``, ``seed``, ``upstream`` are the defaults.

        Top-level ``seed`` and ``upstream-faults``; ``[faults]`` for every connection;
        ``[[phase]]`` tables with ``after`` (seconds since start); ``[[connection]]``
        tables with ``number``, ``numbers`` or ``from``/``to`` (inclusive), and ``after``.
        Later tables win.  Options are named and measured as on the command line.
        """
        name = str(path)
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: not valid TOML: {exc}") from None
        try:
            return cls._from_table(data, name, faults, seed, upstream)
        except (TypeError, AttributeError) as exc:
            # A value of the wrong shape deep in a table (a list for a number, a number
            # for a table): one line naming the file, as for every other mistake in it.
            raise ValueError(f"{name}: a value of the wrong type ({exc})") from None

    @classmethod
    def _from_table(
        cls,
        data: dict[str, Any],
        name: str,
        faults: Faults | None,
        seed: int | None,
        upstream: bool,
    ) -> FaultPlan:
        unknown = set(data) - {"seed", "upstream-faults", "faults", "phase", "connection"}
        if unknown:
            raise ValueError(f"{name}: unknown key {sorted(unknown)[0]!r}")
        base = dataclasses.replace(
            faults or Faults(), **_overrides(data.get("faults", {}), f"{name} [faults]")
        )
        rules: list[_Rule] = []
        for kind in ("phase", "connection"):
            for i, table in enumerate(data.get(kind, [])):
                rules.append(_rule(dict(table), kind, f"{name} [[{kind}]] #{i + 1}"))
        plan_seed = data.get("seed", seed) if seed is None else seed
        if plan_seed is not None and (not isinstance(plan_seed, int) or plan_seed < 0):
            raise ValueError(f"{name}: seed must be 0 or more, not {plan_seed!r}")
        up = data.get("upstream-faults", upstream)
        if not isinstance(up, bool):
            raise ValueError(f"{name}: upstream-faults must be true or false")
        plan = cls(base, seed=plan_seed, upstream=up, rules=tuple(rules))
        # Every set of faults a connection can get must be valid now, not at some
        # connection: each phase over the ones before it, and each connection rule (alone
        # and all together) over each of those.
        states = [base]
        for rule in rules:
            if rule.numbers is None and rule.first == 0 and rule.last is None:
                states.append(states[-1].replace(**rule.changes))
        for state in list(states):
            together = state
            for rule in rules:
                states.append(state.replace(**rule.changes))
                together = together.replace(**rule.changes)
            states.append(together)
        if up and any(state.packet_faults for state in states):
            raise ValueError(
                f"{name}: loss, duplicate, reorder and corrupt act on the server's packets: "
                "not with upstream-faults"
            )
        return plan


def _rule(table: dict[str, Any], kind: str, where: str) -> _Rule:
    after = table.pop("after", 0.0)
    if isinstance(after, bool) or not isinstance(after, (int, float)) or after < 0:
        raise ValueError(f"{where}: after must be 0 seconds or more, not {after!r}")
    if kind == "phase":
        return _Rule(_overrides(table, where), float(after))
    numbers: frozenset[int] | None = None
    if "number" in table:
        numbers = frozenset([table.pop("number")])
    elif "numbers" in table:
        numbers = frozenset(table.pop("numbers"))
    first, last = table.pop("from", 0), table.pop("to", None)
    for value in [*(numbers or ()), first, *([] if last is None else [last])]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: connection numbers must be 0 or more, not {value!r}")
    return _Rule(_overrides(table, where), float(after), numbers, first, last)


# -- shaping: the stream as the peer gets it ----------------------------------------------


class Shaper:
    """Turn one connection's stream into what the peer gets (pure, no I/O).

    ``feed`` returns the bytes to send now, ``finish`` what is held back at the end;
    ``counts`` gathers the injected faults by kind (shared with a server's or a
    proxy's stats when given).  Call :meth:`hello` when the peer sends a hello and
    :meth:`resend_mode` when it asks for resends before any stream (``swallow_resends``).
    """

    def __init__(
        self,
        faults: Faults,
        rng: np.random.Generator | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        self.faults = faults
        self.counts: dict[str, int] = {} if counts is None else counts
        self.own: dict[str, int] = {}  # this connection's counts alone
        self.limit_hit = False
        self.info_frames = 0
        self.swallowing = False
        self.bytes_in = 0
        self.bytes_out = 0
        # One stream per kind of draw, so that each is the same whatever the chunks.
        base = rng if rng is not None else np.random.default_rng()
        seeds = base.integers(0, 1 << 62, len(_STREAMS))
        self._rngs = {
            k: np.random.default_rng(int(v)) for k, v in zip(_STREAMS, seeds, strict=True)
        }
        self._framed = faults.packet_faults
        self._bytewise = faults.limit is not None or bool(faults.corrupt_at)
        self._hellos = 0
        self._early_hellos = 0
        self._phase = 0  # bytes into a packet, where chunks pass unframed
        self._buf = bytearray()
        self._index = 0  # input packets framed so far
        self._held: tuple[npt.NDArray[np.uint8], int] | None = None
        self._swallowed = 0
        # Gilbert-Elliott state: in a burst or not, packets left in the current run.
        self._ge_started = False
        self._bad = False
        self._run = 0
        leave_bad = 1.0 / faults.burst
        enter_bad = faults.loss * leave_bad / (1.0 - faults.loss) if faults.loss < 1 else 1.0
        self._ge_p = {False: max(enter_bad, 1e-12), True: leave_bad}
        self._ge_buffer = {False: np.zeros(0, np.int64), True: np.zeros(0, np.int64)}

    def hello(self) -> None:
        """Expect an info frame (the peer sent a hello)."""
        self._hellos += 1
        if not self.swallowing:
            self._early_hellos += 1

    def resend_mode(self) -> None:
        """Swallow every packet from now on, if the faults say so."""
        if self.faults.swallow_resends:
            self.swallowing = True

    @property
    def pending(self) -> bool:
        """Return whether an info frame is due or bytes are held back."""
        return bool(self._hellos or self._buf or self._held is not None)

    def passed(self, n: int) -> None:
        """Count ``n`` bytes that went past the shaper untouched (no fault, nothing due)."""
        self.bytes_in += n
        self.bytes_out += n
        self._phase = (self._phase + n) % PACKET_SIZE

    def _count(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n
            self.own[kind] = self.own.get(kind, 0) + n

    def feed(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Shape one chunk of the stream; return the bytes to send now."""
        self.bytes_in += len(data)
        if self.limit_hit:
            return b""
        if self._framed:
            self._buf += data
            data = self._frame(final=False)
        elif self._hellos or self._buf:
            data = self._info_frames(data)
        else:
            # No packet faults and no info frame due: the chunk passes uncopied.
            self._phase = (self._phase + len(data)) % PACKET_SIZE
        return self._bytes(data)

    def _info_frames(self, data: bytes | bytearray | memoryview) -> bytearray:
        """Pass a chunk while an info frame is due, only to count (and never cut) it."""
        out = bytearray()
        if self._phase and not self._buf:
            # The rest of the packet in progress: the next boundary is after it.
            k = min(PACKET_SIZE - self._phase, len(data))
            out += data[:k]
            data = data[k:]
            self._phase = (self._phase + k) % PACKET_SIZE
        self._buf += data
        out += self._frame(final=False)
        if not self._hellos:
            self._phase = len(self._buf) % PACKET_SIZE
            out += self._buf
            self._buf.clear()
        return out

    def finish(self) -> bytes | bytearray | memoryview:
        """Return what is held back at the end of the stream."""
        if self.limit_hit or not (self._framed or self._buf):
            return b""
        out = self._frame(final=True)
        if self._buf:
            out += bytes(self._buf)  # a partial trailing packet passes as it is
            self._buf.clear()
        return self._bytes(out)

    # -- framing: info frames and packets --------------------------------------------------

    def _frame(self, final: bool) -> bytearray:
        out = bytearray()
        buf = self._buf
        while buf:
            if self._hellos:
                head = bytes(buf[: len(_INFO_PREFIX)])
                if _INFO_PREFIX.startswith(head):
                    if len(buf) >= INFO_SIZE and head == _INFO_PREFIX:
                        # Swallowing, only the hellos sent before the switch are answered.
                        if not self.swallowing or self._early_hellos:
                            out += self._release() + buf[:INFO_SIZE]
                            self.info_frames += 1
                            self._early_hellos = max(0, self._early_hellos - 1)
                        del buf[:INFO_SIZE]
                        self._hellos -= 1
                        continue
                    if not final:
                        break  # maybe an info frame: wait for the rest
            whole = len(buf) // PACKET_SIZE
            if self._hellos and whole:
                # An info frame can follow the answers already pipelined: stop there.
                heads = np.frombuffer(buf, dtype=np.uint8, count=whole * PACKET_SIZE)
                heads = heads.reshape(whole, PACKET_SIZE)[:, : len(_INFO_PREFIX)]
                magic = np.frombuffer(_INFO_PREFIX, dtype=np.uint8)
                found = np.flatnonzero((heads == magic).all(axis=1))
                del heads  # the buffer cannot shrink while a view of it lives
                if found.size:
                    whole = int(found[0])
            if whole == 0:
                break
            size = whole * PACKET_SIZE
            if self._framed:
                # A slice of a bytearray is a writable copy: the packets change in place.
                rows = np.frombuffer(buf[:size], dtype=np.uint8).reshape(whole, PACKET_SIZE)
                out += self._packets(rows)
            else:
                out += buf[:size]
                self._index += whole
            del buf[:size]
        if final:
            out += self._release()
        return out

    def _release(self) -> bytes:
        held, self._held = self._held, None
        if held is None:
            return b""
        row, index = held
        if index in self.faults.duplicate_at:
            self._count("duplicate")
            return row.tobytes() * 2
        return row.tobytes()

    def _packets(self, rows: npt.NDArray[np.uint8]) -> bytes:
        """Apply the packet faults to whole packets; return their bytes."""
        faults, n = self.faults, len(rows)
        first = self._index
        self._index += n
        if self.swallowing:
            self._swallowed += n
            self._count("swallow", n)
            return b""
        index = np.arange(first, first + n)
        if faults.loss:
            keep = ~self._loss_mask(n)
            self._count("loss", n - int(keep.sum()))
            rows, index = rows[keep], index[keep]
        if faults.reorder or faults.reorder_at or self._held is not None:
            rows, index = self._reorder(rows, index)
        if faults.duplicate or faults.duplicate_at:
            twice = np.zeros(len(rows), dtype=bool)
            if faults.duplicate:
                twice |= self._rngs["duplicate"].random(len(rows)) < faults.duplicate
            if faults.duplicate_at:
                twice |= np.isin(index, np.fromiter(faults.duplicate_at, dtype=np.int64))
            self._count("duplicate", int(twice.sum()))
            rows = np.repeat(rows, 1 + twice.astype(np.intp), axis=0)
        if faults.corrupt and len(rows):
            hit = np.flatnonzero(self._rngs["corrupt"].random(len(rows)) < faults.corrupt)
            if hit.size:
                # Two draws per hit, in turn: which byte, and what it is XORed with.
                where = self._rngs["corrupt_byte"].random((hit.size, 2))
                columns = (where[:, 0] * PACKET_SIZE).astype(np.intp)
                rows[hit, columns] ^= (1 + where[:, 1] * 255).astype(np.uint8)
                self._count("corrupt", int(hit.size))
        return rows.tobytes()

    def _loss_mask(self, n: int) -> npt.NDArray[np.bool_]:
        faults = self.faults
        if faults.burst <= 1:
            return self._rngs["loss"].random(n) < faults.loss
        # Gilbert-Elliott, drawn as alternating run lengths: a burst ends with chance
        # 1/burst per packet, one starts with the chance that makes the mean loss `loss`.
        # Good and bad runs come from streams of their own, taken in order and never
        # dropped: the same runs whatever the chunks.
        parts: list[npt.NDArray[np.bool_]] = []
        if self._run:
            take = min(n, self._run)
            parts.append(np.full(take, self._bad))
            self._run -= take
            n -= take
        while n:
            first = not self._bad if self._ge_started else False
            self._ge_started = True
            k = max(16, int(n / (self.faults.burst + 1 / self._ge_p[False])) + 16)
            a, b = self._ge_peek(first, k), self._ge_peek(not first, k)
            lengths = np.empty(2 * k, dtype=np.int64)
            lengths[0::2], lengths[1::2] = a, b
            states = np.zeros(2 * k, dtype=bool)
            states[0::2], states[1::2] = first, not first
            ends = np.cumsum(lengths)
            last = int(np.searchsorted(ends, n))  # the run that holds packet n - 1
            used = min(last + 1, 2 * k)
            self._ge_take(first, (used + 1) // 2)
            self._ge_take(not first, used // 2)
            parts.append(np.repeat(states[:used], lengths[:used])[:n])
            self._bad = bool(states[used - 1])
            self._run = int(ends[used - 1]) - n if last < 2 * k else 0
            n -= min(n, int(ends[used - 1]))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def _ge_peek(self, bad: bool, k: int) -> npt.NDArray[np.int64]:
        buffer = self._ge_buffer[bad]
        if len(buffer) < k:
            more = self._rngs["bad" if bad else "good"].geometric(self._ge_p[bad], max(k, 1024))
            buffer = self._ge_buffer[bad] = np.concatenate([buffer, more])
        return buffer[:k]

    def _ge_take(self, bad: bool, k: int) -> None:
        self._ge_buffer[bad] = self._ge_buffer[bad][k:]

    def _reorder(
        self, rows: npt.NDArray[np.uint8], index: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """Swap chosen packets with one of the next few; a last one waits for the next."""
        faults, n = self.faults, len(rows)
        if n == 0:
            return rows, index
        chosen = np.zeros(n, dtype=bool)
        if faults.reorder:
            chosen |= self._rngs["reorder"].random(n) < faults.reorder
        if faults.reorder_at:
            chosen |= np.isin(index, np.fromiter(faults.reorder_at, dtype=np.int64))
        picks = np.flatnonzero(chosen)
        order = np.arange(n)
        touched = np.zeros(n, dtype=bool)
        # A packet that releases a held one is never held or swapped itself.
        touched[0] = self._held is not None
        hold: int | None = None
        # How far each pick moves: 1 for an exact reorder, up to REORDER_SPAN for a random one.
        spans = (
            1 + (self._rngs["reorder_span"].random(picks.size) * REORDER_SPAN).astype(np.int64)
            if faults.reorder
            else np.ones(picks.size, dtype=np.int64)
        )
        swaps = 0
        for k, i in enumerate(picks.tolist()):  # per reordered packet, not per packet
            if touched[i]:
                continue
            exact = not faults.reorder or int(index[i]) in faults.reorder_at
            j = min(i + (1 if exact else int(spans[k])), n - 1)
            if j == i:
                # The chunk's last packet.  An exact reorder holds it for the next chunk's
                # first; a random one does not: a resend answer would wait for ever.
                if exact:
                    hold = i
                break
            if touched[j]:
                continue
            order[i], order[j] = order[j], order[i]
            touched[i] = touched[j] = True
            swaps += 1
        new_held = None
        if hold is not None:
            new_held = (rows[hold].copy(), int(index[hold]))
            order = order[order != hold]
        rows, index_out = rows[order], index[order]
        if self._held is not None:
            held_row, held_index = self._held
            self._held = None
            rows = np.concatenate([rows[:1], held_row[None, :], rows[1:]])
            index_out = np.concatenate([index_out[:1], [held_index], index_out[1:]])
            swaps += 1
        self._held = new_held
        self._count("reorder", swaps)
        return rows, index_out

    # -- byte positions: ends and exact corruption -----------------------------------------

    def _bytes(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        if not self._bytewise or not data:
            self.bytes_out += len(data)
            return data
        faults, start = self.faults, self.bytes_out
        limit = faults.limit
        if limit is not None and start + len(data) >= limit:
            data = data[: limit - start]
            self.limit_hit = True
            self._count(faults.limit_kind)
        if faults.corrupt_at:
            buf = bytearray(data)
            for offset in faults.corrupt_at:
                if start <= offset < start + len(buf):
                    buf[offset - start] ^= faults.corrupt_xor
                    self._count("corrupt")
            data = buf
        self.bytes_out += len(data)
        return data


# -- delivery: timing, pieces, pacing and the end -------------------------------------------


def unsent_bytes(sock: Any) -> int:
    """Return the bytes still in a socket's kernel send queue (0 where it cannot be asked)."""
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (ImportError, OSError, AttributeError, ValueError):
        return 0


async def end_connection(writer: asyncio.StreamWriter, kind: str) -> None:
    """End the peer's side: FIN for "close", RST for "reset"; nothing for "stall"."""
    if kind == "stall":
        return
    await writer.drain()
    if kind == "reset":
        sock = writer.get_extra_info("socket")
        # The bytes before the cut must leave first: an RST discards what is queued.
        deadline = time.monotonic() + 1.0
        while unsent_bytes(sock) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        reset_transport(writer.transport)
    elif writer.can_write_eof():
        writer.write_eof()


class Delivery:
    """Write a shaped stream to ``writer``: on time, in pieces, paced, ended as the faults say.

    Without latency, jitter, bandwidth or split the bytes are written at once;
    otherwise a task sends them when due, so latency does not add up over chunks.
    """

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        shaper: Shaper,
        rng: np.random.Generator | None = None,
        *,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """``written(n)`` is told of every ``n`` bytes handed to the writer."""
        self.writer = writer
        self._written = written
        self.shaper = shaper
        self.faults = shaper.faults
        self.ended = False  # the limit was reached: nothing more goes out
        self.writes = 0
        self.largest_write = 0
        self._rng = rng if rng is not None else np.random.default_rng()
        self._due = 0.0
        self._next_send = 0.0
        self._queue: asyncio.Queue[tuple[float, bytes | str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._streamed = False
        self.error: BaseException | None = None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Shape ``data`` and send it (or queue it until due)."""
        if self.ended:
            return
        out = self.shaper.feed(data)
        await self._put(out)

    async def finish(self, end: str | None = None) -> None:
        """Send what is held back and wait until all is written; ``end`` ends the stream."""
        if not self.ended:
            await self._put(self.shaper.finish())
            if end is not None and not self.ended:
                await self._put_end(end)
        if self._task is not None:
            await asyncio.shield(self._task)
        if self.error is not None:
            raise self.error

    def request(self, call_type: int) -> None:
        """Note a request of the peer's: its answers are what the faults will shape."""
        if call_type == HELLO:
            self.shaper.hello()
        elif call_type in (STREAM_ALL, SUBSCRIBE):
            self._streamed = True
        elif call_type in (RESEND, RESEND_RANGE) and not self._streamed:
            self.shaper.resend_mode()

    async def close(self, reader: asyncio.StreamReader) -> None:
        """Send what is held back and end the stream; a stalled one waits for the peer.

        Ended here, through the queue: a timed delivery's task sends what is due first,
        then the end, and only then finishes.
        """
        await self.finish("close")
        if self.ended and self.faults.limit_kind == "stall":
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(1 << 16):
                    pass

    def cancel(self) -> None:
        """Stop the sending task, if any (the connection is going away)."""
        if self._task is not None:
            self._task.cancel()

    async def _put(self, out: bytes | bytearray | memoryview) -> None:
        if out:
            if not self.faults.timed:
                self._note(len(out))
                self.writer.write(out)
                await self.writer.drain()
            else:
                await self._enqueue(bytes(out))
        if self.shaper.limit_hit and not self.ended:
            await self._put_end(self.faults.limit_kind)

    async def _put_end(self, kind: str) -> None:
        self.ended = True
        if self.faults.timed:
            await self._enqueue(kind)
        else:
            await end_connection(self.writer, kind)

    def _note(self, size: int) -> None:
        self.writes += 1
        self.largest_write = max(self.largest_write, size)
        if self._written is not None:
            self._written(size)

    async def _enqueue(self, item: bytes | str) -> None:
        if self.error is not None:
            raise self.error
        if self._queue is None:
            self._queue = asyncio.Queue(_QUEUE_CHUNKS)
            self._task = asyncio.ensure_future(self._run())
        faults = self.faults
        due = time.monotonic() + faults.latency
        if faults.jitter:
            due += float(self._rng.uniform(-faults.jitter, faults.jitter))
        # A byte stream cannot overtake itself: jitter never moves a chunk before the last.
        self._due = max(self._due, due)
        await self._queue.put((self._due, item))

    async def _run(self) -> None:
        assert self._queue is not None
        try:
            while True:
                due, item = await self._queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if isinstance(item, str):
                    await end_connection(self.writer, item)
                    return
                await self._write(item)
        except (ConnectionError, OSError) as exc:
            self.error = exc
            self.ended = True

    async def _write(self, data: bytes) -> None:
        faults, writer = self.faults, self.writer
        step = faults.split or len(data)
        rate = faults.bandwidth
        if rate is not None:
            step = max(1, min(step, int(rate / _SLICES_PER_SECOND)))
        for at in range(0, len(data), step):
            piece = data[at : at + step]
            if rate is not None:
                self._next_send = max(self._next_send, time.monotonic())
            self._note(len(piece))
            writer.write(piece)
            await writer.drain()
            if rate is not None:
                self._next_send += len(piece) / rate
                await asyncio.sleep(max(0.0, self._next_send - time.monotonic()))
            elif faults.split and at + step < len(data):
                await asyncio.sleep(0)  # one piece per segment, not coalesced
