"""The lifecycle the server and the proxy share: in a running event loop, or in a thread.

:class:`Service` listens (:meth:`Service.start_async`), tracks the task of every
connection it accepts, and stops (:meth:`Service.stop_async`): it stops accepting,
cancels those tasks and waits for them.  It also runs in a background thread with a
loop of its own (:meth:`Service.start`, :meth:`Service.stop`), and is a sync and an
async context manager.  A subclass serves one connection in :meth:`Service._serve`,
and may refuse one (:meth:`Service._admit`) or say more when it starts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .listener import bind

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Service"]


class Service:
    """Start and stop something that listens, from a loop or from plain code.

    ``backlog`` and ``reuse_port`` are the listening sockets' (see :func:`.listener.bind`).
    """

    #: What it is called in messages ("the server is not started").
    kind = "service"
    #: Seconds :meth:`stop_async` waits for the connections' tasks, and then for each
    #: listener, to end (None: as long as they take).
    stop_timeout: float | None = None
    #: The stream reader's buffer limit of each connection.
    read_limit = 1 << 16

    def __init__(
        self, host: str, port: int, *, backlog: int = 128, reuse_port: bool = False
    ) -> None:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port must be in 0..65535, not {port}")
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self._backlog = backlog
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bound: list[tuple[Any, ...]] = []
        self._started_at = time.monotonic()

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        """Return the socket addresses it listens on."""
        return list(self._bound)

    # -- what a subclass does -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection until it ends."""
        raise NotImplementedError

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Return whether to serve a connection just accepted (else it is aborted)."""
        return not self._stopping

    def _listening(self) -> None:
        """Say that it listens (called once it does)."""

    def _closing(self) -> None:
        """End what is not a connection's task, as it stops (called once it stops accepting)."""

    def _closed(self) -> None:
        """Say that it stopped (called once every connection has ended)."""

    # -- in the running loop ----------------------------------------------------------------

    async def start_async(self, sockets: Sequence[socket.socket] | None = None) -> Self:
        """Start listening on the running event loop; raise :class:`OSError` if binding fails.

        ``sockets``, if given, are listening sockets to serve on instead of binding.
        """
        if self._started:
            raise RuntimeError(f"the {self.kind} was already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if sockets is None:
            sockets, self.port = bind(self.host, self.port, self._backlog, self.reuse_port)
        else:
            self.port = sockets[0].getsockname()[1]
        try:
            for sock in sockets:
                self._servers.append(
                    await asyncio.start_server(self._accept, sock=sock, limit=self.read_limit)
                )
        except BaseException:
            for server in self._servers:
                server.close()
            for sock in sockets:
                sock.close()
            raise
        self._bound = [sock.getsockname() for sock in sockets]
        self._started_at = time.monotonic()
        self._listening()
        return self

    async def stop_async(self) -> None:
        """Stop accepting, end every connection and wait for their tasks; idempotent."""
        if not self._started or self._stopped is None:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for server in self._servers:
            server.close()
        self._closing()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.stop_timeout)
        # Aborted transports close their sockets in callbacks: let those run.
        await asyncio.sleep(0)
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), self.stop_timeout)
        self._closed()
        self._stopped.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or not self._admit(writer):
            writer.transport.abort()
            return
        self._tasks.add(task)
        _no_delay(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    # -- from plain code ------------------------------------------------------------------

    def thread_name(self) -> str:
        """Return the name of the thread that :meth:`start` runs it in."""
        return f"packetcore-{self.kind}"

    async def serve_forever(self) -> None:
        """Wait until it is stopped."""
        if self._stopped is None:
            raise RuntimeError(f"the {self.kind} is not started")
        await self._stopped.wait()

    def start(self) -> Self:
        """Run it in a background thread; return once it listens."""
        if self._started or self._thread is not None:
            raise RuntimeError(f"the {self.kind} was already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            try:
                try:
                    loop.run_until_complete(self.start_async())
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    ready.set()
                loop.run_until_complete(self.serve_forever())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name=self.thread_name(), daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop what :meth:`start` runs; idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result()
        thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop_async()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """Switch Nagle's algorithm off on an accepted TCP connection: small writes go at once.

    asyncio does it only for a socket whose ``proto`` is IPPROTO_TCP, and one accepted
    from a listener made with ``proto`` 0 (as :func:`.listener.bind` makes them) has 0.
    Left on, an answer written while the one before is unacknowledged waits for the
    client's next segment: a follow's repairs waited for its next request, a tick later.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
