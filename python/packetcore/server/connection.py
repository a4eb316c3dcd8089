"""One client connection as the server sees it: the one way its bytes go out, and are counted.

Every byte the server writes to a client passes through :class:`Connection`: the
answers of a conversation (:meth:`Connection.write`), the batches a publisher hands a
subscriber without waiting (:meth:`Connection.push`), and, when faults shape the
connection, what its :class:`~packetcore.faults.model.Delivery` writes.  It counts each
byte once into ``ServerStats.bytes_written``, as it is handed to the socket, and takes
back what a reset discards unsent.  It also owns the idle timer: a client that sends
nothing, or reads nothing of its answer, for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import asyncio

import numpy as np

from ..faults.delivery import Delivery
from ..faults.shaper import Shaper
from ..net.listener import peer_name
from ..net.transport import reset_transport
from ..protocol import Request
from .stats import ServerStats

__all__ = ["Connection"]


class Connection:
    """Write to one client, count what is written, and close it on idling or on demand.

    ``shaper`` and ``rng``, if given, are the faults of this connection: its bytes then
    go out through a :class:`~packetcore.faults.model.Delivery`, and are counted as that
    hands them to the socket.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stats: ServerStats,
        idle_timeout: float,
        shaper: Shaper | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.peer = peer_name(writer)
        #: Whether the idle timer closed the connection.
        self.timed_out = False
        self.idle_timeout = idle_timeout
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        #: The faults' delivery of this connection's bytes, if any.
        self.delivery = (
            None if shaper is None else Delivery(writer, shaper, rng, written=self._counted)
        )

    def _counted(self, size: int) -> None:
        """Count ``size`` bytes handed to the socket: the one place bytes_written grows."""
        self._stats.bytes_written += size

    # -- the idle timer -------------------------------------------------------------------

    def watch(self) -> asyncio.TimerHandle | None:
        """Arm the idle timer around one wait for the client; the caller cancels it."""
        # A timer that aborts the transport, not asyncio.wait_for: on Python 3.11,
        # wait_for can swallow a cancellation (stop() would then hang on the connection).
        if self.idle_timeout <= 0:
            return None
        return self._loop.call_later(self.idle_timeout, self._expire)

    def _expire(self) -> None:
        self.timed_out = True
        self.abort()

    async def read(self, size: int) -> bytes:
        """Read up to ``size`` request bytes (b"" at the end), closing on idling."""
        timer = self.watch()
        try:
            return await self._reader.read(size)
        finally:
            if timer is not None:
                timer.cancel()

    # -- writing --------------------------------------------------------------------------

    def request(self, request: Request) -> bool:
        """Note a request of the client's; return whether it is to be answered.

        The faults shape its answers by their kind; from the request their
        ``close_at_request`` names on, none is answered and the connection is to close.
        """
        return self.delivery is None or self.delivery.request(request)

    async def write(self, data: bytes | bytearray | memoryview, *, timed: bool = True) -> None:
        """Write ``data`` and wait until the socket takes it (or the faults send it).

        ``timed``: a reader that takes nothing for ``idle_timeout`` is closed, else it
        would hold its task forever; a live subscriber's writes are not (the publisher
        bounds its lag).
        """
        if self.delivery is None:
            self.push(data)
        timer = self.watch() if timed else None
        try:
            if self.delivery is None:
                await self._writer.drain()
            else:
                await self.delivery.send(data)
        finally:
            if timer is not None:
                timer.cancel()

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ``data`` to the socket now, without waiting for it to be taken."""
        self._counted(memoryview(data).nbytes)
        self._transport.write(data)

    @property
    def unsent(self) -> int:
        """Return the bytes handed over that the socket has not taken yet."""
        return self._transport.get_write_buffer_size()

    @property
    def closing(self) -> bool:
        """Return whether the connection is closing or closed."""
        return self._transport.is_closing()

    # -- ending ---------------------------------------------------------------------------

    def reset(self) -> int:
        """Cut the connection with a reset; return the bytes it discarded unsent.

        Never an end of file, which says the answer (the feed) ended.
        """
        unsent = self._take_back()
        reset_transport(self._transport)
        return unsent

    def abort(self) -> int:
        """Drop the connection at once (the peer is gone); return the bytes discarded unsent."""
        unsent = self._take_back()
        self._transport.abort()
        return unsent

    def _take_back(self) -> int:
        """Uncount the bytes a closing transport discards: they never reach the client."""
        unsent = self.unsent
        self._stats.bytes_written -= unsent
        return unsent

    async def close(self) -> None:
        """Send what the faults hold back, end the stream and close, within idle_timeout."""
        timer = self.watch()
        try:
            if self.delivery is not None:
                await self.delivery.close(self._reader)
            self._writer.close()
            await self._writer.wait_closed()
        except ConnectionError:
            pass
        finally:
            if timer is not None:
                timer.cancel()

    def cancel(self) -> None:
        """Stop the faults' sending task, if any: the connection is going away."""
        if self.delivery is not None:
            self.delivery.cancel()
