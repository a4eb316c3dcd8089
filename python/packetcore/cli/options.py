"""Options shared by the commands: types that refuse a bad value with one clear line, and
the declarations of ``--feed``, ``--seed`` and ``--drop``, made once for every command
that serves a feed."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import ipaddress
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .exits import EXIT_USAGE

if TYPE_CHECKING:
    from ..faults.model import FaultPlan
    from ..net.metrics import Collects, MetricsServer, StatsLike

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "add_common",
    "add_drop",
    "add_faults",
    "add_feed",
    "add_feed_options",
    "add_metrics",
    "add_seed",
    "bind_metrics",
    "check_format",
    "check_metrics",
    "fault_plan",
    "feed_spec",
    "integer",
    "metrics_served",
    "number",
    "probability",
    "say_metrics",
    "seed",
]


#: What ``--log-format`` takes.
LOG_FORMATS = ("text", "json")


def check_format(output: str, form: str | None) -> None:
    """Refuse (exit 2) a --format that contradicts the format the output's name says.

    The one rule of every command that writes a feed file (fetch, follow, convert).
    """
    from ..io.formats import format_named_by
    from ..io.output import STDOUT

    named = None if output == STDOUT or form is None else format_named_by(output)
    if named is not None and named != form:
        raise UserError(
            f"--format {form} contradicts the output's name {output} (a {named} name): "
            f"name the file for its format, or leave --format out",
            2,
        )


def add_common(parser: argparse.ArgumentParser) -> None:
    """Add what every command takes: ``--version`` and ``--log-format``."""
    from .. import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="text (default): one line a log record; json: one JSON object a record "
        '({"time", "level", "logger", "message"}, and "exception" with -v), for a log '
        "collector.  The command's own lines (where it listens, its summary, an error) "
        "stay text",
    )  # fmt: skip


class JsonFormatter(logging.Formatter):
    """Format a log record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as ``{"time", "level", "logger", "message"[, "exception"]}``."""
        seconds = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        entry = {
            "time": f"{stamp}.{int(seconds % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already (credentials hidden: cli.setup_logging)
            entry["exception"] = record.exc_text
        # ensure_ascii: one line whatever the message holds, newlines included.
        return json.dumps(entry, ensure_ascii=True)


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
    from ..server.server import Server

    return inspect.signature(Server).parameters[name].default


def feed_spec(text: str) -> str:
    """An argparse type for ``--feed``: a bad ``synthetic:N`` is a usage error (exit 2).

    A file is read later, when the feed loads: one that cannot be read is a failure (1).
    """
    if text.startswith("synthetic:"):
        from ..errors import FeedError
        from ..io.feeds import synthetic_count

        try:
            synthetic_count(text)
        except FeedError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_feed(parser: argparse.ArgumentParser) -> None:
    """Add ``--feed`` (a feed spec, as ``args.feed``) to ``parser``."""
    parser.add_argument(
        "--feed", type=feed_spec, default="book", metavar="FEED",
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


def _rate(text: str) -> float:
    from ..faults.model import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_milliseconds = number(0.0, what="a duration of 0 ms or more")
_bytes = integer(0, what="a byte count: 0 or more")
_burst = number(1.0, what="a mean burst length of 1 or more")
_split = integer(1, what="a byte count: 1 or more")
_request_number = integer(1, what="a request number: 1 or more (the first request is 1)")


def _sequences(text: str) -> frozenset[int]:
    from ..faults.model import parse_sequences

    try:
        return parse_sequences(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_faults(parser: argparse.ArgumentParser, *, upstream: bool = False) -> None:
    """Add the fault options (read back by :func:`fault_plan`); ``upstream`` adds that switch."""
    group = parser.add_argument_group(
        "faults", "what a hostile network does to each connection (default: nothing)"
    )
    add = group.add_argument
    add("--latency", type=_milliseconds, default=0.0, metavar="MS",
        help="hold every chunk back MS milliseconds")  # fmt: skip
    add("--jitter", type=_milliseconds, default=0.0, metavar="MS",
        help="add a uniform draw in -MS..+MS to the latency (bytes never overtake)")  # fmt: skip
    add("--bandwidth", type=_rate, default=None, metavar="BYTES_PER_S",
        help="at most this many bytes/s per connection; suffixes k and M (64k, 1.5M)")  # fmt: skip
    add("--split", type=_split, default=None, metavar="N",
        help="write at most N bytes at a time: packets arrive cut mid-field")  # fmt: skip
    add("--loss", type=probability, default=0.0, metavar="P",
        help="drop each packet with chance P (whole packets; info frames never)")  # fmt: skip
    add("--burst", type=_burst, default=1.0, metavar="L",
        help="losses come in bursts of mean length L (Gilbert-Elliott); 1 (default): "
        "independent")  # fmt: skip
    add("--duplicate", type=probability, default=0.0, metavar="P",
        help="send each packet twice with chance P")  # fmt: skip
    add("--reorder", type=probability, default=0.0, metavar="P",
        help="swap each packet with one of the next 3 with chance P")  # fmt: skip
    add("--corrupt", type=probability, default=0.0, metavar="P",
        help="change one byte of each packet with chance P")  # fmt: skip
    add("--reset-after", type=_bytes, default=None, metavar="BYTES",
        help="reset the connection (RST) after BYTES bytes")  # fmt: skip
    add("--stall-after", type=_bytes, default=None, metavar="BYTES",
        help="forward nothing more after BYTES bytes, keeping the connection open")  # fmt: skip
    add("--close-after", type=_bytes, default=None, metavar="BYTES",
        help="close the connection (FIN) after BYTES bytes")  # fmt: skip
    add("--drop-sequences", type=_sequences, default=frozenset(), metavar="LIST",
        help="drop the first copy of each of these sequences in a stream (callType 1 or 5) "
        "over all connections; later streams carry it.  LIST: sequences and inclusive "
        "ranges, comma-separated (14 or 100-120,200)")  # fmt: skip
    add("--drop-resend-sequences", type=_sequences, default=frozenset(), metavar="LIST",
        dest="drop_resend_sequences",
        help="drop the first answer to a resend or range request of each of these "
        "sequences over all connections; a later ask gets it.  LIST as for "
        "--drop-sequences")  # fmt: skip
    add("--corrupt-sequences", type=_sequences, default=frozenset(), metavar="LIST",
        help="the first copy of each of these sequences in a stream claims a sequence "
        "65,536 higher: a bit of its sequence field flipped in flight.  LIST as for "
        "--drop-sequences")  # fmt: skip
    add("--close-at-request", type=_request_number, default=None, metavar="N",
        help="close the connection (FIN) when its N-th request arrives (the first is 1, "
        "hellos count): that request and later ones go unanswered")  # fmt: skip
    add("--scenario", default=None, metavar="FILE.toml",
        help="faults that change over time or by connection number (docs/faults.md); "
        "the options above are its defaults")  # fmt: skip
    if upstream:
        add("--upstream-faults", action="store_true",
            help="apply the faults to the client-to-server direction instead (timing, "
            "split and the byte limits only)")  # fmt: skip


def fault_plan(args: argparse.Namespace, *, server: bool = False) -> FaultPlan | None:
    """Return the plan the fault options of ``args`` describe; None if they describe none.

    A combination no connection can have (or a bad scenario file) is a usage error;
    ``server``: the plan is a server's, and what only a proxy can do is refused too.
    """
    from ..faults.model import FaultPlan, Faults
    from ..faults.scenario import load_scenario

    upstream = bool(getattr(args, "upstream_faults", False))
    try:
        faults = Faults(
            latency=args.latency / 1000.0,
            jitter=args.jitter / 1000.0,
            bandwidth=args.bandwidth,
            split=args.split,
            loss=args.loss,
            burst=args.burst,
            duplicate=args.duplicate,
            reorder=args.reorder,
            corrupt=args.corrupt,
            reset_after=args.reset_after,
            stall_after=args.stall_after,
            close_after=args.close_after,
            drop_sequences=args.drop_sequences,
            drop_resends=args.drop_resend_sequences,
            corrupt_sequences=args.corrupt_sequences,
            close_at_request=args.close_at_request,
        )
        if args.scenario is not None:
            plan = load_scenario(args.scenario, faults, seed=args.seed, upstream=upstream)
        else:
            plan = FaultPlan(faults, seed=args.seed, upstream=upstream)
        if plan.upstream and plan.faults.packet_faults:
            raise ValueError(
                "--loss, --duplicate, --reorder, --corrupt, --drop-sequences, "
                "--drop-resend-sequences and --corrupt-sequences act on the server's packets: "
                "not with --upstream-faults"
            )
        if server:
            # A server shapes its own answers: these act in packetcore-proxy only, and
            # a scenario naming them would be accepted and do nothing.
            unsupported = ["hang"] if plan.sets("hang") else []
            if plan.upstream:
                unsupported.append("upstream-faults")
            if unsupported:
                verb = "act" if len(unsupported) > 1 else "acts"
                raise ValueError(
                    f"{args.scenario}: {' and '.join(unsupported)} {verb} in "
                    "packetcore-proxy only, not in a server's scenario"
                )
    except OSError as exc:
        raise UserError(f"cannot read {args.scenario}: {exc.strerror or exc}", EXIT_USAGE) from None
    except ValueError as exc:
        raise UserError(str(exc), EXIT_USAGE) from None
    return plan if plan.active else None


def add_metrics(parser: argparse.ArgumentParser, more: str = "") -> None:
    """Add ``--metrics-port`` and ``--metrics-host`` to ``parser``; ``more`` adds help."""
    parser.add_argument(
        "--metrics-port", type=integer(0, 0xFFFF, what="a port in 0..65535 (0 picks a free one)"),
        default=None, metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port and "
        f"prints it){more} (default: no metrics)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-host", default=None, metavar="HOST",
        help="with --metrics-port: address the metrics listen on (default: localhost; "
        "metrics are never exposed to the network unless asked)",
    )  # fmt: skip


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_metrics(args: argparse.Namespace, port: int, host: str, option: str) -> None:
    """Refuse metrics options that clash with ``option`` (``port`` on ``host``): exit 2."""
    if args.metrics_port is None:
        if args.metrics_host is not None:
            raise UserError("--metrics-host needs --metrics-port", EXIT_USAGE)
        return
    metrics_host = args.metrics_host or "localhost"
    if port and args.metrics_port == port and _overlap(host, metrics_host):
        raise UserError(
            f"{option} and --metrics-port must differ: both are port {port} on "
            f"{host if host == metrics_host else f'{host} and {metrics_host}'}",
            2,
        )


def _overlap(host: str, other: str) -> bool:
    """Tell whether two listening hosts share an address (a wildcard shares every one)."""
    try:
        mine, theirs = _addresses(host), _addresses(other)
    except (OSError, UnicodeError):
        return False  # the bind reports a host that does not resolve
    return any(a == b or _covers(a, b) or _covers(b, a) for a in mine for b in theirs)


def _covers(wildcard: _Address, address: _Address) -> bool:
    # 0.0.0.0 takes every IPv4 address; :: every address (IPv4 too, dual-stack as Linux is).
    return wildcard.is_unspecified and (wildcard.version == 6 or address.version == 4)


def _addresses(host: str) -> set[_Address]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}


def bind_metrics(
    args: argparse.Namespace, source: Callable[[], StatsLike] | Collects
) -> MetricsServer | None:
    """Bind the metrics port if ``--metrics-port`` asks for it, serving nothing yet."""
    if args.metrics_port is None:
        return None
    # prometheus-client is imported only when metrics are asked for.
    from ..net.metrics import MetricsServer

    host = args.metrics_host or "localhost"
    try:
        return MetricsServer(host, args.metrics_port, source)
    except OSError as exc:
        raise UserError(
            f"cannot serve metrics on {host} port {args.metrics_port}: {exc.strerror or exc}"
        ) from None


@contextlib.contextmanager
def metrics_served(
    program: str,
    args: argparse.Namespace,
    source: Callable[[], StatsLike] | Collects,
    say: Callable[[str], None],
) -> Iterator[None]:
    """Serve metrics (if asked) while the block runs."""
    metrics = bind_metrics(args, source)
    if metrics is None:
        yield
        return
    with metrics.start():
        say_metrics(program, metrics, say)
        yield


def say_metrics(program: str, metrics: MetricsServer, say: Callable[[str], None]) -> None:
    """Say where the metrics are served."""
    host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
    # Printed even with -q, before the line naming the port: with --metrics-port 0 the
    # user must learn it.
    say(f"{program}: metrics on port {metrics.port}: http://{host}:{metrics.port}/metrics")
