"""SIGINT and SIGTERM for every command: one handler, one rule.

The rule
--------
* **One request.**  A SIGINT or SIGTERM, and every other one that arrives within
  :data:`COALESCE_SECONDS` of it, is one request to stop.  ``timeout`` signals its child
  and then the child's process group, a terminal's Ctrl-C reaches every process of the
  group, an impatient user presses twice: one intent often arrives as two signals a few
  microseconds apart, and must not count twice.
* **The first request ends the command the way it ends when stopped.**  A follow
  (``fetch --follow``), a server and a proxy end normally: a follow writes what it has
  in order, finishes its output, puts it in place, prints its summary and exits 0;
  serve and proxy print their summary and exit 130 / 143.  A plain fetch has no end of
  its own before the feed's: it gives its work up, the output left as it was, exit 130
  (SIGINT) or 143 (SIGTERM), one line.  So does any command stopped before it has
  started its work (loading, parsing its options, a follow not yet following).
* **A later request gives up.**  A separate request (more than
  :data:`COALESCE_SECONDS` after the first) while the command still finishes abandons
  the work at once: the output is left as it was, one line, exit 130 / 143.
* **Once the output is in place, the command has succeeded.**  From then on (and once
  a command's outcome is settled in any other way) signals are ignored until the
  process exits: the shell sees the status the command reported.
* A signal that was ignored when the process started (a shell's ``cmd &`` ignores
  SIGINT) stays ignored.

How
---
One Python-level handler, :func:`_Stops.handle`, for the life of the process: the
console scripts and ``python -m packetcore`` install it (:func:`take_over`) while both
signals are still blocked (``packetcore.__main__`` blocks them first of all, before it
imports this module), so that no signal ever meets the default
action (which kills a process by SIGTERM without a word); a command run in-process
(tests, an embedding program) gets it from :func:`handled` and its previous handlers
back after.  Every other module of the command line reaches signals through this one
(it stays import-light: ``packetcore.__main__`` loads it before any command), but for
that first block.

The handler never raises while an event loop runs: an exception thrown out of a loop
between its callbacks can leave the loop's own completion callback queued, and the
next ``run_until_complete`` (asyncio.run's clean-up) then stops early: "RuntimeError:
Event loop stopped before Future completed".  Inside a loop, a command watches the
requests with :func:`watch` (they are scheduled on the loop); inside
:func:`in_loop` without a watcher they are recorded and acted on when the loop has
ended.  Outside loops, a request that abandons raises :class:`Interrupted` (a
KeyboardInterrupt, so every clean-up written for Ctrl-C runs) in the main thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from . import exits

# Not typing's: importing typing costs more than this module (packetcore.__main__
# loads it before any command).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import socket
    from typing import Any

__all__ = [
    "COALESCE_SECONDS",
    "STOP_SIGNALS",
    "Interrupted",
    "Terminated",
    "graceful",
    "handled",
    "in_loop",
    "interruption",
    "name",
    "placing",
    "settle",
    "stop_signal",
    "stopped_by",
    "take_over",
    "unblock",
    "watch",
]

#: Signals closer than this to the first of a request are the same request.
COALESCE_SECONDS = 0.5
#: The signals that stop a command.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A request to stop that gives the work up: raised in the main thread, outside loops."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """Return the signal's name (``SIGINT``)."""
        return name(self.signum)

    @property
    def what(self) -> str:
        """Return what the command was, in a word: ``terminated`` (SIGTERM) or ``interrupted``."""
        return "terminated" if self.signum == signal.SIGTERM else "interrupted"

    @property
    def status(self) -> int:
        """Return the command's exit status: 128 + the signal's number (130, 143)."""
        return exits.signalled(self.signum)


class Terminated(Interrupted):
    """:class:`Interrupted` by SIGTERM."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)


def _interrupted(signum: int) -> Interrupted:
    return Terminated() if signum == signal.SIGTERM else Interrupted(signum)


def name(signum: int) -> str:
    """Return the name of signal ``signum`` (``SIGTERM``)."""
    return signal.Signals(signum).name


def interruption(exc: BaseException) -> Interrupted | None:
    """Return ``exc`` as an :class:`Interrupted` if it is one (or a Ctrl-C), else None."""
    return stopped_by(exc) if isinstance(exc, KeyboardInterrupt) else None


def stopped_by(exc: KeyboardInterrupt) -> Interrupted:
    """Return ``exc`` as an :class:`Interrupted`: itself, or a Ctrl-C's (SIGINT)."""
    return exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)


