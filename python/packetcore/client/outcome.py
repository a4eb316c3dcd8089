"""How a recovery strategy ended: the one outcome both protocol modes report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Mode", "Outcome"]

Mode = Literal["base", "extended"]


@dataclass
class Outcome:
    """What recovery did: passes, request rounds, and why it stopped short (if it did).

    The strategies read its fields and change them through its methods.
    """

    mode: Mode
    passes: int = 0
    resend_rounds: int = 0
    #: Base protocol: the chance that a packet after the inferred end exists unseen.
    chance: float | None = None
    #: Base protocol: whether the end was inferred (not the end of a --to slice reached).
    end_inferred: bool = True
    #: Base protocol: packets beyond the inferred end judged corrupted, left out.
    corrupt: int = 0
    reason: str = ""

    def switch(self, mode: Mode) -> None:
        """The server turned out to speak ``mode``."""
        self.mode = mode

    def count_pass(self) -> None:
        """A stream-all pass was asked for."""
        self.passes += 1

    def count_round(self) -> None:
        """A round of resends (or range requests) was asked for."""
        self.resend_rounds += 1

    def stop(self, reason: str, *, unless_stopped: bool = False) -> None:
        """Recovery stops short for ``reason`` (``unless_stopped``: the first reason stays)."""
        if not (unless_stopped and self.reason):
            self.reason = reason

    def estimate(self, chance: float) -> None:
        """Base protocol: the chance that a packet after the inferred end exists unseen."""
        self.chance = chance

    def known_end(self) -> None:
        """Base protocol: the end is the slice's (``--to`` reached), not inferred."""
        self.chance = None
        self.end_inferred = False

    def left_out(self, corrupt: int) -> None:
        """Base protocol: ``corrupt`` packets beyond the inferred end were left out."""
        self.corrupt = corrupt
