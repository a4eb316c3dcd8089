"""The exit statuses of every command, named once.

Import-light (``packetcore.__main__`` reads it before any command loads).
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STRICT",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "signalled",
]

EXIT_OK = 0
#: A runtime failure (no server, port in use, unreadable file...): what a
#: :class:`~packetcore.errors.UserError` returns unless it says otherwise.
EXIT_FAILURE = 1
#: A usage error: a bad option or combination of options.
EXIT_USAGE = 2
#: A fetch that ended incomplete (what arrived is saved beside the output).
EXIT_INCOMPLETE = 3
#: ``--strict`` and the server sent conflicting, invalid or corrupted packets.
EXIT_STRICT = 4
#: 128 + SIGINT (2): what a shell reports for a command ended by Ctrl-C.
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM (15).
EXIT_TERMINATED = 143


def signalled(signum: int) -> int:
    """Return the status of a command ended by signal ``signum``: 128 + it, as a shell says."""
    return 128 + int(signum)