class _Stops:
    """The process's one record of stop requests (see the module's rule)."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}  #: handlers replaced, to put back in-process
        self.owner = False  #: the process is a command's: nothing is put back, ever
        self.requests: list[int] = []  #: the signal that began each request
        self.since = float("-inf")  #: when the latest request began (monotonic)
        self.graceful = False  #: the first request asks for a normal end
        self.settled = False  #: the outcome is decided: requests are ignored
        self.abandon: int | None = None  #: the signal of a request that gives up, not acted on
        self.looping = 0  #: event loops running (in_loop): never raise
        self.placing = 0  #: the output goes in place: never raise
        self.watcher: tuple[asyncio.AbstractEventLoop, Callable[[int, bool], None]] | None = None
        self.delivered = 0  #: requests handed to a watcher
        self.wake: tuple[socket.socket, socket.socket] | None = None
        self.old_wakeup = -1

    def reset(self) -> None:
        """Forget everything (a command run in-process has ended)."""
        self.__init__()  # type: ignore[misc]

    def forked(self) -> None:
        """Start afresh in a forked child: none of the parent's requests, its own wake-up."""
        owner, wake = self.owner, self.wake
        if wake is not None:
            # The interpreter's wake-up fd is the parent's socket, closed here: a number
            # the child's next file reuses (uvloop's own, which it then fails to put
            # back).  None until the child installs its own.
            with contextlib.suppress(ValueError):  # forked from another thread
                signal.set_wakeup_fd(-1)
            for sock in wake:
                sock.close()
        self.__init__()  # type: ignore[misc]
        self.owner = owner

    def settle(self) -> None:
        """Ignore every request from now on (the command's outcome is decided)."""
        self.settled = True
        if self.owner and threading.current_thread() is threading.main_thread():
            # Ignored by the system, not by the handler: the interpreter puts SIG_DFL
            # back while it finalizes, and a signal then would kill the process.
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) == self.handle:
                    signal.signal(signum, signal.SIG_IGN)

    # -- the handler --------------------------------------------------------------------

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Record a stop signal; act on it as the rule says."""
        if self.settled:
            return
        now = time.monotonic()
        if self.requests and now - self.since < COALESCE_SECONDS:
            return  # the same request
        self.requests.append(signum)
        self.since = now
        gives_up = len(self.requests) > (1 if self.graceful else 0)
        if gives_up and self.abandon is None:
            self.abandon = signum
        if self._tell_watcher():
            return
        if self.looping or self.placing:
            return  # acted on once the loop has ended, or not at all once in place
        if gives_up:
            self.settle()  # given up: later requests change nothing
            raise _interrupted(signum)

    def _tell_watcher(self) -> bool:
        if self.watcher is None:
            return False
        loop, deliver = self.watcher
        pending = self.requests[self.delivered :]
        if not pending:
            return True
        try:
            loop.call_soon_threadsafe(self._deliver, deliver)
        except RuntimeError:  # its loop is closed: nobody watches any more
            self.watcher = None
            return False
        return True

    def _deliver(self, deliver: Callable[[int, bool], None]) -> None:
        # In the loop: hand over the requests not handed over yet, the latest deciding.
        while self.delivered < len(self.requests):
            number = self.delivered
            self.delivered += 1
            signum = self.requests[number]
            deliver(signum, number + 1 > (1 if self.graceful else 0))

    # -- installing ---------------------------------------------------------------------

    def install(self, *, owner: bool, force: bool = False) -> None:
        """Make :meth:`handle` the handler of both signals (an ignored one stays ignored).

        In-process (not ``owner``), a handler someone else installed stays, unless
        ``force`` (a forked worker: its parent's supervisor's handler is no longer its own).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if owner:
            self.owner = True
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN or current == self.handle:
                continue
            if not (self.owner or force) and current not in (
                signal.SIG_DFL,
                signal.default_int_handler,
            ):
                continue  # someone else's handler: theirs to keep
            self.previous.setdefault(signum, current)
            signal.signal(signum, self.handle)
        ours = any(signal.getsignal(signum) == self.handle for signum in STOP_SIGNALS)
        if self.wake is None and ours:
            # Wakes a loop's select() when another thread took the signal: the handler
            # then runs in the main thread at once, not at the loop's next event.
            import socket

            pair = socket.socketpair()
            for sock in pair:
                sock.setblocking(False)
            try:
                self.old_wakeup = signal.set_wakeup_fd(pair[1].fileno(), warn_on_full_buffer=False)
            except ValueError:
                for sock in pair:
                    sock.close()
                return
            self.wake = pair

    def uninstall(self) -> None:
        """Put back what :meth:`install` replaced (a command run in-process ended)."""
        if self.owner or threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self.previous.items():
            if signal.getsignal(signum) == self.handle:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if self.wake is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self.old_wakeup)
            for sock in self.wake:
                sock.close()
        self.reset()


