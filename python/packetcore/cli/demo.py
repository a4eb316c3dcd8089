"""``python -m packetcore demo`` (``make demo``): serve, fetch into ``output.json``, stop.

A packetcore server runs in this process on a free loopback port; the fetch is the
same one ``packetcore-fetch`` makes, written to ``output.json`` in the working
directory, with the same summary line and exit status.  That line is all it prints
(``-v`` adds the server's address and the logs); a failure prints one error line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..client.session import FetchOptions
from ..io.feeds import load_feed
from ..io.output import check_writable
from ..server.server import Server
from . import UserError, add_verbosity, run
from .exits import EXIT_USAGE
from .fetch import fetch_into
from .options import add_feed_options

__all__ = ["build_parser", "main"]

PROGRAM = "packetcore demo"
PROG = "python -m packetcore demo"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Return the parser of the demo options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Start a packetcore server on a free loopback port, fetch its feed into "
            "output.json, print the summary, stop the server."
        ),
    )
    add_feed_options(parser)
    parser.add_argument(
        "--protocol", choices=("auto", "base", "extended"), default="auto",
        help="protocol the fetch speaks (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", default="output.json", help="file to write (default: %(default)s)"
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the demo; return the exit status."""
    return run(PROGRAM, build_parser(prog), _demo, argv)


def _demo(args: argparse.Namespace) -> int:
    if not 0 <= args.drop < 1:
        raise UserError(f"--drop must be in 0..1 (below 1), not {args.drop}", EXIT_USAGE)
    try:
        check_writable(args.output)
    except OSError as exc:
        raise UserError(f"cannot write the output: {exc}") from exc
    if args.verbosity <= 0:
        # The server's per-connection log is noise here; -v shows it.
        logging.getLogger("packetcore.server").setLevel(logging.WARNING)
    feed = load_feed(args.feed, args.seed)
    with Server(feed, host="127.0.0.1", port=0, drop=args.drop, seed=args.seed) as server:
        if args.verbosity > 0:
            print(
                f"packetcore demo: serving {len(feed)} packets on 127.0.0.1 port "
                f"{server.port} (drop {args.drop:g}); fetching into {args.output}",
                file=sys.stderr,
            )
        options = FetchOptions(host="127.0.0.1", port=server.port, protocol=args.protocol)
        return fetch_into(options, args.output, verbosity=args.verbosity)


if __name__ == "__main__":
    sys.exit(main())
