"""The lifecycle the server and the proxy share: in a running event loop, or in a thread.

A subclass listens in ``start_async`` (setting ``_started``, ``_loop`` and ``_stopped``)
and stops in ``stop_async`` (setting ``_stopped``); :class:`Service` adds the rest: a
background thread with a loop of its own (:meth:`Service.start`, :meth:`Service.stop`),
and the sync and async context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Service"]


class Service:
    """Start and stop something that listens, from a loop or from plain code."""

    #: What it is called in messages ("the server is not started").
    kind = "service"
    _started: bool
    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None
    _stopped: asyncio.Event | None

    async def start_async(self) -> Self:
        """Listen, in the running loop; return self."""
        raise NotImplementedError

    async def stop_async(self) -> None:
        """Stop listening and end every connection."""
        raise NotImplementedError

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
