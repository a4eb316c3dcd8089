"""Options shared by the commands: types that refuse a bad value with one clear line, and
the declarations of ``--feed``, ``--seed`` and ``--drop``, made once for every command
that serves a feed."""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_drop",
    "add_feed",
    "add_feed_options",
    "add_seed",
    "integer",
    "number",
    "probability",
    "seed",
]


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


def _server_default(name: str) -> Any:
    # The default is decided once, by Server; imported here, not at the top, so that
    # packetcore-fetch (which uses the types above) does not load the server.
    from ..server import Server

    return inspect.signature(Server).parameters[name].default


def add_feed(parser: argparse.ArgumentParser) -> None:
    """Add ``--feed`` (a feed spec, as ``args.feed``) to ``parser``."""
    parser.add_argument(
        "--feed", default="book", metavar="FEED",
        help="what to serve: 'book' (default, the reference's 14-packet order book), "
        "'synthetic:N' (N random packets, sequences 1..N, drawn from --seed) or the path "
        "of a feed file, in any format packetcore-fetch writes (json, ndjson, csv, "
        "parquet, or bin, served from a memory mapping), validated before the server "
        "starts",
    )  # fmt: skip


def add_seed(parser: argparse.ArgumentParser, more: str = "") -> None:
    """Add ``--seed`` (``args.seed``, None when not given) to ``parser``; ``more`` adds help."""
    parser.add_argument(
        "--seed", type=seed, default=_server_default("seed"),
        help="seed of the synthetic feed and of every drop pattern: the Nth stream-all "
        "of a run drops the same packets each time (default: random)" + more,
    )  # fmt: skip


def add_drop(parser: argparse.ArgumentParser) -> None:
    """Add ``--drop`` (``args.drop``, a probability) to ``parser``."""
    parser.add_argument(
        "--drop", type=probability, default=_server_default("drop"), metavar="P",
        help="chance that stream-all (callType 1) drops each packet, the last included "
        "(default: %(default)s, as the reference)",
    )  # fmt: skip


def add_feed_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--feed``, ``--seed`` and ``--drop`` to ``parser``, in that order."""
    add_feed(parser)
    add_seed(parser)
    add_drop(parser)
