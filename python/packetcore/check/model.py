"""What a check finds: a verdict per scenario, and what a report needs to show it.

A :class:`CheckRun` is the outcome of grading one client command or one server against a
battery; each :class:`ScenarioResult` holds its :class:`Verdict`, a one-line reason, the
client's sequences as runs of a :class:`Mark` (the sequence map) and, for a client, what
its connections did (the timeline, from the proxy's traces).  Everything here is plain
data: :meth:`CheckRun.as_dict` is what ``--json`` writes and what the HTML page draws.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CheckRun",
    "Level",
    "Mark",
    "ScenarioResult",
    "SequenceRun",
    "Verdict",
    "printable",
    "runs_of",
]


class Verdict(str, enum.Enum):
    """How a scenario ended for the client (or the server) under test."""

    PASS = "pass"  #: the output held exactly the feed, in order
    WRONG = "wrong"  #: an output, not the feed: the reason names the first difference
    NO_OUTPUT = "no output"  #: the command ended well and wrote nothing
    CRASHED = "crashed"  #: the command ended with a non-zero status (or a signal)
    HUNG = "hung"  #: still running at the scenario's time limit (then stopped)

    def __str__(self) -> str:
        return self.value


class Level(str, enum.Enum):
    """How much a scenario's verdict counts.

    ``required``: what the reference exchange or any TCP network does to a client; a
    client that fails one is broken.  ``hardening``: what a hostile network or a faulty
    server can do; counted only when asked (``--level hardening``).
    """

    REQUIRED = "required"
    HARDENING = "hardening"

    def __str__(self) -> str:
        return self.value

    def counts_at(self, level: Level) -> bool:
        """Return whether a scenario of this level counts in a run at ``level``."""
        return self is Level.REQUIRED or level is Level.HARDENING


class Mark(str, enum.Enum):
    """What the output holds for one sequence of the feed (or beyond it)."""

    RECEIVED = "received"  #: once, the record the feed holds
    MISSING = "missing"  #: not at all
    DUPLICATED = "duplicated"  #: more than once
    WRONG = "wrong"  #: once or more, with a record other than the feed's
    EXTRA = "extra"  #: a sequence the feed does not have

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SequenceRun:
    """``count`` consecutive sequences from ``first`` that share one :class:`Mark`."""

    mark: Mark
    first: int
    count: int

    @property
    def last(self) -> int:
        """Return the run's last sequence."""
        return self.first + self.count - 1

    def as_list(self) -> list[Any]:
        """Return ``[mark, first, count]``, as the JSON report writes it."""
        return [self.mark.value, self.first, self.count]


def runs_of(marks: Iterable[tuple[int, Mark]]) -> list[SequenceRun]:
    """Return the runs of ``(sequence, mark)`` pairs given in increasing sequence order."""
    out: list[SequenceRun] = []
    for sequence, mark in marks:
        if out and out[-1].mark is mark and out[-1].last + 1 == sequence:
            last = out[-1]
            out[-1] = SequenceRun(mark, last.first, last.count + 1)
        else:
            out.append(SequenceRun(mark, sequence, 1))
    return out