_stops = _Stops()
if hasattr(os, "register_at_fork"):
    # A forked worker starts with none of its parent's requests, and installs its own.
    os.register_at_fork(after_in_child=_stops.forked)


def unblock() -> None:
    """Let SIGINT and SIGTERM through to this thread (a forked worker starts with them blocked)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def take_over() -> None:
    """Handle both signals for the rest of the process (a command's own process).

    Call it while the signals are blocked: none can then meet the default action.
    """
    _stops.install(owner=True)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Run a command under the rule; in-process, put the previous handlers back after."""
    _stops.install(owner=False)
    try:
        yield
    finally:
        _stops.settle()  # the command's outcome is decided: ignored until exit
        _stops.uninstall()


def graceful() -> None:
    """Declare that the first request to stop ends this command normally.

    A request already received (before the command had started) stays what it was.
    """
    _stops.graceful = True


def settle() -> None:
    """The command's outcome is decided: signals are ignored from now on."""
    _stops.settle()


def abandoned() -> Interrupted | None:
    """Return the request that gave up (as :class:`Interrupted`), if one did."""
    return None if _stops.abandon is None else _interrupted(_stops.abandon)


def requested() -> int | None:
    """Return the signal of the first request to stop received, if any (and not settled)."""
    if _stops.settled or not _stops.requests:
        return None
    return _stops.requests[0]


def check() -> None:
    """Raise :class:`Interrupted` for a request that gave up and was not acted on yet."""
    if _stops.abandon is not None and not _stops.settled:
        _stops.settle()
        raise _interrupted(_stops.abandon)


@contextlib.contextmanager
def in_loop() -> Iterator[None]:
    """Run an event loop (``asyncio.run``) in the block: a request inside never raises.

    A request that gives up while no :func:`watch` saw it, or a task cancelled by one,
    is raised as :class:`Interrupted` once the loop has ended.
    """
    import asyncio

    _stops.looping += 1
    try:
        yield
    except asyncio.CancelledError:
        if _stops.abandon is not None:
            _stops.settle()
            raise _interrupted(_stops.abandon) from None
        raise
    finally:
        _stops.looping -= 1
    check()


@contextlib.contextmanager
def placing() -> Iterator[None]:
    """Put the output in place in the block: once it is there, signals are ignored.

    A request inside is recorded, never raised: the output is either in place (the
    command succeeded, the request is moot) or the block failed with its own error.
    """
    _stops.placing += 1
    try:
        yield
    finally:
        _stops.placing -= 1
    _stops.settle()


@contextlib.contextmanager
def watch(stop: Callable[[int], None]) -> Iterator[None]:
    """In a coroutine: call ``stop(signum)`` on a request that ends the command normally,
    and cancel the coroutine's task on one that gives up (raised by :func:`in_loop`).

    A request received before the block (since the command started) is acted on at once.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def deliver(signum: int, gives_up: bool) -> None:
        if gives_up:
            if task is not None:
                task.cancel()
        else:
            stop(signum)

    previous = _stops.watcher
    wake = _watch(loop, deliver)
    try:
        yield
    finally:
        _stops.watcher = previous
        if wake is not None:
            loop.remove_reader(wake.fileno())


def _watch(
    loop: asyncio.AbstractEventLoop, deliver: Callable[[int, bool], None]
) -> socket.socket | None:
    """Make ``deliver`` the watcher on ``loop``; return the wake-up socket it reads."""
    _stops.watcher = (loop, deliver)
    wake = _stops.wake
    if wake is not None:
        loop.add_reader(wake[0].fileno(), _drain, wake[0])
    if _stops.delivered < len(_stops.requests) and not _stops.settled:
        loop.call_soon(_stops._deliver, deliver)
    return None if wake is None else wake[0]


def _drain(sock: socket.socket) -> None:
    # The bytes only woke the loop; the interpreter's handler has the signal already.
    with contextlib.suppress(OSError):
        while sock.recv(256):
            pass


def stop_signal(loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
    """Return a future that ``loop`` resolves with the first request's signal (serve, proxy).

    The first request ends them normally; a later one cancels the task that asked.
    The watch lasts as long as the loop.
    """
    import asyncio

    graceful()
    _stops.install(owner=False, force=True)  # a forked worker starts without the handler
    stopped: asyncio.Future[int] = loop.create_future()

    def stop(signum: int) -> None:
        if not stopped.done():
            stopped.set_result(signum)

    task = asyncio.current_task(loop)

    def deliver(signum: int, gives_up: bool) -> None:
        if gives_up and stopped.done():
            if task is not None:
                task.cancel()
        else:
            stop(signum)

    _watch(loop, deliver)
    return stopped
