"""``packetcore convert IN OUT``: a feed file from any format packetcore reads to any it
writes, a block at a time, no server.

The records keep the order they have in IN.  OUT is written atomically: it appears
whole or not at all (a failure or a signal leaves it as it was); ``-`` writes to
stdout.  Exit status: 0, 1 (IN cannot be read or is no feed, OUT cannot be written),
2 bad option, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import EXIT_USAGE, UserError, add_verbosity, naming, reader_left, run
from .info import readable
from .options import check_format

__all__ = ["build_parser", "convert", "main"]

PROGRAM = "packetcore convert"


def convert(
    source: str, target: str, form: str | None = None, source_form: str | None = None
) -> int:
    """Copy the packets of ``source`` into ``target`` in ``form``; return how many."""
    from ..io.formats import format_for, iter_packets, open_writer
    from ..io.output import STDOUT, AtomicFile

    reading = format_for(source, source_form)
    writing = format_for(target, form)
    readable(source)
    batches = iter_packets(source, reading)
    count = 0
    if target == STDOUT:
        out = sys.stdout.buffer
        writer = open_writer(out, writing)
        for batch in batches:
            writer.write(batch)
            count += len(batch)
        writer.close()
        out.flush()
        return count
    file = AtomicFile(target)
    try:
        writer = open_writer(file.stream, writing)
        for batch in batches:
            writer.write(batch)
            count += len(batch)
        writer.close()
    except BaseException:
        file.discard()
        raise
    file.commit()
    return count


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the parser of the convert options."""
    from ..io.formats import FORMATS

    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Convert a feed file from any format to any other "
            f"({', '.join(FORMATS)}), a block at a time, keeping the records' order; "
            "needs no server.  OUT is written atomically (whole or not at all); '-' "
            "writes to stdout.  Exit status: 0, 1 IN unreadable or no feed, or OUT "
            "unwritable, 2 bad option, 130/143 interrupted (OUT left as it was)."
        ),
    )
    parser.add_argument("source", metavar="IN", help="the feed file to read")
    parser.add_argument("target", metavar="OUT", help="the file to write ('-': stdout)")
    parser.add_argument(
        "--format", choices=FORMATS, default=None,
        help="OUT's format (default: from its extension; json for one without, and for -); "
        "one that contradicts OUT's extension is refused",
    )  # fmt: skip
    parser.add_argument(
        "--input-format", choices=FORMATS, default=None,
        help="IN's format (default: from its extension)",
    )  # fmt: skip
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore convert``; return the exit status."""
    return run(PROGRAM, build_parser(prog), _convert, argv)


def _convert(args: argparse.Namespace) -> int:
    from ..errors import FeedError
    from ..io import is_nats

    for path in (args.source, args.target):
        if is_nats(path):
            raise UserError(
                f"{path} is a stream: convert reads and writes feed files (packetcore.read "
                "and packetcore.write take a stream)",
                EXIT_USAGE,
            )
    check_format(args.target, args.format)
    try:
        count = convert(args.source, args.target, args.format, args.input_format)
    except FeedError as exc:
        raise UserError(f"{naming(args.source, exc)}; {args.target} left as it was") from None
    except BrokenPipeError:
        if args.target != "-":
            raise
        return reader_left()  # the reader of stdout left (| head): a normal end
    if args.verbosity >= 0:
        shown = "stdout" if args.target == "-" else args.target
        print(f"{PROGRAM}: {count} packets -> {shown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