@dataclass
class ScenarioResult:
    """One scenario's outcome.

    ``details`` holds what the reason sums up, as plain data: for a wrong output the
    sequences ``missing``, ``extra``, ``duplicated`` and ``out_of_order`` (each a list,
    capped), ``first_difference`` (``sequence``, ``expected`` and ``got`` records); for a
    crash ``exit_status``; for any command ``stderr_tail`` (its last lines).
    ``timeline`` lists the client's connections as the proxy traced them
    (:meth:`packetcore.faults.trace.Trace.as_dict`); a server check leaves it empty or
    lists the exchanges it made.
    """

    name: str
    level: Level
    description: str
    seed: int
    verdict: Verdict
    reason: str = ""
    duration: float = 0.0  #: seconds, the scenario's wall time
    time_limit: float = 0.0  #: seconds
    feed_first: int = 1
    feed_last: int = 0
    faults: str = ""  #: the faults the scenario applied, as one line
    sequence_map: list[SequenceRun] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    repeat: int = 0  #: which draw of a randomized scenario (from 0)

    @property
    def passed(self) -> bool:
        """Return whether the verdict is a pass."""
        return self.verdict is Verdict.PASS

    @property
    def label(self) -> str:
        """Return the name, with the draw for a repeated scenario (``loss#2``)."""
        return f"{self.name}#{self.repeat}" if self.repeat else self.name

    def as_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON-able data."""
        return {
            "name": self.name,
            "label": self.label,
            "level": self.level.value,
            "description": self.description,
            "seed": self.seed,
            "repeat": self.repeat,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "duration": round(self.duration, 6),
            "time_limit": self.time_limit,
            "feed": {"first": self.feed_first, "last": self.feed_last},
            "faults": self.faults,
            "sequence_map": [run.as_list() for run in self.sequence_map],
            "details": self.details,
            "timeline": self.timeline,
        }


_CONTROLS = dict.fromkeys([*range(0x20), 0x7F], None) | {0x09: " "}


def printable(text: str) -> str:
    """Return ``text`` without control characters, for one line of a terminal.

    A client's stderr may hold escape sequences and carriage returns; a reason quoting
    it must not move the cursor or recolour the table.
    """
    return "".join(c if c.isprintable() else "\ufffd" for c in text.translate(_CONTROLS))


@dataclass
class CheckRun:
    """A whole check: what was graded, at which level and seed, and every result."""

    kind: str  #: "client" or "server"
    target: str  #: the command line, or HOST:PORT
    level: Level
    seed: int
    started: str  #: ISO 8601, UTC
    results: list[ScenarioResult] = field(default_factory=list)
    duration: float = 0.0  #: seconds, the run's wall time
    interrupted: bool = False  #: stopped by a signal before every scenario ran
    live: bool = False  #: the feeds were published as time passed (clients that follow)
    planned: int = 0  #: how many scenario draws the run was to run (0: as many as it has)

    def counted(self) -> Iterator[ScenarioResult]:
        """Yield the results whose verdict counts at this run's level."""
        return (r for r in self.results if r.level.counts_at(self.level))

    @property
    def failures(self) -> list[ScenarioResult]:
        """Return the counted results that did not pass."""
        return [r for r in self.counted() if not r.passed]

    @property
    def passed(self) -> bool:
        """Return whether every counted scenario ran and passed."""
        return not self.interrupted and not self.failures and any(self.counted())

    def tally(self) -> Mapping[Verdict, int]:
        """Return how many results got each verdict (every level)."""
        out = dict.fromkeys(Verdict, 0)
        for result in self.results:
            out[result.verdict] += 1
        return out

    def summary(self) -> str:
        """Return the run as one line: passed or not, and the verdicts counted."""
        tally = ", ".join(f"{n} {v}" for v, n in self.tally().items() if n) or "nothing run"
        counted = list(self.counted())
        failed = len(self.failures)
        scope = "required" if self.level is Level.REQUIRED else "required and hardening"
        if self.interrupted:
            planned = max(self.planned, len(self.results))
            return (
                f"INTERRUPTED: {len(self.results)} of {planned} scenarios ran ({tally}) in "
                f"{self.duration:.1f} s; {len(counted) - failed} of the {len(counted)} "
                f"{scope} ones that ran passed"
            )
        head = "PASSED" if self.passed else "FAILED"
        return (
            f"{head}: {len(counted) - failed} of {len(counted)} {scope} scenarios passed "
            f"({tally}) in {self.duration:.1f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the run as plain JSON-able data (what ``--json`` writes)."""
        return {
            "packetcore_check": 1,
            "kind": self.kind,
            "target": self.target,
            "level": self.level.value,
            "seed": self.seed,
            "live": self.live,
            "started": self.started,
            "duration": round(self.duration, 6),
            "interrupted": self.interrupted,
            "planned": max(self.planned, len(self.results)),
            "passed": self.passed,
            "summary": self.summary(),
            "results": [r.as_dict() for r in self.results],
        }
