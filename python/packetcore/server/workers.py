"""Several server processes on one port, and the event loop each one runs.

The parent loads (or maps) the feed and encodes it once, binds, then forks: the workers
share the feed's bytes copy-on-write and never re-read it.  Where the kernel spreads
connections over ``SO_REUSEPORT`` listeners (Linux), each worker gets listening sockets
of its own, all bound by the parent before the fork on one port; elsewhere the parent
binds once and every worker accepts on the same inherited sockets.

Worker W (from 0) runs a :class:`~packetcore.server.server.Server` seeded with ``seed + W``:
its Nth stream-all drops the same packets on every run with the same seed, and worker 0
draws exactly what a single server does.  A worker stops on SIGTERM or SIGINT and sends
its :class:`~packetcore.server.server.ServerStats` to the parent as one JSON line on a pipe;
the parent sums them.  A worker that ends without sending them, or before the parent
asked it to stop, is reported as died.

While they serve, :meth:`Workers.current` sums the workers' stats as they are now (for
``/metrics``): the parent writes a byte on each worker's request pipe, and the worker's
event loop answers with a stats line on the pipe its final stats take.  Asked, not
pushed: a scrape sees every count made before it, so counters agree exactly with what
the clients saw, and the serving code keeps counting once, in its own ServerStats, with
nothing between scrapes (periodic lines would be stale by their period; prometheus-client's
multiprocess mode or a shared-memory block would count everything twice in the hot path,
and neither has room for fault kinds not known in advance).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import importlib
import json
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from ..net.listener import bind
from .stats import ServerStats

__all__ = [
    "LOOPS",
    "REUSE_PORT",
    "LoopUnavailable",
    "StatsAnswer",
    "WorkerReport",
    "Workers",
    "bind_workers",
    "loop_factory",
    "run_loop",
    "worker_seed",
]

T = TypeVar("T")

#: The ``--loop`` choices; ``auto`` is uvloop when it is installed, else asyncio.
LOOPS = ("auto", "asyncio", "uvloop")
#: Whether the kernel balances connections over ``SO_REUSEPORT`` listeners.  Linux does;
#: the BSDs and macOS accept the option but hand every connection to one socket.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
#: How long the parent waits for stopped workers before it kills them.
STOP_SECONDS = 10.0
#: How long :meth:`Workers.current` waits for a busy worker's answer before it uses the
#: worker's previous one.
ASK_SECONDS = 2.0

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class LoopUnavailable(RuntimeError):
    """The event loop asked for is not installed."""


def loop_factory(name: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Return the loop ``name`` resolves to and a factory of it; raise if it is missing."""
    if name not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, not {name!r}")
    if name != "asyncio":
        try:
            uvloop: Any = importlib.import_module("uvloop")
        except ImportError:
            if name == "uvloop":
                raise LoopUnavailable(
                    "uvloop is not installed: pip install 'packetcore[uvloop]', "
                    "or use --loop asyncio"
                ) from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return "uvloop", factory
    return "asyncio", asyncio.new_event_loop


