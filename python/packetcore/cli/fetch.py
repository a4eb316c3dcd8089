"""``packetcore-fetch``: fetch a whole feed into ``output.json``, or say exactly why not.

Exit codes: 0 complete, or the reader of stdout left (``| head``: a normal end, as for
``yes | head``); 1 failure (no server, unwritable output, ...); 2 bad option (a
``--format`` that contradicts the output's extension too); 3 incomplete (missing
sequences listed, packets saved to ``<output>.partial``); 4 ``--strict`` and the server
sent conflicting or invalid packets; 130 / 143 interrupted by SIGINT / SIGTERM (the
output left as it was).  ``--follow`` follows a live feed instead
(:mod:`packetcore.cli.follow`): there a signal is the normal end, exit 0.  Signals
follow the rule of :mod:`packetcore.cli.signals`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import FetchError, OutputError, PastTheEnd
from ..io import is_nats
from . import UserError, add_verbosity, run, signals
from .exits import EXIT_INCOMPLETE, EXIT_STRICT, EXIT_USAGE
from .options import add_metrics, bind_metrics, check_metrics, integer, number
from .options import check_format as _check_format
from .output import given_up, open_output, resumed
from .progress import process_age, progress_bar

# The fetch machinery (numpy, the engine) is imported once the command runs, so that a
# Ctrl-C while it loads is one line like any other; the module itself imports fast.
if TYPE_CHECKING:
    from ..client.fetch import FetchResult
    from ..client.session import FetchOptions, Progress
    from ..io.sink import Sink
    from ..packets import Packets
    from .events import EventsFile

__all__ = ["EXIT_INCOMPLETE", "EXIT_STRICT", "build_parser", "fetch_into", "main"]

PROGRAM = "packetcore-fetch"
FORMATS = ("json", "ndjson", "csv", "parquet", "bin")
# Packets waiting for the writer before the fetch stops taking more from the store.
_BACKLOG = 1 << 20

_port = integer(1, 0xFFFF, what="a port in 1..65535")
_count = integer(0, what="0 or more")
_at_least_one = integer(1, what="1 or more")
_sequence = integer(1, 2**31 - 1, what="a sequence in 1..2147483647")
_positive = number(0.0, 1e9, low_open=True, what="more than 0 seconds")

log = logging.getLogger("packetcore.fetch")


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the parser of the fetch options (defaults from :class:`FetchOptions`)."""
    from ..client.session import MAX_BACKOFF, MAX_CONFIDENCE, FetchOptions
    from .progress import DEFAULT_INTERVAL

    defaults = FetchOptions()  # the one place defaults come from
    backoff = number(0.0, MAX_BACKOFF, what=f"0 to {MAX_BACKOFF:g} seconds")
    confidence = number(
        0.0, MAX_CONFIDENCE, low_open=True,
        what=f"a probability above 0 and at most {MAX_CONFIDENCE:g}",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Fetch every packet of a feed from an exchange server (the reference "
            "exchange, packetcore-serve, or any server of the base protocol), recover the "
            "dropped ones, and write them in sequence order as they arrive.  Exit status: "
            "0 complete, 1 failure, 2 bad option, 3 incomplete (missing sequences listed, "
            "packets saved to OUTPUT.partial), 4 --strict and bad data, 130/143 "
            "interrupted."
        ),
    )
    add = parser.add_argument
    add("--host", default=defaults.host, help="server address (default: %(default)s)")
    add("--port", type=_port, default=defaults.port, help="server port (default: %(default)s)")
    add(
        "-o",
        "--output",
        default="output.json",
        help="file to write, atomically; '-' streams to stdout (default: %(default)s)",
    )
    add(
        "--format",
        choices=FORMATS,
        default=None,
        help="json (the default), ndjson, csv, parquet (needs the 'parquet' extra) or bin "
        "(raw 17-byte packets); default: from the output's extension, and ndjson for "
        "--follow to stdout ('-o -'); one that contradicts the extension is refused",
    )
    add(
        "--from",
        dest="start",
        type=_sequence,
        default=None,
        metavar="N",
        help="fetch only sequences from N on",
    )
    add(
        "--to",
        "--until",
        dest="stop",
        type=_sequence,
        default=None,
        metavar="M",
        help="fetch only sequences up to M (inclusive); with --follow, stop after M",
    )
    add(
        "--follow",
        action="store_true",
        help="follow a live feed (a packetcore server): write each packet in sequence "
        "order as soon as it is contiguous, repair gaps as they appear, reconnect on a "
        "lost subscription; ends at --until, at the feed's end, after --deadline, or on "
        "SIGINT/SIGTERM (output finished, exit 0)",
    )
    add(
        "--events",
        default=None,
        metavar="FILE",
        help="write each gap (first, last, seen, asked, repaired, how), repair round, "
        "stream-all pass, reconnect (and with --follow, slow-down) and the end to FILE as "
        "it happens, one JSON object a line ('-': stderr)",
    )
    add_metrics(
        parser, "; only with --follow: the follow's packets, gaps, repairs, lag and latencies"
    )
    add(
        "--protocol",
        choices=("auto", "base", "extended"),
        default=defaults.protocol,
        help="auto: probe for the packetcore extension, fall back to the base protocol "
        "(default: %(default)s)",
    )
    add(
        "--hello-timeout",
        type=_positive,
        default=defaults.hello_timeout,
        metavar="SECONDS",
        help="how long auto waits for the extension's answer (default: %(default)s)",
    )
    add(
        "--timeout",
        type=_positive,
        default=defaults.timeout,
        metavar="SECONDS",
        help="how long connecting may take, and a connection may stay silent while an "
        "answer is due (default: %(default)s)",
    )
    add(
        "--deadline",
        type=_positive,
        default=defaults.deadline,
        metavar="SECONDS",
        help="stop the whole fetch after this long, saving what arrived (default: none)",
    )
    add(
        "--retries",
        type=_count,
        default=defaults.retries,
        metavar="N",
        help="retries of a refused or lost connection or an unanswered request, with "
        "exponential backoff (default: %(default)s)",
    )
    add(
        "--backoff",
        type=backoff,
        default=defaults.backoff,
        metavar="SECONDS",
        help=f"first pause before a retry, doubled each time up to {MAX_BACKOFF:g} s "
        "(default: %(default)s)",
    )
    add(
        "--confidence",
        type=confidence,
        default=None,  # None: not given (refused with --follow), the default applies
        metavar="P",
        help="base protocol: make stream-all passes until the chance that a packet after "
        "the highest seen exists unseen (a truncated output) is below P; at most "
        f"{MAX_CONFIDENCE:g} (default: {defaults.confidence})",
    )
    add(
        "--max-passes",
        type=_at_least_one,
        default=None,
        metavar="N",
        help=f"base protocol: give up after N stream-all passes (default: {defaults.max_passes})",
    )
    add(
        "--progress", type=_positive, nargs="?", const=DEFAULT_INTERVAL, default=None,
        metavar="SECONDS",
        help="where stderr is no terminal (a log file, a pipe): a one-line status every "
        f"SECONDS (default: {DEFAULT_INTERVAL:g}), even with -q; on a terminal a bar shows "
        "progress anyway",
    )  # fmt: skip
    add(
        "--strict",
        action="store_true",
        help="fail (exit 4, nothing written) if the server sent conflicting duplicates, "
        "invalid packets or sequences judged corrupted",
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore-fetch``; return the exit status."""
    started = time.perf_counter() - process_age()  # the summary quotes the wall time waited
    try:
        parser = build_parser(prog)  # loads the fetch machinery
    except KeyboardInterrupt as exc:
        interrupted = signals.stopped_by(exc)
        print(f"{PROGRAM}: {interrupted.what}", file=sys.stderr)
        return interrupted.status
    return run(PROGRAM, parser, lambda args: _fetch(args, started), argv)


def _fetch(args: argparse.Namespace, started: float) -> int:
    from ..client.session import FetchOptions

    defaults = FetchOptions()
    confidence = defaults.confidence if args.confidence is None else args.confidence
    passes = defaults.max_passes if args.max_passes is None else args.max_passes
    try:
        options = FetchOptions(
            host=args.host, port=args.port, protocol=args.protocol,
            hello_timeout=args.hello_timeout, timeout=args.timeout, retries=args.retries,
            backoff=args.backoff, confidence=confidence, max_passes=passes,
            deadline=args.deadline, start=args.start, stop=args.stop,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc), EXIT_USAGE) from exc
    _check_format(args.output, args.format)
    if args.follow:
        if args.protocol == "base":
            raise UserError(
                "--follow needs the packetcore extension: not --protocol base", EXIT_USAGE
            )
        unused = {"--strict": args.strict, "--confidence": args.confidence is not None,
                  "--max-passes": args.max_passes is not None}  # fmt: skip
        for name, given in unused.items():
            if given:
                raise UserError(f"{name} does not apply to --follow", EXIT_USAGE)
        from ..client.follow import FollowStats
        from ..client.follow_metrics import FollowCollector
        from .follow import follow_into

        form = args.format
        if form is None and args.output == "-":
            form = "ndjson"  # a follow streams: one record a line, not one endless array
        check_metrics(args, 0, "", "--port")
        running: list[FollowStats] = []  # the follow's stats, once it runs
        metrics = bind_metrics(
            args, FollowCollector(lambda: running[-1] if running else FollowStats())
        )
        try:
            return follow_into(options, args.output, form, verbosity=args.verbosity,
                               started=started, progress=args.progress,
                               events=args.events, metrics=metrics,
                               running=running)  # fmt: skip
        finally:
            if metrics is not None:
                metrics.stop()  # bound before the follow, whatever ended it
    if args.metrics_port is not None or args.metrics_host is not None:
        raise UserError("--metrics-port and --metrics-host apply to --follow", EXIT_USAGE)
    return fetch_into(options, args.output, args.format, strict=args.strict,
                      verbosity=args.verbosity, started=started,
                      progress=args.progress, events=args.events)  # fmt: skip


def fetch_into(
    options: FetchOptions,
    output: str,
    form: str | None = None,
    *,
    strict: bool = False,
    verbosity: int = 0,
    started: float | None = None,
    progress: float | None = None,
    events: str | None = None,
) -> int:
    """Fetch into ``output``, print the summary; return the exit status (or raise UserError).

    A stop signal gives the fetch up (see :mod:`packetcore.cli.signals`): the output is
    left as it was, 130 / 143; once the output is in place, signals are ignored.

    ``progress``: a status line every so many seconds where stderr is no terminal;
    ``events``: a file (``-``: stderr) to write each event of the fetch to as it
    happens, one JSON object a line.  A file that cannot be written fails the fetch
    (exit 1, the output left as it was), as an output that cannot be does.
    """
    from ..io.output import STDOUT
    from .events import EventsFile, refuse_events_on_the_output

    if started is None:
        started = time.perf_counter()
    if events is not None:
        refuse_events_on_the_output(events, output)
    out = open_output(output, form, options)  # checks what can be checked before fetching
    later = resumed(options, out, program=PROGRAM, doing="fetching", verbosity=verbosity)
    if later is None:
        return 0  # a stream that holds everything asked for
    options = later
    try:
        journal = _Events(EventsFile(events), out) if events is not None else None
    except BaseException:
        out.abort()
        raise
    import asyncio

    try:
        with progress_bar(verbosity, progress) as report:
            with signals.in_loop():
                result = asyncio.run(_run(options, out, report, journal))
            if result is None:  # the reader of stdout left (`| head`): a normal end
                return _reader_left(out, verbosity, journal)
            conflicting, invalid, corrupted = result.untrusted
            if strict and (conflicting or invalid or corrupted):
                # stdout got the records as they came: it cannot be taken back.
                fate = (
                    "what reached stdout is not to be trusted"
                    if output == STDOUT
                    else (f"{output} left as it was")
                )
                raise UserError(
                    f"--strict: the server sent {conflicting} conflicting, "
                    f"{invalid} invalid and {corrupted} corrupted packet(s); {fate}",
                    EXIT_STRICT,
                )
            _warn_conflicts(result)
            wait = None
            if options.deadline is not None:  # the deadline and some grace, no more
                from ..client.fetch import DEADLINE_GRACE

                end = started + options.deadline + DEADLINE_GRACE
                wait = max(end - time.perf_counter(), 0.1)
            try:
                out.finish(wait)
            except OutputError as exc:
                if output == STDOUT and isinstance(exc.__cause__, BrokenPipeError):
                    return _reader_left(out, verbosity, journal)
                raise
            if journal is not None:  # before the output is in place: it fails the fetch
                journal.close()
            with signals.placing():  # in place: the fetch has succeeded, signals are moot
                where = out.place(result.complete)
    except KeyboardInterrupt as exc:
        if journal is not None:
            journal.close(f"stopped by {signals.stopped_by(exc).name}", check=False)
        out.abort()
        raise given_up(exc, output) from None
    except BaseException as exc:
        if journal is not None:
            journal.close(str(exc) if isinstance(exc, Exception) else None, check=False)
        out.abort()
        raise
    held = out.resume_after
    if held is not None and result.complete and result.last == held and not out.written:
        if verbosity >= 0:  # the packet fetched again to check the feed, and no other
            line = f"holds the whole feed already (to {held}, the exchange's last, the same)"
            print(f"{PROGRAM}: {where} {line}: nothing to fetch", file=sys.stderr)
        return 0
    if verbosity >= 0:
        # The path as the user gave it; through a link, where the file really went.
        # A stream as out names it: without the URL's credentials.
        named = os.path.islink(output) or is_nats(output)
        shown = (where if named else output) if result.complete else None
        if shown == "-":
            shown = "stdout"
        print(result.summary(shown, time.perf_counter() - started), file=sys.stderr)
    if not result.complete:
        _incomplete(result, output, where)
    return 0


def _reader_left(out: Sink, verbosity: int, events: _Events | None) -> int:
    """The reader of stdout left (``| head``): a normal end, as for ``yes | head``."""
    out.abort()
    signals.settle()
    if events is not None:
        events.close()
    if verbosity >= 0:
        print(f"{PROGRAM}: {out.written} packet(s) written to stdout, then the reader "
              "closed it: stopped", file=sys.stderr)  # fmt: skip
    return 0


class _Events:
    """The events file of a fetch, its end held back until the output is done with.

    So that the end counts the packets the output took (``packets``), as the command's
    last line does: with ``-o -`` and a reader that left, fewer than the fetch handed it.
    """

    def __init__(self, file: EventsFile, out: Sink) -> None:
        self.file = file
        self.out = out
        self._end: dict[str, Any] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "end":
            self._end = event
        else:
            self.file(event)

    def close(self, stopped: str | None = None, *, check: bool = True) -> None:
        """Tell the end, then close the file; raise UserError if it failed (``check``).

        ``stopped``: why the command stopped after all (a signal, an error): the end says
        so, incomplete.
        """
        end, self._end = self._end, None
        if end is not None:
            end["packets"] = self.out.written
            if stopped is not None:
                end.update(reason=stopped, complete=False)
            self.file(end)
        failure = self.file.close()
        if check and failure is not None:
            raise UserError(failure)


async def _run(
    options: FetchOptions, out: Sink, progress: Progress | None, events: _Events | None
) -> FetchResult | None:
    """Fetch into ``out``; return the result, or None if the reader of stdout left."""
    import asyncio

    from ..client.fetch import run_fetch

    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()

    def failed(reason: str) -> None:
        if not stopped.done():
            stopped.set_result(reason)

    def on_failure(reason: str) -> None:
        loop.call_soon_threadsafe(failed, reason)  # from the writer thread

    out.on_failure(on_failure)
    if events is not None:
        events.file.on_failure = on_failure  # a failing events file stops the fetch too

    def put(batch: Packets) -> None:
        # A failed output stops the fetch (on_failure, through `stopped`): what comes
        # meanwhile goes nowhere.
        with contextlib.suppress(OutputError):
            out.put(batch)

    # A fetch has no normal end before the feed's: a stop request gives it up, which
    # signals.watch does by cancelling this task (raised by signals.in_loop).
    with signals.watch(lambda signum: None):
        try:
            result = await run_fetch(
                options, put, progress, stopped=stopped,
                flowing=lambda: out.backlog < _BACKLOG, events=events,
            )  # fmt: skip
        except FetchError as exc:
            after = out.resume_after
            if isinstance(exc, PastTheEnd) and after is not None and exc.last < after:
                raise UserError(
                    f"{out.name} holds the feed to {after}, past the exchange's last "
                    f"sequence, {exc.last}: it holds another feed (or more of it than the "
                    "exchange serves); nothing published"
                ) from exc
            raise UserError(str(exc)) from exc
    if stopped.done():
        if out.name == "stdout" and isinstance(out.error, BrokenPipeError):
            return None
        raise UserError(stopped.result())
    return result


def _warn_conflicts(result: FetchResult) -> None:
    if result.conflicts:
        sequences = sorted(set(result.conflicting.sequence.tolist()))
        shown = ", ".join(map(str, sequences[:20])) + (" ..." if len(sequences) > 20 else "")
        log.warning(
            "%d duplicate(s) differ from the packet first received (settled by vote): %s",
            result.conflicts, shown,
        )  # fmt: skip


def _incomplete(result: FetchResult, output: str, where: str) -> None:
    from ..client.ranges import format_ranges
    from ..io.output import STDOUT

    if result.missing:
        log.debug("missing sequences: %s", format_ranges(result.missing))
        missing = f"{result.missing_count} packet(s) missing: {format_ranges(result.missing, 20)}"
    else:
        missing = "no known gap"
    if output == STDOUT:
        saved = "written to stdout as they are"
    elif is_nats(output):
        saved = f"{output} holds those in order up to the first gap"
    elif os.path.realpath(where) == os.path.realpath(output):
        saved = f"written into {output} as they are (no regular file: no .partial beside it)"
    else:
        partial = where if os.path.islink(output) else output + ".partial"
        saved = f"saved to {partial}; {output} left untouched"
    raise UserError(
        f"incomplete: {result.reason}; {missing}; {result.count} packet(s) received, {saved}",
        EXIT_INCOMPLETE,
    )


if __name__ == "__main__":
    sys.exit(main())
