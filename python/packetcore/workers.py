"""Several server processes on one port, and the event loop each one runs.

The parent loads (or maps) the feed and encodes it once, binds, then forks: the workers
share the feed's bytes copy-on-write and never re-read it.  Where the kernel spreads
connections over ``SO_REUSEPORT`` listeners (Linux), each worker gets listening sockets
of its own, all bound by the parent before the fork on one port; elsewhere the parent
binds once and every worker accepts on the same inherited sockets.

Worker W (from 0) runs a :class:`~packetcore.server.Server` seeded with ``seed + W``:
its Nth stream-all drops the same packets on every run with the same seed, and worker 0
draws exactly what a single server does.  A worker stops on SIGTERM or SIGINT and sends
its :class:`~packetcore.server.ServerStats` to the parent as one JSON line on a pipe;
the parent sums them.  A worker that ends without sending them, or before the parent
asked it to stop, is reported as died.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import importlib
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from .conversation import ServerStats
from .listener import bind

__all__ = [
    "LOOPS",
    "REUSE_PORT",
    "LoopUnavailable",
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
    _buffer: bytearray = field(default_factory=bytearray, repr=False)


class Workers:
    """Fork server processes on shared sockets, watch them, stop them, sum their stats."""

    def __init__(
        self,
        sockets: Sequence[Sequence[socket.socket]],
        serve: Callable[[int, list[socket.socket]], ServerStats],
        say: Callable[[str], None] = print,
        program: str = "packetcore-serve",
    ) -> None:
        """``serve(index, sockets)`` runs in each worker until a stop signal; returns stats."""
        self._sockets = [list(s) for s in sockets]
        self._serve = serve
        self.say = say
        self._program = program
        self.reports: list[WorkerReport] = []
        self._fds: dict[int, WorkerReport] = {}
        self._stopping = False

    def start(self) -> None:
        """Fork every worker, then close the parent's copies of the listening sockets.

        SIGINT and SIGTERM wait while the workers are forked: one that arrives meanwhile
        is acted on (by the parent's handler) as soon as the last has started.
        """
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._fork_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _fork_all(self) -> None:
        for index, sockets in enumerate(self._sockets):
            read_fd, write_fd = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                os.close(read_fd)
                self._child(index, sockets, write_fd)
            os.close(write_fd)
            report = WorkerReport(index, pid)
            self.reports.append(report)
            self._fds[read_fd] = report
        seen: set[int] = set()
        for sockets in self._sockets:
            for sock in sockets:
                if id(sock) not in seen:
                    seen.add(id(sock))
                    sock.close()

    def _child(self, index: int, sockets: list[socket.socket], write_fd: int) -> NoReturn:
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by start()
            for fd in self._fds:  # the earlier workers' pipes are not this one's business
                os.close(fd)
            keep = {id(sock) for sock in sockets}
            for others in self._sockets:
                for sock in others:
                    if id(sock) not in keep:
                        sock.close()
            try:
                stats = self._serve(index, sockets)
            except KeyboardInterrupt:
                # Stopped before its loop took over the signals: it served nothing.
                stats = ServerStats()
            line = json.dumps(dataclasses.asdict(stats)).encode() + b"\n"
            while line:
                line = line[os.write(write_fd, line) :]
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

        Return the stop signal's number, or None if the workers all ended unasked.
        """
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[int | None] = loop.create_future()
        ended: list[asyncio.Future[None]] = []

        def stop(signum: int) -> None:
            if not stopped.done():
                stopped.set_result(signum)

        for number in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(number, stop, number)
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
            for number in _STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(number)
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
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        os.close(fd)
        if report._buffer.endswith(b"\n"):
            with contextlib.suppress(ValueError, TypeError):
                report.stats = ServerStats(**json.loads(report._buffer))
        task = loop.run_in_executor(None, os.waitpid, report.pid, 0)
        task.add_done_callback(lambda result: self._reaped(report, result, done))

    def _reaped(
        self,
        report: WorkerReport,
        result: asyncio.Future[tuple[int, int]],
        done: asyncio.Future[None],
    ) -> None:
        status = result.result()[1]
        if report.stats is None:
            report.death = _describe(status)
        elif not self._stopping:
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
        """Return the sum of the stats the workers sent."""
        total = ServerStats()
        for report in self.reports:
            if report.stats is not None:
                for name, value in dataclasses.asdict(report.stats).items():
                    setattr(total, name, getattr(total, name) + value)
        return total

    def summary(self) -> str:
        """Return the summed stats, the connections of each worker and the deaths, one line."""
        per_worker = ", ".join(
            "-" if r.stats is None else str(r.stats.connections) for r in self.reports
        )
        line = (
            f"{len(self.reports)} workers: {self.total().summary()}; "
            f"connections per worker: {per_worker}"
        )
        if self.died:
            line += f"; {len(self.died)} died"
        return line


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
