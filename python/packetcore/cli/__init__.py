"""Command-line plumbing shared by ``packetcore-serve`` and ``packetcore-fetch``.

Every failure a user can cause ends in one line on stderr and a non-zero exit;
``-v`` adds the traceback.  SIGINT and SIGTERM follow one rule, written down in
:mod:`packetcore.cli.signals`: a command that gives its work up says so in one line and
exits 130 or 143 (128 + the signal's number), as a shell reports them.  The exit
statuses are named in :mod:`packetcore.cli.exits`.

Import-light (argparse and logging load when a command runs): ``packetcore.__main__``
loads the package for :mod:`~packetcore.cli.signals` before any command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..errors import PacketcoreError, UserError
from . import signals
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE

# Not typing's: importing typing costs more than the rest of the package (see above).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import logging

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Terminated",
    "UserError",
    "add_verbosity",
    "naming",
    "reader_left",
    "run",
    "setup_logging",
]

#: What becomes of SIGINT and SIGTERM is :mod:`packetcore.cli.signals`'s rule: every
#: command reaches signals through it.
Terminated = signals.Terminated


def naming(path: str, exc: BaseException) -> str:
    """Return ``exc``'s message, led by ``path`` unless it names the file already."""
    text = str(exc)
    return text if text.startswith(f"{path}:") else f"{path}: {text}"


def reader_left() -> int:
    """End a command whose stdout's reader left (``| head``): a normal end, exit 0.

    As for ``yes | head`` and a fetch to stdout: the outcome is settled (signals are
    moot), and stdout now points at /dev/null, so the interpreter's last flush of what
    is buffered finds no broken pipe to complain about.
    """
    from .logqueue import _detach

    signals.settle()
    _detach(sys.stdout.fileno())
    return 0


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
    import logging

    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.addFilter(_hide_credentials)
            if form == "json":
                from .options import JsonFormatter

                handler.setFormatter(JsonFormatter())


def _hide_credentials(record: logging.LogRecord) -> bool:
    """Hide the credentials of a stream's URL in a record's message (a logging filter)."""
    from ..io import hide_credentials

    message = record.getMessage()
    if "nats://" in message.lower():
        record.msg, record.args = hide_credentials(message), None
    if record.exc_info:  # a traceback (-v) names URLs too: formatted here, hidden
        import logging

        trace = logging.Formatter().formatException(record.exc_info)
        record.exc_info, record.exc_text = None, hide_credentials(trace)
    return True


def run(
    program: str,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``body``; turn any failure or signal into one line and a code."""
    import asyncio

    with signals.handled():
        try:
            args = parser.parse_args(argv)
            setup_logging(args.verbosity, getattr(args, "log_format", "text"))
            return _call(program, body, args)
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            # A Ctrl-C, or a request that gave up (signals): it cancelled a loop's task.
            interrupted = signals.interruption(exc) or signals.abandoned()
            if interrupted is None:
                raise
            signals.settle()  # said: nothing more to do but exit
            print(f"{program}: {interrupted.what}", file=sys.stderr)
            return interrupted.status


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
        why = f" ({exc})" if str(exc) else ""
        _report(program, MemoryError(f"not enough memory{why}"), args.verbosity)
        return EXIT_FAILURE


def _report(program: str, exc: BaseException, verbosity: int) -> None:
    if verbosity > 0:
        import logging

        logging.getLogger("packetcore").exception("%s failed", program)
    from ..io import hide_credentials

    message = hide_credentials(str(exc) or type(exc).__name__)
    print(f"{program}: error: {message}", file=sys.stderr)
