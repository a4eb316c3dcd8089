"""The output of a fetch or a follow, as the command opens it and says it was given up."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import OutputError
from . import UserError, signals

if TYPE_CHECKING:
    from ..io.sink import Output

__all__ = ["given_up", "open_output", "same_path"]


def same_path(a: str, b: str) -> bool:
    """Return whether writing ``a`` would write ``b``: one path once symlinks are followed
    (a link to a file not there yet included), or hard links of one file."""
    return os.path.realpath(a) == os.path.realpath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    )


def open_output(output: str, form: str | None = None) -> Output:
    """Open ``output`` in ``form`` (default: from its name); a failure is one UserError."""
    from ..io.formats import format_for
    from ..io.sink import Output

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
    fate = "stdout has what was written" if output == STDOUT else f"{output} left as it was"
    return UserError(f"interrupted by {interrupted.name}{when}; {fate}", interrupted.status)
