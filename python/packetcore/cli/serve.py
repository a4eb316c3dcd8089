"""``packetcore-serve``: run the exchange until SIGINT or SIGTERM.

Exit codes: 130 after SIGINT, 143 after SIGTERM (128 + the signal's number, as a shell
reports them); 1 failure (port in use, bad feed); 2 bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable, Sequence

from ..engine import MAX_SEQUENCE
from ..io import is_nats
from ..io.feeds import open_feed
from ..protocol import DEFAULT_PORT
from ..server.live import DEFAULT_MAX_BUFFER, DEFAULT_MAX_LAG, LiveFeed
from ..server.server import Server, ServerStats
from ..server.source import FeedSource
from ..server.wire_index import WireIndex
from ..server.workers import (
    LOOPS,
    REUSE_PORT,
    LoopUnavailable,
    StatsAnswer,
    Workers,
    bind_workers,
    loop_factory,
    run_loop,
    worker_seed,
)
from . import UserError, add_verbosity, run, signals
from .exits import EXIT_FAILURE, EXIT_USAGE, signalled
from .logqueue import queued_stderr
from .options import (
    add_drop,
    add_faults,
    add_feed,
    add_metrics,
    add_seed,
    bind_metrics,
    check_metrics,
    fault_plan,
    integer,
    metrics_served,
    number,
    probability,
    say_metrics,
)

__all__ = ["build_parser", "main"]

PROGRAM = "packetcore-serve"

DESCRIPTION = """\
Serve a sequenced exchange feed over TCP.  Every client of the reference exchange
works unchanged (callType 1 streams the feed with simulated loss and closes, callType
2 resends one packet); packetcore clients also get the extension (hello, resend
range).  The defaults reproduce the reference: port 3000, the 14-packet order book,
a 0.25 chance of dropping each streamed packet, resends never dropped.

The line naming the port is printed even with -q.  SIGINT or SIGTERM stops the server
at once and prints a one-line summary; the exit status is then 130 (SIGINT) or 143
(SIGTERM), 128 + the signal's number, as a shell reports them.

--workers N runs N processes on one port: the feed is loaded once and shared, the
kernel spreads connections over the workers (SO_REUSEPORT on Linux; elsewhere they
share one listening socket), and the summary sums what all of them did.  SIGINT or
SIGTERM to the parent stops every worker; a worker that dies is reported at once, the
others go on serving, and the exit status is then 1."""


_port = integer(0, 0xFFFF, what="a port in 0..65535 (0 picks a free one)")
_seconds = number(0.0, what="a duration of 0 seconds or more")
_count = integer(1, what="1 or more")
#: The --live rates served: slower is years between packets; faster publishes a whole
#: endless feed at once.  0 is a finished feed.
MIN_RATE = 0.001
MAX_RATE = 1e9
_lag = number(0.0, low_open=True, what="a number of seconds above 0")
_bytes = integer(1, what="a number of bytes, 1 or more")


def _sequence(text: str) -> int:
    value = _count(text)
    if value > MAX_SEQUENCE:
        raise argparse.ArgumentTypeError(
            f"{text} is above {MAX_SEQUENCE}, the highest sequence a packet can carry"
        )
    return value


def _rate(text: str) -> float:
    value = number(0.0, what="a rate of 0 or more packets a second")(text)
    if value and not MIN_RATE <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"{text} is not a rate in {MIN_RATE:g}..{MAX_RATE:g} packets a second "
            "(or 0: a finished feed)"
        )
    return value


#: More processes than this only fight for the cores (and take long to start).
MAX_WORKERS = 64
_workers = integer(1, MAX_WORKERS, what=f"a number of workers in 1..{MAX_WORKERS}")


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the argument parser of ``packetcore-serve``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="localhost",
        help="address to listen on (default: localhost, which binds both 127.0.0.1 and ::1; "
        "0.0.0.0 or :: exposes the server to the network on purpose)",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT,
        help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free port and prints it)",
    )  # fmt: skip
    add_feed(parser)
    add_seed(
        parser,
        ".  With --workers, worker W (from 0) draws as a single server seeded SEED+W: "
        "the Nth stream-all that worker W answers drops the same packets each run; which "
        "worker a connection reaches is the kernel's choice",
    )
    add_drop(parser)
    parser.add_argument(
        "--drop-resends", type=probability, default=0.0, metavar="P",
        help="chance that a resent packet (callType 2, or within a callType 4 range) is "
        "dropped (default: 0, as the reference: resends are never dropped)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-last", action="store_true",
        help="never drop the final packet of a stream-all, so one stream tells a client "
        "the last sequence",
    )  # fmt: skip
    parser.add_argument(
        "--idle-timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help="close a connection that sends no request, or reads none of its answer, "
        "for this long (default: 30; 0 never closes it)",
    )  # fmt: skip
    parser.add_argument(
        "--max-connections", type=_count, default=1024, metavar="N",
        help="connections served at once; more are closed on arrival (default: 1024)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=_workers, default=1, metavar="N",
        help=f"server processes sharing the port and the loaded feed, 1..{MAX_WORKERS} "
        "(default: 1); --max-connections applies to each",
    )  # fmt: skip
    parser.add_argument(
        "--loop", choices=LOOPS, default="asyncio",
        help="event loop: asyncio, uvloop (pip install 'packetcore[uvloop]'; measured "
        "slower here, see docs/scaling.md), or auto, uvloop when it is installed "
        "(default: asyncio)",
    )  # fmt: skip
    add_metrics(parser, "; with --workers, the sums over all workers")
    # Live feeds (issue 12).
    parser.add_argument(
        "--live", type=_rate, default=None, metavar="RATE",
        help="publish the feed at RATE packets a second from start-up, as a live exchange "
        "does (callType 5 subscribes; a hello's last is the highest sequence published): "
        "without --feed, an endless synthetic feed drawn from --seed; with --feed, that "
        "feed replayed at this pace, ending after its last packet; with --feed "
        "nats://..., the stream followed as it grows (RATE: the rate it is expected to "
        f"grow at, which sizes --max-lag).  RATE is "
        f"{MIN_RATE:g}..{MAX_RATE:g}; 0 (or no --live) serves a finished feed",
    )  # fmt: skip
    parser.add_argument(
        "--until", type=_sequence, default=None, metavar="N",
        help=f"with --live: stop publishing after sequence N, 1..{MAX_SEQUENCE} (the feed "
        "then ends); an error without --live",
    )  # fmt: skip
    parser.add_argument(
        "--max-lag", type=_lag, default=None, metavar="SECONDS",
        help="with --live: disconnect a subscriber that falls this many seconds of "
        f"packets behind (at least 1 MiB unsent; default: {DEFAULT_MAX_LAG:g}); an error "
        "without --live",
    )  # fmt: skip
    parser.add_argument(
        "--max-buffer", type=_bytes, default=None, metavar="BYTES",
        help="with --live: the bound on all subscribers' unsent bytes together (per "
        f"worker); past it the furthest behind are disconnected (default: "
        f"{DEFAULT_MAX_BUFFER}, 256 MiB); an error without --live",
    )  # fmt: skip
    parser.set_defaults(feed=None)  # --live without --feed: the endless synthetic feed
    # Faults on every answer, in-process: what packetcore-proxy does, without the hop.
    add_faults(parser)
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore-serve`` and return its exit code."""
    return run(PROGRAM, build_parser(prog), _serve, argv)


