"""Exceptions raised by packetcore."""

from __future__ import annotations

__all__ = [
    "FeedError",
    "FetchError",
    "MissingDependencyError",
    "OutputError",
    "PacketcoreError",
    "ProtocolError",
    "UserError",
]


class PacketcoreError(Exception):
    """Base class of every error packetcore raises on purpose."""


class ProtocolError(PacketcoreError, ValueError):
    """Bytes that break the wire protocol: raised by strict decoding.

    ``offset`` is the byte offset of the offending packet in the decoded input and
    ``field`` the JSON key of the first field found invalid.
    """

    def __init__(self, message: str, offset: int = -1, field: str = "") -> None:
        super().__init__(message)
        self.offset = offset
        self.field = field

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, int, str]]:
        return (type(self), (str(self), self.offset, self.field))


class FetchError(PacketcoreError):
    """A fetch that could not get anything: no connection, or a server that is not one."""


class PastTheEnd(FetchError):
    """A fetch asked to start after the feed's last sequence, ``last``."""

    def __init__(self, message: str, last: int) -> None:
        super().__init__(message)
        self.last = last


class FeedError(PacketcoreError, ValueError):
    """A feed that cannot be served or read: a bad spec, or a file that fails validation.

    ``index`` is the offending record's position in the file (-1 if no one record is
    at fault) and ``field`` its JSON key ("" if no one field is).
    """

    def __init__(self, message: str, index: int = -1, field: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.field = field

    def __reduce__(self) -> tuple[type[FeedError], tuple[str, int, str]]:
        return (type(self), (str(self), self.index, self.field))


class MissingDependencyError(PacketcoreError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra)."""


class OutputError(PacketcoreError):
    """The output could not be written (a full disk, a reader that left, ...)."""


class UserError(PacketcoreError):
    """A failure the user caused or can fix; ``exit_code`` is what the process returns.

    The default, 1, is the command line's ``EXIT_FAILURE``; 2 is a usage error.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
