"""Command-line plumbing shared by ``packetcore-serve`` and ``packetcore-fetch``.

Every failure a user can cause ends in one line on stderr and a non-zero exit;
``-v`` adds the traceback.  SIGINT and SIGTERM end a command the same way: one line,
exit 130 or 143 (128 + the signal's number), as a shell reports them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from ..errors import PacketcoreError, UserError

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "STOP_SIGNALS",
    "Terminated",
    "UserError",
    "add_verbosity",
    "run",
    "setup_logging",
    "stop_signal",
]

#: What a :class:`UserError` returns unless it says otherwise.
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: 128 + SIGINT: what a shell reports for a command ended by Ctrl-C.
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: 128 + SIGTERM.
EXIT_TERMINATED = 128 + signal.SIGTERM

log = logging.getLogger("packetcore")


#: The signals that stop a command.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_signal(loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
    """Return a future that ``loop`` resolves with the number of the first stop signal."""
    stopped: asyncio.Future[int] = loop.create_future()

    def stop(signum: int) -> None:
        if not stopped.done():
            stopped.set_result(signum)

    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(signum, stop, signum)
    return stopped


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while :func:`run` runs a command.

    A KeyboardInterrupt, so that every cleanup written for Ctrl-C runs for SIGTERM too.
    """


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add ``-q``/``-v`` to a parser (as ``args.verbosity``: -1, 0, 1).

    Every command calls it: ``--version`` and ``--log-format`` come with it.
    """
    from .options import add_common

    add_common(parser)
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


def setup_logging(verbosity: int, form: str = "text") -> None:
    """Log to stderr at ERROR (-q: errors only), INFO (default) or DEBUG (-v).

    ``form``: ``text``, or ``json`` (one JSON object a record).
    """
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    if form == "json":
        from .options import JsonFormatter

        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setFormatter(JsonFormatter())


def run(
    program: str,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``body``; turn any failure or signal into one line and a code."""
    with _sigterm_raises():
        try:
            args = parser.parse_args(argv)
            setup_logging(args.verbosity, getattr(args, "log_format", "text"))
            return _call(program, body, args)
        except Terminated:
            print(f"{program}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print(f"{program}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _call(program: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return body(args)
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


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Make SIGTERM raise :class:`Terminated` in the main thread while the block runs."""
    # Only where SIGTERM would kill the process outright: a handler someone installed,
    # or SIG_IGN, stays as it is; and only the main thread may set handlers.
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _report(program: str, exc: BaseException, verbosity: int) -> None:
    if verbosity > 0:
        log.exception("%s failed", program)
    message = str(exc) or type(exc).__name__
    print(f"{program}: error: {message}", file=sys.stderr)