def _serve(args: argparse.Namespace) -> int:
    check_metrics(args, args.port, args.host, "--port")
    args.faults = fault_plan(args, server=True)  # a bad combination fails before any port opens
    try:
        loop, _ = loop_factory(args.loop)
    except LoopUnavailable as exc:
        raise UserError(str(exc)) from None
    # The feed is loaded and checked before any port opens.
    feed = _live_feed(args)
    if args.workers > 1:
        return _serve_workers(args, loop, feed)
    server = _server(args, feed, args.seed)
    with (
        queued_stderr() as say,
        metrics_served(PROGRAM, args, lambda: server.stats, say),
    ):
        # Serving never waits on stderr: a log nobody reads must not freeze the clients.
        signum = run_loop(loop, _run(server, say, loop))
        summary = server.stats.summary(faults=server.faults is not None)
        say(f"{PROGRAM}: stopped by {signals.name(signum)}: {summary}")
    return signalled(signum)


def _live_feed(args: argparse.Namespace) -> FeedSource:
    """Return the feed to serve, encoded; a live one (clock not started) with ``--live``.

    Encoded here, so that no frame of the command holds the loaded columns: the wire
    bytes are all a server keeps.
    """
    if is_nats(args.feed):
        from ..io.nats import NatsTarget

        try:
            NatsTarget.parse(args.feed)
        except ValueError as exc:  # a bad --feed, as a bad option
            raise UserError(f"--feed: {exc}", EXIT_USAGE) from None
    if not args.live:
        for option, value in (
            ("--until", args.until),
            ("--max-lag", args.max_lag),
            ("--max-buffer", args.max_buffer),
        ):
            if value is not None:
                raise UserError(f"{option} needs --live RATE (a rate above 0)", EXIT_USAGE)
        return WireIndex(open_feed(args.feed or "book", args.seed))
    if is_nats(args.feed):
        return _growing_feed(args)
    source = None if args.feed is None else WireIndex(open_feed(args.feed, args.seed))
    try:
        return LiveFeed(args.live, source, seed=args.seed, until=args.until)
    except ValueError as exc:
        raise UserError(
            f"--until: {exc}" if args.until is not None else str(exc), EXIT_USAGE
        ) from None


def _growing_feed(args: argparse.Namespace) -> FeedSource:
    """Return a JetStream stream followed as it grows (``--feed nats://... --live RATE``)."""
    from ..io.nats import NatsError
    from ..server.growing import GrowingFeed

    if args.workers > 1:
        raise UserError(
            "--workers: a stream followed as it grows is served by one process", EXIT_USAGE
        )
    try:
        return GrowingFeed(args.feed, args.live, until=args.until)
    except NatsError:
        raise
    except ValueError as exc:
        raise UserError(f"--until: {exc}", EXIT_USAGE) from None


def _live_note(feed: FeedSource) -> str:
    """Return what the start-up line says of a live feed ('' for a finished one)."""
    if feed.rate is None:
        return ""
    if not getattr(feed, "clocked", True):  # a stream followed as it grows
        return f"; {feed.describe()}"
    what = "endless synthetic feed" if feed.endless else f"sequences {feed.first}..{feed.final}"
    return f"; live at {feed.rate:g} packets/s ({what})"


def _server(args: argparse.Namespace, feed: FeedSource, seed: int | None) -> Server:
    return Server(
        feed,
        host=args.host,
        port=args.port,
        drop=args.drop,
        drop_resends=args.drop_resends,
        keep_last=args.keep_last,
        seed=seed,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        max_lag=DEFAULT_MAX_LAG if args.max_lag is None else args.max_lag,
        max_buffer=DEFAULT_MAX_BUFFER if args.max_buffer is None else args.max_buffer,
        faults=args.faults,
    )


def _serve_workers(args: argparse.Namespace, loop: str, index: FeedSource) -> int:
    # Encoded (or mapped) once, before the fork: the workers share it copy-on-write.
    try:
        sets, port = bind_workers(
            args.host, args.port, args.workers, max(128, args.max_connections)
        )
    except OSError as exc:
        raise UserError(str(exc.strerror or exc)) from None

    # Bound before the fork (a port in use fails before anything serves); served by the
    # parent only, summing the workers live.
    try:
        metrics = bind_metrics(args, lambda: workers.current())
    except UserError:
        for sockets in sets:
            for sock in sockets:
                sock.close()
        raise

    def serve(number: int, sockets: list[socket.socket], answer: StatsAnswer) -> ServerStats:
        if metrics is not None:
            metrics.stop()  # the worker's copy of the parent's metrics socket
        server = _server(args, index, worker_seed(args.seed, number))
        with queued_stderr() as say:
            run_loop(loop, answer.serving(server.stats, _run(server, say, loop, sockets)))
        return server.stats

    where = ", ".join(str(sock.getsockname()[0]) for sock in sets[0])
    sharing = "SO_REUSEPORT" if REUSE_PORT else "one shared socket"
    workers = Workers(sets, serve, program=PROGRAM)
    with contextlib.ExitStack() as stack:
        if metrics is not None:
            stack.callback(metrics.stop)
        try:
            # One clock for all: t0 is chosen before the fork, so all publish alike.
            index.start()
            workers.start()
            if metrics is not None:
                say_metrics(PROGRAM, metrics.start(), _stderr)
            return _supervise(args, workers, port, where, sharing + _live_note(index), loop)
        except BaseException:
            workers.terminate()  # a signal during start-up, or any failure: none lingers
            raise


def _supervise(
    args: argparse.Namespace, workers: Workers, port: int, where: str, sharing: str, loop: str
) -> int:
    """Say where the workers listen, watch them until a stop signal; return the status."""
    pids = ", ".join(str(report.pid) for report in workers.reports)
    with queued_stderr() as say:
        workers.say = say
        # Printed even with -q: with --port 0 it is the one thing the user must know.
        say(
            f"{PROGRAM}: listening on port {port} ({args.host}: {where}) on {loop} "
            f"with {args.workers} workers ({sharing}; pids {pids}); "
            "SIGINT or SIGTERM stops the server"
        )
        signum = asyncio.run(workers.supervise())
        how = "all workers died" if signum is None else f"stopped by {signals.name(signum)}"
        say(f"{PROGRAM}: {how}: {workers.summary(args.faults is not None)}")
    if workers.died or signum is None:
        return EXIT_FAILURE
    return signalled(signum)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _run(
    server: Server,
    say: Callable[[str], None],
    loop_name: str,
    sockets: list[socket.socket] | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM; return the signal's number.

    ``sockets`` are a worker's: it serves on them and leaves the announcement to the parent.
    """
    try:
        await server.start_async(sockets)
    except OSError as exc:
        raise UserError(str(exc.strerror or exc)) from None
    loop = asyncio.get_running_loop()
    stopped = signals.stop_signal(loop)
    if sockets is not None:
        # A worker starts with them blocked (see Workers): handled now, they may come.
        signals.unblock()
    if sockets is None:
        where = ", ".join(str(address[0]) for address in server.addresses)
        # Printed even with -q: with --port 0 it is the one thing the user must know.
        say(
            f"{PROGRAM}: listening on port {server.port} ({server.host}: {where}) on "
            f"{loop_name}{_live_note(server.index)}; SIGINT or SIGTERM stops the server"
        )
    try:
        return await stopped
    finally:
        await server.stop_async()


if __name__ == "__main__":
    sys.exit(main())
