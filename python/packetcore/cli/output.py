"""The output of a fetch or a follow, as the command opens it and says it was given up."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from ..errors import OutputError
from ..io import is_nats
from . import UserError, signals

if TYPE_CHECKING:
    from ..client.session import FetchOptions
    from ..io.sink import Sink

__all__ = ["given_up", "open_output", "resumed", "same_path"]


def same_path(a: str, b: str) -> bool:
    """Return whether writing ``a`` would write ``b``: one path once symlinks are followed
    (a link to a file not there yet included), or hard links of one file."""
    return os.path.realpath(a) == os.path.realpath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    )


def open_output(output: str, form: str | None = None, options: FetchOptions | None = None
                ) -> Sink:  # fmt: skip
    """Open ``output`` in ``form`` (default: from its name); a failure is one UserError.

    A JetStream stream (``nats://...``) is connected to and read: its output's
    ``resume_after`` says where the fetch starts again; ``options`` give it the fetch's
    retries, backoff and timeout.
    """
    from ..errors import MissingDependencyError
    from ..io.formats import format_for
    from ..io.sink import Output

    if is_nats(output):
        from ..client.session import FetchOptions
        from ..io.nats import NatsOutput, NatsTarget, Stopped

        if form not in (None, "bin"):
            raise UserError(f"--format {form}: a stream holds raw packets (bin) blocks", 2)
        try:
            NatsTarget.parse(output)
        except ValueError as exc:  # a bad -o, as a bad option
            raise UserError(str(exc), 2) from None
        options = options or FetchOptions()
        deadline = None if options.deadline is None else time.monotonic() + options.deadline

        def stop() -> str | None:  # connecting waits for neither a request to stop nor --deadline
            signum = signals.requested()
            if signum is not None:
                return f"stopped by {signals.name(signum)}"
            if deadline is not None and time.monotonic() > deadline:
                return f"the deadline of {options.deadline:g} s passed"
            return None

        try:
            nats = NatsOutput(output, retries=options.retries, backoff=options.backoff,
                              timeout=options.timeout, verify=True, stop=stop)  # fmt: skip
        except Stopped as exc:
            raise UserError(f"{exc} while connecting to {output}; nothing written") from exc
        except (OutputError, MissingDependencyError) as exc:
            raise UserError(str(exc)) from exc
        return nats
    try:
        return Output(output, format_for(output, form))
    except OSError as exc:
        raise UserError(f"cannot write the output {output}: {exc.strerror or exc}") from exc
    except (OutputError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def given_up(exc: KeyboardInterrupt, output: str, when: str = "") -> UserError:
    """Return the one line of a fetch or follow that a request to stop gave up (130, 143).

    ``when``: what it was doing, as " while finishing".
    """
    from ..io.output import STDOUT

    interrupted = signals.stopped_by(exc)
    if output == STDOUT:
        fate = "stdout has what was written"
    elif is_nats(output):
        fate = f"{output} holds what it acknowledged"
    else:
        fate = f"{output} left as it was"
    return UserError(f"interrupted by {interrupted.name}{when}; {fate}", interrupted.status)


def resumed(
    options: FetchOptions, out: Sink, *, program: str, doing: str, verbosity: int = 0
) -> FetchOptions | None:
    """Return ``options`` starting after what a stream ``out`` holds (``--from`` kept if
    later), saying so on stderr as ``program`` ``doing`` ("fetching").  None: it holds
    everything up to ``--until`` (``out`` is dropped, and that is said instead).

    The fetch starts one packet earlier, at the one the stream ends with: ``out`` checks
    that the exchange's is the same (that the exchange serves the stream's feed).
    """
    import dataclasses

    after = out.resume_after
    if after is None:
        return options
    from ..engine import MAX_SEQUENCE

    say = (lambda line: print(f"{program}: {line}", file=sys.stderr)) if verbosity >= 0 else None
    stop = MAX_SEQUENCE if options.stop is None else options.stop
    if after >= stop:
        out.abort()
        if say is not None:
            say(f"{out.name} holds the feed to {stop} already: nothing to do")
        return None
    if options.start is not None and options.start > after + 1:
        out.abort()
        raise UserError(
            f"--from {options.start}: {out.name} holds the feed to {after}; what it "
            f"would publish must follow on at {after + 1} (a stream holds no gap)"
        )
    if say is not None:
        say(f"{out.name} holds the feed to {after}; {doing} from {after + 1} ({after} "
            "again first, to check that the exchange serves that feed)")  # fmt: skip
    return dataclasses.replace(options, start=after)
