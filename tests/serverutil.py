"""Helpers for tests that talk to a real server over loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from packetcore.client.follow import FollowStats, follow
from packetcore.packets import Packets
from packetcore.protocol import range_requests
from packetcore.server.server import Server

T = TypeVar("T")

#: The reference exchange's 238 bytes for the whole book, captured from it.
ORDERBOOK_BIN = Path(__file__).parent / "data" / "orderbook.bin"
PACKET = 17
TIMEOUT = 10.0


def range_request(start: int, count: int) -> bytes:
    """One range request (``start``, ``count``), framed as the fetch frames its ranges."""
    return range_requests([(start, count)])


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


class ServeProcess:
    """``packetcore-serve`` in a subprocess on a free loopback port, its memory readable.

    A thread drains the server's log so it never blocks on a full pipe; the port is
    read from the log line that announces it.
    """

    def __init__(self, *args: str, startup: float = 60.0) -> None:
        self.args = args
        self.startup = startup
        self.port = 0
        self.log: list[str] = []
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._drainer: threading.Thread | None = None

    def __enter__(self) -> ServeProcess:
        env = dict(os.environ, PYTHONPATH=_package_root())
        command = [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1"]
        self._proc = subprocess.Popen(
            [*command, "--port", "0", *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if not self._ready.wait(self.startup) or not self.port:
            self.__exit__(None, None, None)
            pytest.fail("packetcore-serve did not start:\n" + "".join(self.log[-20:]))
        return self

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if len(self.log) < 10_000:
                self.log.append(line)
            if not self.port and (match := re.search(r"listening on port (\d+)", line)):
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        assert self._proc is not None
        return self._proc.pid

    def memory(self, key: str = "VmRSS") -> int:
        """Return the server's ``VmRSS`` (or ``VmHWM``, the peak) in bytes, from /proc."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None, f"no {key} in /proc/{self.pid}/status"
        return int(match.group(1)) * 1024

    def alive(self) -> bool:
        """Return whether the server process still runs."""
        return self._proc is not None and self._proc.poll() is None

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drainer is not None:
            self._drainer.join(TIMEOUT)


def _package_root() -> str:
    import packetcore

    return str(Path(packetcore.__file__).resolve().parent.parent)


class RawServer:
    """A loopback server whose every connection is handed to ``serve(conn)`` in a thread.

    For servers that break the protocol on purpose: the connection is closed when
    ``serve`` returns, and errors on it are ignored.
    """

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so the accept loop sees `stopped`
        self.port = int(self.listener.getsockname()[1])
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.serve(conn)


class LoopThread:
    """An asyncio event loop running in a daemon thread, for servers the tests run.

    A test stays synchronous (it calls ``packetcore.fetch`` or the CLI) while the
    fakes and the fault proxy serve from this loop; ``run`` waits for a coroutine there.
    """

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run ``coro`` on the loop and return its result; fail after ``timeout`` seconds."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop, join its thread and close the loop once the thread has ended."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()

    @property
    def alive(self) -> bool:
        """Return whether the loop's thread still runs."""
        return self._thread.is_alive()


def collect(port: int, **options: object) -> tuple[Packets, FollowStats]:
    """Follow ``127.0.0.1:port`` to the end (or ``until``); every batch joined, and the stats.

    ``options`` are :func:`packetcore.follow`'s (``timeout`` 2 s unless given); a follow
    that has not ended in 30 s fails the test.
    """

    async def run() -> tuple[Packets, FollowStats]:
        batches: list[Packets] = []
        settings = {"timeout": 2.0, **options}
        async with follow("127.0.0.1", port, **settings) as feed:
            async for batch in feed:
                batches.append(batch)
            return Packets.concat(batches), feed.stats

    return asyncio.run(asyncio.wait_for(run(), 30.0))