def run_loop(name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new event loop of kind ``name`` (see :data:`LOOPS`)."""
    _, factory = loop_factory(name)
    # asyncio.Runner(loop_factory=...) would do, from Python 3.11 on.
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def worker_seed(seed: int | None, index: int) -> int | None:
    """Return the loss seed of worker ``index``: ``seed + index`` (None stays random)."""
    return None if seed is None else seed + index


def bind_workers(
    host: str, port: int, workers: int, backlog: int
) -> tuple[list[list[socket.socket]], int]:
    """Return each worker's listening sockets, all on one port, and that port.

    With :data:`REUSE_PORT`, every worker has sockets of its own (port 0 is chosen by the
    first); otherwise all share one set, bound once.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if not REUSE_PORT:
        sockets, chosen = bind(host, port, backlog)
        return [sockets] * workers, chosen
    sets: list[list[socket.socket]] = []
    chosen = port
    try:
        for _ in range(workers):
            sockets, chosen = bind(host, chosen, backlog, reuse_port=True)
            sets.append(sockets)
    except BaseException:
        for sockets in sets:
            for sock in sockets:
                sock.close()
        raise
    return sets, chosen


@dataclass
class WorkerReport:
    """What one worker process did, as the parent learned it."""

    index: int  #: the worker's number, from 0
    pid: int  #: its process id
    stats: ServerStats | None = None  #: its counters, None if it never sent them
    death: str | None = None  #: why it ended unasked ("killed by SIGKILL"), None if it did not
    latest: ServerStats | None = None  #: its last answer to :meth:`Workers.current`
    _buffer: bytearray = field(default_factory=bytearray, repr=False)
    _ask: int = field(default=-1, repr=False)  #: the parent's end of the request pipe
    _waiting: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    @property
    def known(self) -> ServerStats | None:
        """Return its final stats, else its latest answer, else None."""
        return self.stats if self.stats is not None else self.latest


class StatsAnswer:
    """A worker's end of the parent's stats requests: each byte read asks for one line."""

    def __init__(self, ask_fd: int, reply_fd: int) -> None:
        self._ask = ask_fd
        self._reply = reply_fd

    async def serving(self, stats: ServerStats, main: Awaitable[T]) -> T:
        """Await ``main``, answering the parent's requests with ``stats`` meanwhile.

        Once ``main`` ends, the stop signals stay blocked for the rest of the worker's life.
        """
        loop = asyncio.get_running_loop()
        os.set_blocking(self._ask, False)
        # Answered between the loop's callbacks: a line never shows a count half made.
        loop.add_reader(self._ask, self._answer, stats)
        try:
            return await main
        finally:
            loop.remove_reader(self._ask)
            # The worker is stopping.  The parent's SIGTERM may still come (after a Ctrl-C
            # to the whole group, it does): closing the loop resets its handlers to SIG_DFL
            # and closes its wakeup fd, so the SIGTERM would kill the worker before it sent
            # its stats, or write to a closed fd.  Blocked (the worker's other threads
            # never unblocked it), it waits unseen until _exit.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

    def _answer(self, stats: ServerStats) -> None:
        try:
            asked = len(os.read(self._ask, 256))
        except BlockingIOError:
            return
        if not asked:  # the parent closes its end only once this worker has ended
            self._orphaned()
            return
        # One line per byte: the parent pairs answers with requests in order.
        try:
            _write_all(self._reply, _stats_line(stats, final=False) * asked)
        except BrokenPipeError:  # the parent is gone, a request unanswered
            self._orphaned()

    def _orphaned(self) -> None:
        """The parent is gone: killed, it never asked its workers to stop.  Nobody would
        ever ask this one, which holds the port: it stops as if asked."""
        asyncio.get_running_loop().remove_reader(self._ask)
        signal.raise_signal(signal.SIGTERM)


def _stats_line(stats: ServerStats, *, final: bool) -> bytes:
    return json.dumps({"final": final, "stats": dataclasses.asdict(stats)}).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class Workers:
    """Fork server processes on shared sockets, watch them, stop them, sum their stats."""

    def __init__(
        self,
        sockets: Sequence[Sequence[socket.socket]],
        serve: Callable[[int, list[socket.socket], StatsAnswer], ServerStats],
        say: Callable[[str], None] = print,
        program: str = "packetcore-serve",
    ) -> None:
        """``serve(index, sockets, answer)`` runs in each worker until a stop signal; returns
        stats.  It should serve within ``answer.serving(stats, ...)`` for :meth:`current`.
        It starts with SIGINT and SIGTERM blocked, and unblocks them once it handles them."""
        self._sockets = [list(s) for s in sockets]
        self._serve = serve
        self.say = say
        self._program = program
        self.reports: list[WorkerReport] = []
        self._fds: dict[int, WorkerReport] = {}
        self._stopping = False
        self._signalled: int | None = None  #: the stop signal the parent got, if any
        self._wake: Callable[[int], None] | None = None  #: tells supervise() of a signal
        self._handlers: dict[int, Any] | None = None  #: the stop handlers before start()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Fork every worker, then close the parent's copies of the listening sockets.

        From here on (in the main thread) SIGINT and SIGTERM are the supervisor's: one that
        arrives before :meth:`supervise` runs is acted on by it, and :meth:`supervise` or
        :meth:`terminate` puts the previous handlers back.
        """
        if threading.current_thread() is threading.main_thread() and self._handlers is None:
            # Recorded, not raised: a KeyboardInterrupt between a fork and the bookkeeping
            # of its worker would leave that worker running, unknown.  Blocking them in
            # this thread is not enough: a thread started earlier (numpy's OpenBLAS pool)
            # takes the signal, and the interpreter runs the handler here all the same.
            self._handlers = {n: signal.signal(n, self._received) for n in _STOP_SIGNALS}
        # Blocked while forking: a worker starts with them blocked (see __init__).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._fork_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _received(self, signum: int, frame: object) -> None:
        # The interpreter's handler, not the loop's (which waits for the loop to read its
        # pipe): it runs as soon as the main thread wakes, before this process can see a
        # worker end of the same signal (a Ctrl-C to the whole group), so _reaped knows
        # that worker stopped as asked.
        if self._signalled is None:
            self._signalled = signum
        if self._wake is not None:
            self._wake(signum)

    def _restore_handlers(self) -> None:
        if self._handlers is not None:
            for number, handler in self._handlers.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)
            self._handlers = None

    def _fork_all(self) -> None:
        for index, sockets in enumerate(self._sockets):
            read_fd, write_fd = os.pipe()
            ask_read, ask_write = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                os.close(read_fd)
                os.close(ask_write)
                self._child(index, sockets, write_fd, ask_read)
            os.close(write_fd)
            os.close(ask_read)
            # A worker too busy to read its requests must not block the parent.
            os.set_blocking(ask_write, False)
            report = WorkerReport(index, pid, _ask=ask_write)
            self.reports.append(report)
            self._fds[read_fd] = report
        seen: set[int] = set()
        for sockets in self._sockets:
            for sock in sockets:
                if id(sock) not in seen:
                    seen.add(id(sock))
                    sock.close()

    def _child(
        self, index: int, sockets: list[socket.socket], write_fd: int, ask_fd: int
    ) -> NoReturn:
        code = 1
        try:
            # SIGINT and SIGTERM stay blocked (by start()) until serve() unblocks them in
            # this thread, its handlers in place: a thread it starts before then never
            # takes one, so none can ever kill the worker by the default action.
            for fd in self._fds:  # the earlier workers' pipes are not this one's business
                os.close(fd)
            for report in self.reports:
                os.close(report._ask)
            keep = {id(sock) for sock in sockets}
            for others in self._sockets:
                for sock in others:
                    if id(sock) not in keep:
                        sock.close()
            try:
                stats = self._serve(index, sockets, StatsAnswer(ask_fd, write_fd))
            except KeyboardInterrupt:
                # Stopped before its loop took over the signals: it served nothing.
                stats = ServerStats()
            # Stopping: the parent's SIGTERM (after a Ctrl-C to the whole group, it comes)
            # waits unseen until _exit.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            # A parent that is gone wants no stats: nothing to say, nothing went wrong.
            with contextlib.suppress(BrokenPipeError):
                _write_all(write_fd, _stats_line(stats, final=True))
            code = 0
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    async def supervise(self) -> int | None:
        """Wait for SIGINT or SIGTERM, or for every worker to end; then stop all of them.

        Call it in the main thread.  Return the stop signal's number (a signal received
        since :meth:`start` counts), or None if the workers all ended unasked.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        stopped: asyncio.Future[int | None] = loop.create_future()
        ended: list[asyncio.Future[None]] = []

        def stop(signum: int) -> None:
            if not stopped.done():
                stopped.set_result(signum)

        # The wakeup fd wakes the loop when another thread (a waitpid) takes the signal.
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        loop.add_reader(wake_read.fileno(), _drain, wake_read)
        old_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)

        def wake(signum: int) -> None:
            loop.call_soon_threadsafe(stop, signum)

        self._wake = wake
        if self._handlers is None:  # start() was not called in the main thread
            self._handlers = {n: signal.signal(n, self._received) for n in _STOP_SIGNALS}
        if self._signalled is not None:  # received since start()
            stop(self._signalled)
        for fd, report in self._fds.items():
            done: asyncio.Future[None] = loop.create_future()
            ended.append(done)
            loop.add_reader(fd, self._readable, fd, report, done)
        all_ended = asyncio.gather(*ended)

        def all_gone(_: object) -> None:
            # Every worker ended unasked: nothing is left to serve.
            if not stopped.done():
                stopped.set_result(None)

        all_ended.add_done_callback(all_gone)
        try:
            signum = await stopped
        finally:
            self._wake = None
            self._restore_handlers()
            signal.set_wakeup_fd(old_wakeup)
            loop.remove_reader(wake_read.fileno())
            wake_read.close()
            wake_write.close()
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(all_ended), STOP_SECONDS)
        except asyncio.TimeoutError:
            self._signal_all(signal.SIGKILL)
            await all_ended
        return signum

    def terminate(self) -> None:
        """Send SIGTERM to every worker still running; wait for none."""
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            self._restore_handlers()

    def _signal_all(self, signum: int) -> None:
        for report in self.reports:
            if report.stats is None and report.death is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(report.pid, signum)

    def _readable(self, fd: int, report: WorkerReport, done: asyncio.Future[None]) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return
            data = b""
        if data:
            report._buffer += data
            self._take_lines(report)
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        os.close(fd)
        os.close(report._ask)
        report._ask = -1
        for waiter in report._waiting:  # it answers nothing more
            if not waiter.done():
                waiter.set_result(None)
        report._waiting.clear()
        task = loop.run_in_executor(None, os.waitpid, report.pid, 0)
        task.add_done_callback(lambda result: self._reaped(report, result, done))

    def _take_lines(self, report: WorkerReport) -> None:
        """Take the complete stats lines out of a worker's buffer: answers, then the final."""
        lines = report._buffer.split(b"\n")
        report._buffer = bytearray(lines.pop())  # an incomplete line waits for the rest
        for line in lines:
            try:
                message = json.loads(line)
                stats = _stats_of(message["stats"])
            except (ValueError, TypeError, KeyError):
                continue
            if message.get("final"):
                report.stats = stats
            else:
                report.latest = stats
                if report._waiting:
                    waiter = report._waiting.pop(0)
                    if not waiter.done():
                        waiter.set_result(None)

    def current(self, timeout: float = ASK_SECONDS) -> ServerStats:
        """Return the sum of every worker's stats as of now; callable from any thread.

        Each running worker is asked and its answer awaited (up to ``timeout``); one that
        does not answer in time counts with its previous answer.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return self.total()
        try:
            future = asyncio.run_coroutine_threadsafe(self._ask_all(timeout), loop)
            return future.result(timeout + 1.0)
        except (RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
            # The supervising loop ended (or is ending): what the workers said last.
            return self.total()

    async def _ask_all(self, timeout: float) -> ServerStats:
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        for report in self.reports:
            if report.stats is not None or report.death is not None or report._ask < 0:
                continue
            try:
                os.write(report._ask, b"?")
            except OSError:  # gone, or too busy to read: its last answer stands
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            report._waiting.append(waiter)
            waiting.append(waiter)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        return self.total()

    def _reaped(
        self,
        report: WorkerReport,
        result: asyncio.Future[tuple[int, int]],
        done: asyncio.Future[None],
    ) -> None:
        status = result.result()[1]
        if report.stats is None:
            report.death = _describe(status)
        elif not self._stopping and self._signalled is None:
            # Not a worker that got the parent's own stop signal (as Ctrl-C sends it to
            # the whole group) before the parent could pass it on.
            report.death = "stopped unasked"
        if report.death is not None:
            left = sum(r.stats is None and r.death is None for r in self.reports)
            self.say(
                f"{self._program}: worker {report.index} (pid {report.pid}) died: "
                f"{report.death}; {left} worker{'s' if left != 1 else ''} left"
            )
        if not done.done():
            done.set_result(None)

    @property
    def died(self) -> list[WorkerReport]:
        """Return the reports of the workers that ended unasked."""
        return [report for report in self.reports if report.death is not None]

    def total(self) -> ServerStats:
        """Return the sum of the stats the workers sent: final ones, else their latest."""
        total = ServerStats()
        for report in self.reports:
            stats = report.known
            if stats is None:
                continue
            for name, value in dataclasses.asdict(stats).items():
                mine = getattr(total, name)
                if isinstance(value, dict):  # kind -> count, as ServerStats.faults
                    for key, count in value.items():
                        mine[key] = mine.get(key, 0) + count
                else:
                    setattr(total, name, mine + value)
        return total

    def summary(self, faults: bool = False) -> str:
        """Return the summed stats, the connections of each worker and the deaths, one line.

        ``faults``: the workers have faults to inject (their counts are named, if none).
        """
        per_worker = ", ".join(
            "-" if r.stats is None else str(r.stats.connections) for r in self.reports
        )
        line = (
            f"{len(self.reports)} workers: {self.total().summary(faults)}; "
            f"connections per worker: {per_worker}"
        )
        if self.died:
            line += f"; {len(self.died)} died"
        return line


def _drain(sock: socket.socket) -> None:
    """Empty a wakeup socket: its bytes only woke the loop."""
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass


def _stats_of(fields: dict[str, Any]) -> ServerStats:
    """Return the ServerStats a stats line names, ignoring fields this build lacks."""
    known = {f.name for f in dataclasses.fields(ServerStats)}
    return ServerStats(**{name: value for name, value in fields.items() if name in known})


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"  # pragma: no cover
