"""Listening sockets for the server: every address of a host, all on one port."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

__all__ = ["bind", "peer_name"]

log = logging.getLogger("packetcore.server")

_BIND_ATTEMPTS = 32


def peer_name(writer: asyncio.StreamWriter) -> str:
    """Return a connection's peer as ``host:port`` (``[host]:port`` for IPv6)."""
    address = writer.get_extra_info("peername")
    if not isinstance(address, tuple) or len(address) < 2:
        return str(address)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def bind(
    host: str, port: int, backlog: int, reuse_port: bool = False
) -> tuple[list[socket.socket], int]:
    """Return listening sockets on every address of ``host``, all on one port, and the port.

    Port 0 picks a free port for the first address and asks the same of the others,
    starting over if another process holds it there.
    """
    if host == "localhost":
        # Both loopbacks, whatever this host's resolver says: a client elsewhere may
        # resolve "localhost" to ::1 only, or to 127.0.0.1 only.
        infos = [
            (socket.AF_INET, 0, 0, "", ("127.0.0.1", port)),
            (socket.AF_INET6, 0, 0, "", ("::1", port, 0, 0)),
        ]
    else:
        infos = _resolve(host, port)
    addresses: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address[0]) not in [(f, a[0]) for f, a in addresses]:
            addresses.append((family, address))
    families = {family for family, _ in addresses}
    for attempt in range(_BIND_ATTEMPTS if port == 0 else 1):
        sockets: list[socket.socket] = []
        chosen = port
        try:
            for family, address in addresses:
                sock = _listen(
                    family, (address[0], chosen, *address[2:]), families, backlog, reuse_port
                )
                if sock is None:
                    continue
                sockets.append(sock)
                chosen = sock.getsockname()[1]
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if exc.errno == errno.EADDRINUSE and port == 0 and attempt + 1 < _BIND_ATTEMPTS:
                continue
            raise OSError(
                exc.errno, f"cannot listen on {host} port {port}: {exc.strerror or exc}"
            ) from None
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {host}: no usable address")
        return sockets, chosen
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    try:
        return list(
            socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                flags=socket.AI_PASSIVE,
            )
        )  # fmt: skip
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen on {host!r}: {exc.strerror or exc}") from None


def _listen(
    family: socket.AddressFamily,
    address: tuple[Any, ...],
    families: set[socket.AddressFamily],
    backlog: int,
    reuse_port: bool = False,
) -> socket.socket | None:
    """Return a listening socket on ``address``, or None if this host lacks that family."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return None
        raise
    try:
        # Reuse a port whose last connections linger in TIME_WAIT, as asyncio does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Worker processes each listen on the port; the kernel spreads connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and len(families) > 1:
            # Otherwise "::" would also claim the IPv4 port the AF_INET socket takes.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            # "localhost" names ::1 on hosts whose IPv6 is switched off: skip it there.
            if exc.errno == errno.EADDRNOTAVAIL and len(families) > 1:
                log.debug("skipping %s: %s", address[0], exc.strerror)
                sock.close()
                return None
            raise
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise
