"""``packetcore-proxy``: forward a feed server's connections with faults, until SIGINT or SIGTERM.

Exit codes: 130 after SIGINT, 143 after SIGTERM; 1 failure (port in use); 2 bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import sys
from collections.abc import Sequence

from ..faults.model import FaultPlan
from ..faults.proxy import Proxy
from . import UserError, add_verbosity, exits, run, signals
from .exits import EXIT_USAGE
from .options import (
    add_faults,
    add_metrics,
    check_metrics,
    fault_plan,
    integer,
    metrics_served,
    seed,
)

__all__ = ["build_parser", "main"]

PROGRAM = "packetcore-proxy"

DESCRIPTION = """\
Forward every connection to an upstream server of the feed protocol (the reference
exchange, packetcore-serve, anyone's), with faults on the server-to-client direction:
latency, bandwidth, split writes, packet loss in bursts, duplicates, reorders,
corruption, resets, stalls and closes.  The proxy frames the protocol, so the faults
hit whole packets and info frames pass untouched.  With no fault it forwards as it
gets.  Each connection draws its faults from --seed and its number (from 0, in accept
order): a seeded run does the same to the same connection each time.

The line naming the port is printed even with -q.  An unreachable upstream costs the
connection that needed it (one line in the log), not the proxy."""

_port = integer(0, 0xFFFF, what="a port in 0..65535 (0 picks a free one)")


def _upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port in 1..65535)")
    return host.strip("[]"), int(port)


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the argument parser of ``packetcore-proxy``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--listen", type=_port, required=True, metavar="PORT",
        help="port to listen on (0 picks a free port and prints it)",
    )  # fmt: skip
    parser.add_argument(
        "--host", default="localhost",
        help="address to listen on (default: localhost, both 127.0.0.1 and ::1)",
    )  # fmt: skip
    parser.add_argument(
        "--upstream", type=_upstream, required=True, metavar="HOST:PORT",
        help="the server to forward to",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=seed, default=None,
        help="seed of every random fault: connection N draws the same faults each run "
        "(default: random)",
    )  # fmt: skip
    add_faults(parser, upstream=True)
    add_metrics(parser)
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore-proxy`` and return its exit code."""
    return run(PROGRAM, build_parser(prog), _proxy, argv)


def _refuse_itself(host: str, listen: int, upstream: tuple[str, int]) -> None:
    """Refuse an upstream that is the proxy's own port: it would connect to itself."""
    up_host, up_port = upstream
    if listen == 0 or up_port != listen:
        return
    try:
        ups = {str(i[4][0]) for i in socket.getaddrinfo(up_host, up_port, type=socket.SOCK_STREAM)}
        ours = {str(i[4][0]) for i in socket.getaddrinfo(host, listen, type=socket.SOCK_STREAM)}
    except OSError:
        return  # the connection will say what is wrong with it
    if ups & ours or any(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in ups):
        raise UserError(
            f"--upstream {up_host}:{up_port} is the proxy's own --listen port: every "
            "connection would connect to itself",
            EXIT_USAGE,
        )


def _proxy(args: argparse.Namespace) -> int:
    _refuse_itself(args.host, args.listen, args.upstream)
    check_metrics(args, args.listen, args.host, "--listen")
    plan = fault_plan(args) or FaultPlan(seed=args.seed)
    proxy = Proxy(args.upstream, plan, host=args.host, port=args.listen)
    with metrics_served(PROGRAM, args, lambda: proxy.stats, _stderr):
        signum = asyncio.run(_run(proxy))
    print(f"{PROGRAM}: stopped by {signals.name(signum)}: {proxy.stats.summary()}",
          file=sys.stderr)  # fmt: skip
    return exits.signalled(signum)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _run(proxy: Proxy) -> int:
    try:
        await proxy.start_async()
    except OSError as exc:
        raise UserError(str(exc.strerror or exc)) from None
    loop = asyncio.get_running_loop()
    stopped = signals.stop_signal(loop)
    host, port = proxy.upstream
    # Printed even with -q: with --listen 0 it is the one thing the user must know.
    print(
        f"{PROGRAM}: listening on port {proxy.port} ({proxy.host}), forwarding to {host} "
        f"port {port}; SIGINT or SIGTERM stops the proxy",
        file=sys.stderr,
        flush=True,
    )
    try:
        return await stopped
    finally:
        await proxy.stop_async()


if __name__ == "__main__":
    sys.exit(main())
