"""``packetcore-check``: grade a client command or a server of the feed protocol.

``packetcore-check client [options] -- COMMAND [ARGS...]`` runs COMMAND once per scenario
against a server and a fault proxy of the check's own; ``packetcore-check server
HOST:PORT`` grades a server.  One line a scenario as it ends, then a summary.

Exit codes: 0 every counted scenario passed; 1 one did not (or the check could not run:
a busy port, a command that does not exist); 2 bad option; 130/143 stopped by
SIGINT/SIGTERM (the scenarios run so far are reported, the user's output put back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from . import UserError, add_verbosity, exits, reader_left, run, signals
from .exits import EXIT_FAILURE
from .options import integer

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ..check.model import CheckRun, Level, ScenarioResult

__all__ = ["build_parser", "main"]

PROGRAM = "packetcore-check"

DESCRIPTION = """\
Grade a client or a server of the feed protocol against a seeded battery of scenarios,
each with a verdict: pass, wrong (the first differing record; sequences missing, extra,
duplicated, out of order), no output, crashed, hung.

  packetcore-check client -- node client.js
      runs the client once per scenario; it connects to port 3000 (--port) as clients
      of the protocol do, or to {port} in its command or $PACKETCORE_PORT; it writes
      output.json (--output, in --cwd), which the check compares with the feed served.
  packetcore-check server HOST:PORT
      checks a server: framing, resends, split and pipelined requests, unknown
      callTypes, concurrent clients, and the extension if it answers the hello.

Required scenarios are what the reference exchange or any TCP network does to a client;
hardening ones what a hostile network or a faulty server can do (--level hardening makes
them count).  The same --seed gives the same faults and the same verdicts."""

_port = integer(1, 0xFFFF, what="a port in 1..65535")
_count = integer(1, 1000, what="a count in 1..1000")
_jobs = integer(1, 64, what="a count in 1..64 (more starves the check's own servers)")
_seed = integer(0, 2**63 - 1, what="a seed of 0 or more")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time in seconds above 0")
    return value


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected scenario names, comma-separated")
    return names


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port in 1..65535)")
    return host.strip("[]"), int(port)


def _common(parser: argparse.ArgumentParser, default_limit: str) -> None:
    parser.add_argument(
        "--level", choices=("required", "hardening"), default="required",
        help="which verdicts count: required (default) or required and hardening",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=_names, action="extend", default=[], metavar="NAME[,NAME]",
        help="run only these scenarios (--list names them)",
    )  # fmt: skip
    parser.add_argument(
        "--skip", type=_names, action="extend", default=[], metavar="NAME[,NAME]",
        help="run all but these scenarios",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=_seed, default=0,
        help="seed of every loss and fault (default 0): the same seed, the same verdicts",
    )  # fmt: skip
    parser.add_argument(
        "--time-limit", type=_seconds, default=None, metavar="SECONDS",
        help=f"each scenario's time limit (default: {default_limit})",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true",
                        help="list the scenarios and exit")  # fmt: skip
    reports = parser.add_argument_group("reports")
    reports.add_argument("--junit", metavar="FILE", help="write JUnit XML (for CI)")
    reports.add_argument("--json", metavar="FILE", help="write the verdicts as JSON")
    reports.add_argument(
        "--html", metavar="FILE",
        help="write one self-contained page: per scenario, the sequence map and a "
        "timeline of the connections and requests",
    )  # fmt: skip
    add_verbosity(parser)


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the argument parser of ``packetcore-check``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from .. import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    kinds = parser.add_subparsers(dest="kind", metavar="{client,server}", required=True)
    client = kinds.add_parser(
        "client", help="grade a client command",
        description="Run COMMAND once per scenario and grade what it writes.  Put "
        "COMMAND after --.  {port} and {output} in it are replaced by the port to "
        "connect to and the path to write.",
    )  # fmt: skip
    client.add_argument(
        "--port", type=_port, default=None,
        help="the port the client connects to (default 3000, where clients of the protocol "
        "connect; a free port for each scenario when the command takes {port}); refused "
        "if busy",
    )  # fmt: skip
    client.add_argument(
        "--host", default="localhost",
        help="where the check listens for the client (default localhost: 127.0.0.1 and ::1)",
    )  # fmt: skip
    client.add_argument(
        "--output", default="output.json", metavar="PATH",
        help="where the client writes, relative to --cwd (default output.json; any format "
        "packetcore reads, by its extension); an existing file is moved aside during the "
        "run and put back after",
    )  # fmt: skip
    client.add_argument("--cwd", default=None, metavar="DIR",
                        help="run the client in DIR (default: here)")  # fmt: skip
    client.add_argument(
        "--repeat", type=_count, default=1, metavar="N",
        help="draw each randomized scenario N times (default 1)",
    )  # fmt: skip
    client.add_argument(
        "--jobs", type=_jobs, default=1, metavar="N",
        help="run N scenarios at once (the command must take {port}, and {output} or "
        "an --output with {port})",
    )  # fmt: skip
    client.add_argument(
        "--live", action="store_true",
        help="publish each scenario's feed as time passes, for a client that follows "
        "(callType 5), with the same losses and faults",
    )  # fmt: skip
    _common(client, "each scenario's own, 10 to 60 s")
    client.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    server = kinds.add_parser(
        "server", help="grade a server at HOST:PORT",
        description="Grade the server at HOST:PORT as a client of the protocol would see it.",
    )  # fmt: skip
    server.add_argument("target", type=_target, nargs="?", metavar="HOST:PORT")
    _common(server, "10 s")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore-check`` and return its exit code."""
    return run(PROGRAM, build_parser(prog), _check, argv)


