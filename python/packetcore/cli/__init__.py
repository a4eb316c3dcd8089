"""Command-line plumbing shared by ``packetcore-serve`` and ``packetcore-fetch``.

Every failure a user can cause ends in one line on stderr and a non-zero exit;
``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..errors import PacketcoreError

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "UserError", "add_verbosity", "run", "setup_logging"]

EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("packetcore")


class UserError(PacketcoreError):
    """A failure the user caused or can fix; ``exit_code`` is what the process returns."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add ``-q``/``-v`` to a parser (as ``args.verbosity``: -1, 0, 1)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        default=0,
        help="print errors only",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        help="print debug detail, and tracebacks on failure",
    )


def setup_logging(verbosity: int) -> None:
    """Log to stderr at WARNING (-q), INFO (default) or DEBUG (-v)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )


def run(
    program: str,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``body``; turn any failure into one line and an exit code."""
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    try:
        return body(args)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        _report(program, exc, args.verbosity)
        return exc.exit_code
    except (OSError, PacketcoreError, ValueError) as exc:
        _report(program, exc, args.verbosity)
        return EXIT_FAILURE
    except MemoryError as exc:
        _report(program, MemoryError(f"not enough memory ({exc or 'allocation failed'})"),
                args.verbosity)  # fmt: skip
        return EXIT_FAILURE


def _report(program: str, exc: BaseException, verbosity: int) -> None:
    if verbosity > 0:
        log.exception("%s failed", program)
    message = str(exc) or type(exc).__name__
    print(f"{program}: error: {message}", file=sys.stderr)
