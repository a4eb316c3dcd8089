"""``packetcore-fetch``: fetch a whole feed into ``output.json``, or say exactly why not.

Exit codes: 0 complete; 1 failure (no server, unwritable output, ...); 2 bad option;
3 incomplete (missing sequences listed, packets saved to ``<output>.partial``);
4 ``--strict`` and the server sent conflicting or invalid packets.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ..client import FetchError, FetchResult, fetch, format_ranges
from ..output import STDOUT, check_writable, partial_path, write_packets
from ..protocol import DEFAULT_PORT
from ..recovery import Progress
from . import UserError, add_verbosity, run
from .options import integer, number

_port = integer(1, 0xFFFF, what="a port in 1..65535")
_count = integer(0, what="0 or more")
_at_least_one = integer(1, what="1 or more")
_positive = number(0.0, low_open=True, what="more than 0 seconds")
_non_negative = number(0.0, what="0 seconds or more")
_probability = number(
    0.0, 1.0, low_open=True, high_open=True, what="a probability between 0 and 1, exclusive"
)

__all__ = ["EXIT_INCOMPLETE", "EXIT_STRICT", "build_parser", "main"]

EXIT_INCOMPLETE = 3
EXIT_STRICT = 4
PROGRAM = "packetcore-fetch"

log = logging.getLogger("packetcore.fetch")


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Return the parser of the fetch options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Fetch every packet of a feed from an exchange server (the reference "
            "exchange, packetcore-serve, or any server of the base protocol), recover the "
            "dropped ones, and write them in sequence order as JSON.  Exit status: 0 "
            "complete, 1 failure, 2 bad option, 3 incomplete (missing sequences listed, "
            "packets saved to OUTPUT.partial), 4 --strict and bad data."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    parser.add_argument(
        "-o", "--output", default="output.json",
        help="file to write, atomically; '-' writes to stdout (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=("auto", "base", "extended"), default="auto",
        help="auto: probe for the packetcore extension, fall back to the base protocol "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--hello-timeout", type=_positive, default=0.2, metavar="SECONDS",
        help="how long auto waits for the extension's answer (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_positive, default=5.0, metavar="SECONDS",
        help="how long a connection may stay silent while an answer is due "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=_count, default=5, metavar="N",
        help="retries of a refused or lost connection or an unanswered request, with "
        "exponential backoff (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--backoff", type=_non_negative, default=0.1, metavar="SECONDS",
        help="first pause before a retry, doubled each time up to 5 s (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--confidence", type=_probability, default=1e-6, metavar="P",
        help="base protocol: make stream-all passes until the chance that a packet after "
        "the highest seen exists unseen is below P (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-passes", type=_at_least_one, default=100, metavar="N",
        help="base protocol: give up after N stream-all passes (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--strict", action="store_true",
        help="fail (exit 4, nothing written) if the server sent conflicting duplicates "
        "or invalid packets",
    )  # fmt: skip
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROGRAM) -> int:
    """Run ``packetcore-fetch``; return the exit status."""
    return run(PROGRAM, build_parser(prog), _fetch, argv)


def _fetch(args: argparse.Namespace) -> int:
    output: str = args.output
    try:
        check_writable(output)
    except OSError as exc:
        raise UserError(f"cannot write the output: {exc}") from exc
    with _progress_bar(args.verbosity) as progress:
        try:
            result = fetch(
                args.host,
                args.port,
                protocol=args.protocol,
                hello_timeout=args.hello_timeout,
                timeout=args.timeout,
                retries=args.retries,
                backoff=args.backoff,
                confidence=args.confidence,
                max_passes=args.max_passes,
                progress=progress,
            )
        except FetchError as exc:
            raise UserError(str(exc)) from exc
    return finish(result, output, strict=args.strict, quiet=args.verbosity < 0)


def finish(result: FetchResult, output: str, *, strict: bool = False, quiet: bool = False) -> int:
    """Write what a fetch got where it belongs, print the summary; return the exit status."""
    if result.conflicts:
        sequences = sorted(set(result.conflicting.sequence.tolist()))
        shown = ", ".join(map(str, sequences[:20])) + (" ..." if len(sequences) > 20 else "")
        log.warning(
            "%d duplicate(s) differ from the packet first received (first kept): %s",
            result.conflicts, shown,
        )  # fmt: skip
    if strict and (result.conflicts or result.invalid):
        raise UserError(
            f"--strict: the server sent {result.conflicts} conflicting and {result.invalid} "
            f"invalid packet(s); nothing written",
            EXIT_STRICT,
        )
    if not result.complete:
        return _incomplete(result, output, quiet=quiet)
    try:
        write_packets(output, result.packets)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from exc
    if output != STDOUT:
        with contextlib.suppress(FileNotFoundError):
            partial_path(output).unlink()  # superseded by the complete output
    if not quiet:
        print(result.summary(output if output != STDOUT else "stdout"), file=sys.stderr)
    return 0


def _incomplete(result: FetchResult, output: str, *, quiet: bool) -> int:
    if result.missing:
        log.debug("missing sequences: %s", format_ranges(result.missing))
        missing = f"{result.missing_count} packet(s) missing: {format_ranges(result.missing, 20)}"
    else:
        missing = "no known gap"
    saved = "nothing saved (output is stdout)"
    if output != STDOUT:
        partial = partial_path(output)
        try:
            write_packets(partial, result.packets)
        except OSError as exc:
            saved = f"could not save them to {partial}: {exc.strerror or exc}"
        else:
            saved = f"saved to {partial}"
    if not quiet:
        print(result.summary(), file=sys.stderr)
    raise UserError(
        f"incomplete: {result.reason}; {missing}; {len(result.packets)} packet(s) received, "
        f"{saved}; {output} left untouched",
        EXIT_INCOMPLETE,
    )


@contextlib.contextmanager
def _progress_bar(verbosity: int) -> Iterator[Progress | None]:
    """Yield a progress callback drawing a tqdm bar, or None when stderr is no terminal."""
    if verbosity < 0 or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar: Any = tqdm(total=None, unit="pkt", unit_scale=True, leave=False, file=sys.stderr)

    def progress(held: int, expected: int | None) -> None:
        if expected is not None and bar.total != expected:
            bar.total = expected
        bar.update(held - bar.n)

    try:
        yield progress
    finally:
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