def _check(args: argparse.Namespace) -> int:
    from ..check.model import Level
    from .progress import process_age

    started = time.perf_counter() - process_age()  # the summary quotes the wall time waited

    if args.list:
        return _list(args.kind)
    if args.kind == "server" and args.target is None:
        raise UserError("packetcore-check server: give the server as HOST:PORT", 2)
    level = Level(args.level)
    if args.verbosity < 1:
        # The check's own server and proxy log every connection and every fault, which
        # the scenarios cause on purpose: -v shows them.
        for name in ("packetcore.server", "packetcore.proxy", "packetcore.faults"):
            logging.getLogger(name).setLevel(logging.ERROR)
    reports = _reports(args)
    # A report on stdout has it alone: the table and the summary go to stderr then.
    table = _Table(args.verbosity, sys.stderr if "-" in reports.values() else sys.stdout)
    if reports:
        from ..check.report import check_targets

        check_targets(**reports)  # a report that cannot be written fails now, not after
    if args.kind == "client":
        command = list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            raise UserError("no client command: packetcore-check client [options] -- COMMAND", 2)
        _refuse_reports_on_the_output(args, command, reports)
        result = _run_client(args, command, level, table)
    else:
        result = _run_server(args, level, table)
    # The reports carry the wall time up to their writing; the summary, after them, the
    # wall time the user waited.
    result.duration = time.perf_counter() - started
    if reports:
        from ..check.report import write_reports

        write_reports(result, **reports)
    result.duration = time.perf_counter() - started
    table.line(result.summary(), sys.stderr if args.verbosity < 0 else None)
    if table.gone:
        reader_left()  # stdout's reader left: the run ended there, not passed
        return EXIT_FAILURE
    if result.interrupted:
        return exits.signalled(table.signum)
    return 0 if result.passed else EXIT_FAILURE


def _refuse_reports_on_the_output(
    args: argparse.Namespace, command: list[str], reports: dict[str, str]
) -> None:
    """A report may not be written where the client writes: it would replace the user's file."""
    if any("{output}" in a for a in command) or "{port}" in args.output:
        return
    output = os.path.join(args.cwd or ".", args.output)
    for kind, path in reports.items():
        if path != "-" and _same(path, output):
            raise UserError(
                f"--{kind} {path} is where the client writes (--output): give the report "
                "another path", 2,
            )  # fmt: skip


def _reports(args: argparse.Namespace) -> dict[str, str]:
    """Return the reports asked for, by kind; two on one path are a usage error."""
    reports: dict[str, str] = {}
    for kind in ("json", "junit", "html"):
        path = getattr(args, kind)
        if path is None:
            continue
        if path in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
            path = "-"  # written to stdout as "-" is, not reopened
        for other, taken in reports.items():
            if _same(taken, path):
                where = "stdout" if path == "-" else path
                raise UserError(f"--{other} and --{kind} both write {where}: give each its own", 2)
        reports[kind] = path
    return reports


def _same(a: str, b: str) -> bool:
    if a == "-" or b == "-":
        return a == b
    from .output import same_path

    return same_path(a, b)


def _list(kind: str) -> int:
    if kind == "client":
        from ..check.scenarios import SCENARIOS

        rows = [(s.name, s.level.value, s.description) for s in SCENARIOS]
    else:
        from ..check.server import SERVER_SCENARIOS

        rows = [(s.name, s.level.value, s.description) for s in SERVER_SCENARIOS]
    width = max(len(name) for name, _, _ in rows)
    for name, level, description in rows:
        print(f"{name:<{width}}  {level:<9}  {description}")
    return 0


