"""How a recovery strategy ended: the one outcome both protocol modes report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Mode", "Outcome"]

Mode = Literal["base", "extended"]


@dataclass
class Outcome:
    """What recovery did: passes, request rounds, and why it stopped short (if it did)."""

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
