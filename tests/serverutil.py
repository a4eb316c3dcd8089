"""Helpers for tests that talk to a real server over loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from packetcore.server import Server

#: The reference exchange's 238 bytes for the whole book, captured from it.
ORDERBOOK_BIN = Path(__file__).parent / "data" / "orderbook.bin"
PACKET = 17
TIMEOUT = 10.0


def reference_bytes() -> bytes:
    """Return the reference capture of the book; fail the test if it is missing."""
    if not ORDERBOOK_BIN.is_file():
        pytest.fail(f"the reference capture is missing: expected it at {ORDERBOOK_BIN}")
    return ORDERBOOK_BIN.read_bytes()


def connect(server: Server, host: str = "127.0.0.1") -> socket.socket:
    """Open a connection to ``server`` with Nagle off, so each send leaves at once."""
    sock = socket.create_connection((host, server.port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; fail if the server closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            pytest.fail(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


def exchange(server: Server, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``request``, half-close, and return everything the server writes back."""
    with connect(server, host) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def packets_of(wire: bytes, *sequences: int) -> bytes:
    """Return the 17-byte records of ``sequences`` (1-based) from a 1..N wire image."""
    return b"".join(wire[(s - 1) * PACKET : s * PACKET] for s in sequences)


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll a server-side condition that no socket event reveals; fail on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the server")
        time.sleep(0.005)