class _Table:
    """Print one line a scenario as it ends, with how far the run is.

    A reader of stdout that leaves (``| head -1``), or a stdout that cannot take more
    (a full disk), ends the run as a request to stop does: what ran is reported to the
    files asked for, the user's output is put back.
    """

    def __init__(self, verbosity: int, out: TextIO | None) -> None:
        self.verbosity = verbosity
        self.out = out if out is not None else sys.stderr  # stdout closed: stderr
        self.done = 0
        self.total = 0
        self.signum = 2
        self.gone = False  #: stdout's reader left, or stdout failed
        self.stop: Callable[[], None] = lambda: None
        try:
            self.tty = self.out is not None and self.out.isatty()
        except (ValueError, OSError):
            self.tty = False

    def line(self, text: str, out: TextIO | None = None, *, end: str = "\n") -> None:
        """Write ``text`` to the table's stream (or ``out``), unless that stream is gone."""
        stream = out or self.out
        if stream is None or (self.gone and stream is self.out):
            return
        try:
            print(text, end=end, file=stream, flush=True)
        except BrokenPipeError:
            self._lost(None)
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError | None) -> None:
        self.gone = True
        if exc is not None:
            with contextlib.suppress(OSError, ValueError):
                print(f"{PROGRAM}: error: cannot write the table: {exc.strerror or exc}",
                      file=sys.stderr, flush=True)  # fmt: skip
        self.stop()

    def started(self, label: str, index: int, total: int) -> None:
        self.total = total
        if self.tty and self.verbosity >= 0:
            self.line(f"\r\x1b[K[{self.done}/{total}] running {label} ...", end="")

    def note(self, line: str) -> None:
        """Say what the check does to the user's files (stderr: not part of the table)."""
        if self.verbosity >= 0:
            if self.tty and self.out is sys.stdout:
                self.line("\r\x1b[K", end="")
            with contextlib.suppress(OSError, ValueError):
                print(f"{PROGRAM}: {line}", file=sys.stderr, flush=True)

    def finished(self, result: ScenarioResult) -> None:
        from ..check.model import printable

        self.done += 1
        if self.verbosity < 0 and result.passed:
            return
        total = self.total or self.done
        reason = f"  {printable(result.reason)}" if result.reason else ""
        line = (
            f"[{self.done:>{len(str(total))}}/{total}] {result.label:<22} "
            f"{result.level.value:<9} {result.verdict.value.upper():<9} "
            f"{result.duration:6.1f} s{reason}"
        )
        self.line(("\r\x1b[K" if self.tty else "") + line)


async def _stoppable(
    check: Callable[[asyncio.Event], Awaitable[CheckRun]], table: _Table
) -> CheckRun:
    """Run the check; the first request to stop ends it with what has run (reported)."""
    stop = asyncio.Event()

    def stopped(signum: int) -> None:
        table.signum = signum
        stop.set()

    table.stop = stop.set
    signals.graceful()
    with signals.watch(stopped):
        return await check(stop)


def _run_client(
    args: argparse.Namespace, command: list[str], level: Level, table: _Table
) -> CheckRun:
    from ..check.client import check_client_async

    def start(stop: asyncio.Event) -> Awaitable[CheckRun]:
        return check_client_async(
            command, port=args.port, host=args.host, output=args.output, cwd=args.cwd,
            seed=args.seed, level=level, only=args.only, skip=args.skip,
            repeat=args.repeat, jobs=args.jobs, time_limit=args.time_limit,
            on_start=table.started, on_result=table.finished, stop=stop, live=args.live,
            note=table.note,
        )  # fmt: skip

    with signals.in_loop():
        return asyncio.run(_stoppable(start, table))


def _run_server(args: argparse.Namespace, level: Level, table: _Table) -> CheckRun:
    from ..check.server import check_server_async

    host, port = args.target
    options = {} if args.time_limit is None else {"time_limit": args.time_limit}

    def start(stop: asyncio.Event) -> Awaitable[CheckRun]:
        return check_server_async(
            host, port, seed=args.seed, level=level, only=args.only, skip=args.skip,
            on_start=table.started, on_result=table.finished, stop=stop, **options,
        )  # fmt: skip

    with signals.in_loop():
        return asyncio.run(_stoppable(start, table))


if __name__ == "__main__":
    sys.exit(main())
