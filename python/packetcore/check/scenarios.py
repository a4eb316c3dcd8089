"""The battery a client is graded against: named, levelled, seeded scenarios.

Each :class:`Scenario` says what the check's server serves (the reference book or a
synthetic feed, with the reference exchange's stream-all loss or none) and what the
check's proxy does to each connection on the way (a :class:`~packetcore.faults.model.Faults`
for every connection, :class:`~packetcore.faults.model.Rule` overrides by connection
number).  ``required`` scenarios are what the reference exchange or any TCP network does
to a client; ``hardening`` ones what a hostile network or a faulty server can do.  Every
scenario's seed derives from the run's seed, its name and its draw (:func:`scenario_seed`):
the same run seed gives the same losses, the same faults and the same verdicts.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..faults.model import FaultPlan, Faults, Rule
from ..seeds import Kind
from .model import Level

__all__ = ["BOOK", "SCENARIOS", "Scenario", "scenario_seed", "select"]

#: The feed of a scenario that serves the reference's 14-packet order book.
BOOK = 0

_REQ, _HARD = Level.REQUIRED, Level.HARDENING


@dataclass(frozen=True)
class Scenario:
    """One scenario of the battery.

    ``feed``: :data:`BOOK` or a synthetic feed of that many packets (sequences 1..N).
    ``drop``: the server's chance to drop each packet of a stream-all (the reference
    exchange's 0.25: the last packet included), drawn from the scenario's seed.
    ``faults`` and ``rules`` make the proxy's :class:`FaultPlan`.  ``randomized``: its
    draws differ from one ``--repeat`` to the next (the others are exact).
    """

    name: str
    level: Level
    description: str
    feed: int = BOOK
    drop: float = 0.0
    faults: Faults = field(default_factory=Faults)
    rules: tuple[Rule, ...] = ()
    time_limit: float = 10.0
    randomized: bool = False

    def plan(self, seed: int) -> FaultPlan:
        """Return the proxy's fault plan for a run of this scenario with ``seed``."""
        return FaultPlan(self.faults, seed=seed, rules=self.rules)

    def describe_faults(self) -> str:
        """Return what the scenario does, as one line (server loss, then the proxy's faults)."""
        parts = [f"server drops {self.drop:g} of each stream"] if self.drop else []
        parts += _faults_words(self.faults)
        for rule in self.rules:
            who = _connections(rule)
            words = _faults_words(Faults().replace(**rule.changes))
            parts.append(f"{who}: {', '.join(words)}")
        return "; ".join(parts) or "none"

    @property
    def feed_name(self) -> str:
        """Return the feed as words."""
        return "the 14-packet book" if self.feed == BOOK else f"{self.feed:,} packets"


def _connections(rule: Rule) -> str:
    if rule.numbers is not None:
        numbers = sorted(rule.numbers)
        return "connection " + ", ".join(str(n) for n in numbers)
    if rule.last is None:
        return f"connections from {rule.first}"
    return f"connections {rule.first}-{rule.last}"


def _spans(values: Iterable[int]) -> str:
    ordered = sorted(values)
    out: list[str] = []
    start = prev = ordered[0]
    for v in [*ordered[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(out)


#: The command line's names of the fields it names otherwise.
_OPTIONS = {"drop_resends": "drop-resend-sequences"}


def _faults_words(faults: Faults) -> list[str]:
    """Return the faults that differ from none, in the command line's words."""
    words = []
    default = Faults()
    for name in faults.__dataclass_fields__:
        value = getattr(faults, name)
        if value == getattr(default, name) or name == "corrupt_xor":
            continue
        option = _OPTIONS.get(name, name.replace("_", "-"))
        if name in ("latency", "jitter"):
            words.append(f"{option} {value * 1000:g} ms")
        elif isinstance(value, (frozenset, tuple)):
            words.append(f"{option} {_spans(value)}")
        elif isinstance(value, bool):
            words.append(option)
        else:
            words.append(f"{option} {value:g}")
    return words


def _after_first(**changes: object) -> tuple[Rule, ...]:
    """Changes for every connection after the first (which carries the stream)."""
    return (Rule(dict(changes), first=1),)


def _first_only(**changes: object) -> tuple[Rule, ...]:
    return (Rule(dict(changes), numbers=frozenset([0])),)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "clean", _REQ,
        "The book with nothing lost: what every client must get right first.",
    ),
    Scenario(
        "loss", _REQ,
        "The reference exchange drops each packet of a stream with chance 0.25, the last "
        "one included: the client must find the gaps and ask for them again.",
        drop=0.25, randomized=True,
    ),
    Scenario(
        "tail-loss", _REQ,
        "The last packet is lost in the first stream. Nothing in a stream says how many "
        "packets were due: a client that trusts one stream's highest sequence writes a "
        "short book. The reference exchange does this to a quarter of all streams.",
        faults=Faults(drop_sequences=frozenset([14])),
    ),
    Scenario(
        "head-and-burst-loss", _REQ,
        "The first packet and a burst of four in the middle are lost in the first "
        "stream: gaps at the start and runs of gaps, not only single ones.",
        faults=Faults(drop_sequences=frozenset([1, 6, 7, 8, 9])),
    ),
    Scenario(
        "split-bytes", _REQ,
        "Every byte arrives in a read of its own. TCP is a byte stream: any network may "
        "deliver a packet in pieces, and a client must frame 17-byte packets itself.",
        faults=Faults(split=1), drop=0.25,
    ),
    Scenario(
        "split-odd", _REQ,
        "Reads of 5 bytes, a millisecond apart: packets cut at every offset of their "
        "fields, with the reference exchange's losses.",
        faults=Faults(split=5, latency=0.001), drop=0.25,
    ),
    Scenario(
        "latency", _REQ,
        "20 ms latency, 10 ms jitter, and the reference exchange's losses: answers "
        "take time on any real network.",
        faults=Faults(latency=0.020, jitter=0.010), drop=0.25, randomized=True,
    ),
    Scenario(
        "slow-server", _REQ,
        "The exchange writes 20 packets a second: a client must wait for the end of "
        "the stream (end of file), not for a quiet moment.",
        faults=Faults(bandwidth=340.0), drop=0.25,
    ),
    Scenario(
        "late-resends", _REQ,
        "Two packets are lost in the stream and every later connection answers after "
        "half a second: a busy exchange answers resends late, and a client must wait.",
        faults=Faults(drop_sequences=frozenset([4, 10])),
        rules=_after_first(latency=0.5),
    ),
    Scenario(
        "duplicates", _HARD,
        "Packets arrive twice (a retransmission, a replaying relay): the output must "
        "hold each sequence once.",
        faults=Faults(duplicate=0.2, duplicate_at=frozenset([2, 9])), randomized=True,
    ),
    Scenario(
        "reorder", _HARD,
        "Packets arrive out of order (a relay, a multi-path network): the output must "
        "be in sequence order.",
        faults=Faults(reorder_at=frozenset([3, 10])),
    ),
    Scenario(
        "reset-mid-stream", _HARD,
        "The first connection is reset (RST) after 100 bytes: the client must connect "
        "again and still get everything.",
        rules=_first_only(reset_after=100),
    ),
    Scenario(
        "close-mid-packet", _HARD,
        "The first connection ends (FIN) after 110 bytes, in the middle of a packet: a "
        "stream that ends in a partial packet was cut, not finished.",
        rules=_first_only(close_after=110),
    ),
    Scenario(
        "stall", _HARD,
        "The first connection stops sending after 119 bytes and stays open: a client "
        "needs a timeout of its own, or it waits for ever.",
        rules=_first_only(stall_after=119), time_limit=30.0,
    ),
    Scenario(
        "resends-dropped", _HARD,
        "Two packets, the last one among them, are lost in the stream, and the first "
        "answer to each repair is lost too: a client must ask again.",
        faults=Faults(
            drop_sequences=frozenset([5, 14]), drop_resends=frozenset([5, 14])
        ),
        time_limit=30.0,
    ),
    Scenario(
        "corrupt-sequence", _HARD,
        "The first copy of sequence 9 arrives claiming sequence 65,545: a bit flipped "
        "in flight that no checksum caught. A client must not take one far-ahead "
        "sequence for the feed's length, and must still get the real 9.",
        faults=Faults(corrupt_sequences=frozenset([9])),
    ),
    Scenario(
        "close-at-request", _HARD,
        "Three packets are lost in the stream; the first repair connection is closed "
        "when its second request arrives: a client must connect again for the rest.",
        faults=Faults(drop_sequences=frozenset([3, 7, 11])),
        rules=(Rule({"close_at_request": 2}, numbers=frozenset([1])),),
    ),
    Scenario(
        "high-sequences", _HARD,
        "300 packets, those at 127, 128, 200, 255, 256, 257 and 300 lost in the first "
        "stream: sequences that do not fit a signed byte, or any byte (a base resend "
        "names 1..127 only: above, a client must stream again).",
        feed=300,
        faults=Faults(drop_sequences=frozenset([127, 128, 200, 255, 256, 257, 300])),
    ),
    Scenario(
        "large-feed", _HARD,
        "100,000 packets with 5 % lost in each stream: a client must hold a feed far "
        "larger than the book and repair thousands of gaps.",
        feed=100_000, drop=0.05, time_limit=60.0,
    ),
    Scenario(
        "everything", _HARD,
        "Losses, 3-byte reads, duplicates, reorders and jitter together: faults "
        "combine on real networks.",
        faults=Faults(split=3, duplicate=0.1, reorder=0.1, latency=0.002, jitter=0.002),
        drop=0.25, randomized=True, time_limit=20.0,
    ),
)  # fmt: skip


def scenario_seed(seed: int, name: str, repeat: int = 0) -> int:
    """Return the seed of draw ``repeat`` of scenario ``name`` in a run seeded ``seed``."""
    key = (int(Kind.SCENARIOS), zlib.crc32(name.encode()), repeat)
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1)
    return int(state[0])


def select(
    scenarios: Sequence[Scenario],
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> list[Scenario]:
    """Return the scenarios ``only`` names (all if empty) but those ``skip`` names.

    An unknown name is a :class:`ValueError` listing the known ones, and so is a choice
    that leaves none.
    """
    known = {s.name for s in scenarios}
    unknown = [n for n in (*only, *skip) if n not in known]
    if unknown:
        raise ValueError(
            f"no scenario {unknown[0]!r} (the scenarios: {', '.join(s.name for s in scenarios)})"
        )
    chosen = [s for s in scenarios if (not only or s.name in only) and s.name not in skip]
    if not chosen:
        raise ValueError("--skip leaves no scenario of those --only names to run")
    return chosen
