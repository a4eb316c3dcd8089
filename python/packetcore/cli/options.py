"""Option types shared by the commands: each refuses a bad value with one clear line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["integer", "number"]


def integer(low: int, high: int | None = None, *, what: str) -> Callable[[str], int]:
    """Return an argparse type for whole numbers in ``low..high`` (``what`` names them)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


def number(
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    what: str,
) -> Callable[[str], float]:
    """Return an argparse type for finite numbers between ``low`` and ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


#: Shared by the commands that take them.
probability = number(0.0, 1.0, what="a probability in 0..1")
seed = integer(0, what="a seed: 0 or more, never negative")
