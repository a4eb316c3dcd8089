"""What the server and the proxy do to a connection's transport beyond writing to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

__all__ = ["reset_transport"]

#: SO_LINGER on, for 0 seconds: close() resets instead of sending what is queued and a FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_transport(transport: asyncio.WriteTransport) -> None:
    """Abort ``transport`` with a reset: never an end of file, which says the answer ended.

    What it holds unsent is discarded.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
