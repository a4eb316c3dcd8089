"""Feed files and outputs: the formats, reading and writing them, and loading feeds."""

from __future__ import annotations

import re
from typing import TypeGuard

__all__ = ["hide_credentials", "is_nats"]

# A stream's URL as it may appear in a line: up to the next blank.
_NATS_URL = re.compile(r"nats://\S*", re.IGNORECASE)


def is_nats(spec: object) -> TypeGuard[str]:
    """Return whether ``spec`` names a JetStream stream (``nats://...``, :mod:`.nats`).

    Here, where it costs nothing to import: commands ask it before they load anything.
    """
    return isinstance(spec, str) and spec[:7].lower() == "nats://"


def hide_credentials(text: str) -> str:
    """Return ``text`` with the credentials of every ``nats://`` URL in it hidden.

    Everything before a URL's last ``@`` is hidden (a stream's name and options hold
    none): a password may hold ``/``, ``,`` or ``@`` of its own, and a token has no ``:``.
    """

    def hidden(url: re.Match[str]) -> str:
        scheme, rest = url[0][:7], url[0][7:]
        return f"{scheme}***@{rest.rpartition('@')[2]}" if "@" in rest else url[0]

    return _NATS_URL.sub(hidden, text)
