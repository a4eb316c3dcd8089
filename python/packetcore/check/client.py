"""Grade a client command: run it once per scenario against a server and a fault proxy.

For each scenario the check starts a clean packetcore server on a free loopback port
(the scenario's feed, and its stream-all loss) and, on the port the client connects to,
a :class:`~packetcore.faults.proxy.Proxy` with the scenario's faults that traces every
connection; it runs the command, waits for it within the scenario's time limit, and
compares what the command wrote with the feed (:mod:`.compare`).

The user's files are never lost: an output that exists before the run is moved aside
and put back at the end (after an interruption too), and each scenario starts with no
output present.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shlex
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..faults.proxy import Proxy
from ..io.feeds import book, synthetic
from ..packets import Packets
from ..protocol import DEFAULT_PORT
from ..server.server import Server
from .compare import UnreadableOutput, compare, read_output
from .custody import Custody, Note, remove
from .model import CheckRun, Level, ScenarioResult, Verdict, printable
from .scenarios import BOOK, SCENARIOS, Scenario, scenario_seed, select

__all__ = ["ClientCommand", "check_client", "check_client_async"]

#: The lines of a command's stderr (and stdout) a result keeps.
TAIL_LINES = 20
#: How long a command asked to stop (SIGTERM to its process group) has before SIGKILL.
KILL_GRACE = 2.0
#: With ``live``, each feed is published at this many packets a second or more, so
#: that the longest takes :data:`LIVE_SECONDS`.
LIVE_RATE = 100.0
LIVE_SECONDS = 0.5
#: The largest output read: this many bytes a packet of the feed (a pretty-printed JSON
#: record takes about 150), and never less than the floor.
OUTPUT_PER_PACKET = 1024
OUTPUT_FLOOR = 16 << 20
#: The most scenarios run at once: beyond, the check's own servers starve on a small
#: machine and a correct client would be failed for the check's slowness.
MAX_JOBS = 64
#: The environment variable that tells a client the port, beside ``{port}`` in its command.
PORT_VARIABLE = "PACKETCORE_PORT"

Started = Callable[[str, int, int], None]
Finished = Callable[[ScenarioResult], None]


@dataclass(frozen=True)
class ClientCommand:
    """The client under test: its command, where it runs, where it writes.

    ``{port}`` in an argument is the port the client must connect to, ``{output}`` a path
    the check chooses for its output (the user's files are then never touched);
    ``output`` is relative to ``cwd`` and may hold ``{port}`` too.
    """

    argv: tuple[str, ...]
    cwd: Path = field(default_factory=Path.cwd)
    output: str = "output.json"
    env: Mapping[str, str] | None = None

    @classmethod
    def of(
        cls,
        command: str | Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        output: str = "output.json",
        env: Mapping[str, str] | None = None,
    ) -> ClientCommand:
        """Return the command ``command`` names (a string is split as a shell would)."""
        argv = tuple(shlex.split(command) if isinstance(command, str) else command)
        if not argv:
            raise UserError("no client command given (packetcore-check client -- COMMAND)", 2)
        return cls(argv, Path(cwd) if cwd is not None else Path.cwd(), output, env)

    @property
    def takes_port(self) -> bool:
        """Return whether the command names the port (``{port}``)."""
        return any("{port}" in a for a in self.argv)

    @property
    def takes_output(self) -> bool:
        """Return whether the command names its output (``{output}``)."""
        return any("{output}" in a for a in self.argv)

    def output_path(self, port: int, chosen: Path | None = None) -> Path:
        """Return where the command writes with ``port`` (``chosen`` if it takes ``{output}``)."""
        if self.takes_output and chosen is not None:
            return chosen
        return self.cwd / self.output.replace("{port}", str(port))

    def line(self) -> str:
        """Return the command as one shell line."""
        return shlex.join(self.argv)

    def check_runnable(self) -> None:
        """Raise :class:`UserError` for a command that cannot be started at all."""
        if not self.cwd.is_dir():
            raise UserError(f"--cwd {self.cwd}: not a directory")
        program = self.argv[0]
        if os.sep in program:
            path = Path(program) if os.path.isabs(program) else self.cwd / program
            if not path.is_file() or not os.access(path, os.X_OK):
                raise UserError(f"the client command {program!r} is not an executable file")
        elif shutil.which(program, path=(self.env or os.environ).get("PATH")) is None:
            raise UserError(f"the client command {program!r} is not found on the PATH")


def _port_free(host: str, port: int) -> bool:
    """Return whether ``port`` can be listened on at ``host`` (each of its addresses)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, address in {(i[0], i[1], i[2], i[3], i[4]) for i in infos}:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path) -> list[str]:
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 64 * 1024))
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return lines[-TAIL_LINES:]


def _status(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit status {code}"


def _feed(scenario: Scenario, seed: int) -> Packets:
    return book() if scenario.feed == BOOK else synthetic(scenario.feed, seed)


class _Runner:
    """Run the scenarios of one check of a client (one at a time, or ``jobs`` at once)."""

    def __init__(
        self,
        command: ClientCommand,
        *,
        host: str,
        seed: int,
        time_limit: float | None,
        jobs: int,
        live: bool,
        note: Note | None = None,
    ) -> None:
        self.command = command
        self.note = note
        #: The user's output path the whole run holds (a fixed one), if any.
        self.held: Custody | None = None
        self.live = live
        self.host = host
        self.seed = seed
        self.time_limit = time_limit
        self.jobs = jobs
        self.scratch = Path(tempfile.mkdtemp(prefix="packetcore-check-"))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    async def run(self, scenario: Scenario, repeat: int, port: int | None) -> ScenarioResult:
        """Run one draw of ``scenario`` with the client on ``port`` (None: a free one)."""
        seed = scenario_seed(self.seed, scenario.name, repeat if scenario.randomized else 0)
        limit = self.time_limit if self.time_limit is not None else scenario.time_limit
        feed = _feed(scenario, seed)
        result = ScenarioResult(
            name=scenario.name,
            level=scenario.level,
            description=scenario.description,
            seed=seed,
            verdict=Verdict.PASS,
            time_limit=limit,
            feed_first=int(feed.sequence[0]),
            feed_last=int(feed.sequence[-1]),
            faults=scenario.describe_faults(),
            repeat=repeat,
        )
        rate = max(LIVE_RATE, len(feed) / LIVE_SECONDS) if self.live else None
        server = Server(feed, host="127.0.0.1", port=0, drop=scenario.drop, seed=seed, live=rate)
        await server.start_async()
        try:
            for attempt in range(1, 6):
                proxy = Proxy(
                    ("127.0.0.1", server.port), scenario.plan(seed), host=self.host,
                    port=_free_port() if port is None else port, trace=True,
                )  # fmt: skip
                try:
                    await proxy.start_async()
                    break
                except OSError as exc:
                    # A free port of 127.0.0.1 can be taken on ::1: another one, then.
                    if port is None and attempt < 5:
                        continue
                    raise UserError(
                        f"cannot listen on port {proxy.port} for the client: {exc.strerror or exc}"
                    ) from None
            try:
                await self._client(result, feed, proxy.port, proxy)
            finally:
                await proxy.stop_async()
        finally:
            await server.stop_async()
        return result

    async def _client(self, result: ScenarioResult, feed: Packets, port: int, proxy: Proxy) -> None:
        command = self.command
        work = Path(tempfile.mkdtemp(prefix=f"{result.name}-", dir=self.scratch))
        chosen = work / f"output{Path(command.output).suffix or '.json'}"
        output = command.output_path(port, chosen)
        if output == chosen or (self.held is not None and output == self.held.path):
            await self._judged(result, feed, port, proxy, output, work)
        else:
            # A name with {port} in it: held for the scenario, a file there kept aside.
            with Custody(output, note=self.note):
                await self._judged(result, feed, port, proxy, output, work)

    async def _judged(
        self,
        result: ScenarioResult,
        feed: Packets,
        port: int,
        proxy: Proxy,
        output: Path,
        work: Path,
    ) -> None:
        command = self.command
        chosen = work / f"output{Path(command.output).suffix or '.json'}"
        values = {"port": str(port), "output": str(chosen)}
        argv = [a.format_map(_Only(values)) for a in command.argv]
        env = dict(os.environ if command.env is None else command.env)
        env[PORT_VARIABLE] = str(port)
        out, err = work / "stdout", work / "stderr"
        started = time.monotonic()
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=command.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=stdout, stderr=stderr, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                raise UserError(
                    f"cannot start the client {argv[0]!r}: {exc.strerror or exc}"
                ) from None
            hung = False
            try:
                await asyncio.wait_for(process.wait(), result.time_limit)
            except asyncio.TimeoutError:
                hung = True
            finally:
                result.duration = time.monotonic() - started  # not the stop's grace
                await _stop(process)
        await asyncio.to_thread(proxy.wait_idle, 2.0)
        result.timeline = _timeline(proxy, started)
        result.details["stderr_tail"] = _tail(err)
        result.details["stdout_tail"] = _tail(out)
        code = process.returncode
        assert code is not None
        result.details["exit_status"] = code
        if hung:
            result.verdict = Verdict.HUNG
            result.reason = f"still running after the time limit of {result.time_limit:g} s"
        elif code != 0:
            result.verdict = Verdict.CRASHED
            last = next((line for line in reversed(result.details["stderr_tail"]) if line), "")
            result.reason = _status(code) + (f": {printable(last).strip()[:200]}" if last else "")
        elif not output.exists():
            result.verdict = Verdict.NO_OUTPUT
            result.reason = f"ended with exit status 0 and wrote no {output.name}"
        try:
            # Off the loop, which still hears a Ctrl-C while a large output is read.
            got = await asyncio.to_thread(_read, output, len(feed))
        except UnreadableOutput as exc:
            if result.verdict is Verdict.PASS:
                result.verdict = Verdict.WRONG
                result.reason = f"{output.name} {exc}"
            return
        finally:
            # The next scenario starts with no output (the user's is kept aside).
            with contextlib.suppress(OSError):
                remove(output)
        if got is None:
            return
        comparison = compare(feed, got)
        result.sequence_map = comparison.sequence_map
        result.details.update(comparison.details)
        if result.verdict is Verdict.PASS and not comparison.matches:
            result.verdict = Verdict.WRONG
            result.reason = comparison.reason
        elif result.verdict is Verdict.PASS and not any(c["requests"] for c in result.timeline):
            # The feed was not fetched from the check's server: a copy from elsewhere.
            result.verdict = Verdict.WRONG
            result.reason = (
                f"{output.name} holds the feed, but no request reached port {port}: "
                "it was not fetched from the server the check ran"
            )


def _read(output: Path, packets: int) -> Packets | None:
    """Return the packets the client wrote at ``output`` (None: it wrote nothing there).

    Only a regular file is opened (a FIFO would block the check until someone wrote to
    it, a device could be endless), and only one of a size a feed of ``packets`` could
    take in any format: the check's memory follows the feed, not the client.
    """
    try:
        mode = output.stat().st_mode
    except FileNotFoundError:
        return None  # nothing there, or a symlink to nothing
    except OSError as exc:
        raise UnreadableOutput(f"cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise UnreadableOutput("is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise UnreadableOutput(f"is {kind}, not a regular file")
    size, most = output.stat().st_size, max(OUTPUT_FLOOR, OUTPUT_PER_PACKET * packets)
    if size > most:
        raise UnreadableOutput(
            f"is {size:,} bytes, more than any format of a {packets:,}-packet feed takes "
            f"({most:,}): not read"
        )
    try:
        return read_output(output)
    except OSError as exc:
        raise UnreadableOutput(f"cannot be read: {exc.strerror or exc}") from None


class _Only(dict[str, str]):
    """Format values that leave every other brace as it was (``{x}`` stays ``{x}``)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Stop ``process`` and its process group: SIGTERM, then SIGKILL after a grace.

    Cancelled meanwhile (a second Ctrl-C gives the check up), it kills the group at once:
    a client that ignores SIGTERM must not outlive the check and write over the output
    the check put back.
    """
    try:
        for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
            _signal_group(process, sig)
            if process.returncode is not None and sig == signal.SIGTERM:
                continue  # ended on its own: only what it left running is asked to stop
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), grace)
                return
            except asyncio.TimeoutError:
                continue
    except asyncio.CancelledError:
        _signal_group(process, signal.SIGKILL)
        raise


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # its group: whatever it started too


def _timeline(proxy: Proxy, started: float) -> list[dict[str, Any]]:
    """Return the proxy's traces, times shifted to seconds since the command started."""
    shift = started - proxy.origin
    out = []
    for record in proxy.records:
        trace = record.trace
        if trace is None:
            continue
        entry = trace.as_dict()
        entry["number"] = record.number
        entry["outcome"] = record.outcome
        entry["opened"] = round(entry["opened"] - shift, 6)
        if entry.get("closed") is not None:
            entry["closed"] = round(entry["closed"] - shift, 6)
        for request in entry.get("requests", []):
            request["at"] = round(request["at"] - shift, 6)
        entry["packets"] = [[round(t - shift, 6), s] for t, s in entry.get("packets", [])]
        entry["info_frames"] = [round(t - shift, 6) for t in entry.get("info_frames", [])]
        out.append(entry)
    return out


async def check_client_async(
    command: str | Sequence[str] | ClientCommand,
    *,
    port: int | None = None,
    host: str = "localhost",
    output: str = "output.json",
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    seed: int = 0,
    level: Level = Level.REQUIRED,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    repeat: int = 1,
    jobs: int = 1,
    time_limit: float | None = None,
    scenarios: Sequence[Scenario] = SCENARIOS,
    on_start: Started | None = None,
    on_result: Finished | None = None,
    stop: asyncio.Event | None = None,
    live: bool = False,
    note: Note | None = None,
) -> CheckRun:
    """Grade the client ``command``; see :func:`check_client`.

    ``live``: the server publishes each scenario's feed as time passes, for clients
    that follow (callType 5), with the same losses and faults.  ``stop``, once set,
    ends the run: the scenarios still running are stopped (their
    commands too) and not counted, and the run returns marked ``interrupted``.
    """
    client = (
        command if isinstance(command, ClientCommand)
        else ClientCommand.of(command, cwd=cwd, output=output, env=env)
    )  # fmt: skip
    if repeat < 1 or not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"--repeat must be 1 or more, --jobs 1 to {MAX_JOBS}", 2)
    if seed < 0:
        raise UserError("--seed must be 0 or more", 2)
    if time_limit is not None and not time_limit > 0:
        raise UserError("--time-limit must be above 0 seconds", 2)
    if jobs > 1 and not client.takes_port:
        raise UserError(
            "--jobs runs scenarios at once on different ports: the command must take "
            "{port}", 2,
        )  # fmt: skip
    if jobs > 1 and not (client.takes_output or "{port}" in client.output):
        raise UserError(
            "--jobs runs scenarios at once: each needs its own output ({output} in the "
            "command, or {port} in --output)", 2,
        )  # fmt: skip
    if not client.takes_output:
        name = client.output.strip()
        if os.path.basename(name) in ("", ".", ".."):  # "", "/", "dir/", "x.json/."
            raise UserError(f"--output {client.output!r}: names a directory, not a file", 2)
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UserError(f"--host {host}: {exc.strerror or exc}", 2) from None
    try:
        chosen = select(scenarios, [only] if isinstance(only, str) else only,
                        [skip] if isinstance(skip, str) else skip)  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc), 2) from None
    client.check_runnable()
    # The port the client connects to: a fixed one (the protocol's 3000 by default) for
    # a client that cannot be told, a free one per scenario for one that takes {port}.
    fixed = port if port is not None else None if client.takes_port else DEFAULT_PORT
    if jobs > 1 and port is not None:
        raise UserError("--jobs runs scenarios at once, each on a free port: not with --port", 2)
    if fixed is not None and not _port_free(host, fixed):
        raise UserError(
            f"port {fixed} is in use on {host}: the check serves the client there (stop "
            "what listens on it, give --port, or {port} in the command for a free one)"
        )
    plan = [(s, r) for s in chosen for r in range(repeat if s.randomized else 1)]
    run = CheckRun(
        kind="client",
        target=client.line(),
        level=level,
        seed=seed,
        live=live,
        planned=len(plan),
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    began = time.monotonic()
    runner = _Runner(
        client, host=host, seed=seed, time_limit=time_limit, jobs=jobs, live=live, note=note
    )
    results: dict[int, ScenarioResult] = {}
    slots = asyncio.Semaphore(jobs)

    async def one(i: int, scenario: Scenario, draw: int) -> None:
        async with slots:
            label = f"{scenario.name}#{draw}" if draw else scenario.name
            if on_start is not None:
                on_start(label, i, len(plan))
            results[i] = result = await runner.run(scenario, draw, fixed)
            if on_result is not None:
                on_result(result)

    try:
        with contextlib.ExitStack() as stack:
            if not client.takes_output and (fixed is not None or "{port}" not in client.output):
                # One path for every scenario: held (locked, the user's file kept aside)
                # for the whole run, not scenario by scenario.
                user_output = client.output_path(fixed or 0)
                runner.held = stack.enter_context(Custody(user_output, note=note))
            tasks = [asyncio.ensure_future(one(i, s, r)) for i, (s, r) in enumerate(plan)]
            stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
            try:
                waiting: set[asyncio.Future[Any]] = {*tasks, *([stopping] if stopping else [])}
                while any(not t.done() for t in tasks):
                    done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    failed = [t for t in done if t is not stopping and t.exception()]
                    if failed:
                        raise failed[0].exception()  # type: ignore[misc]
                    if stopping is not None and stopping in done:
                        run.interrupted = True
                        break
            finally:
                for task in [*tasks, *([stopping] if stopping else [])]:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        runner.close()
        run.results = [results[i] for i in sorted(results)]
        run.duration = time.monotonic() - began
    return run


def check_client(
    command: str | Sequence[str] | ClientCommand,
    **options: Any,
) -> CheckRun:
    """Grade the client ``command`` against the battery; return the run and its verdicts.

    ``command`` is an argument list or a shell-like string; ``{port}`` in it is the
    port to connect to, ``{output}`` where to write (else ``output``, relative to
    ``cwd``).  ``port`` is where the check serves the client: by default 3000, where
    clients of this protocol connect, or a free port for each scenario when the command
    takes ``{port}``; ``jobs`` > 1 runs that many at once (the command must take
    ``{port}``, and ``{output}`` or an ``output`` with ``{port}``).  ``seed`` decides every
    loss and fault; ``repeat`` draws randomized scenarios that many times; ``level``
    decides which verdicts count in :attr:`CheckRun.passed`; ``only``/``skip`` name
    scenarios; ``time_limit`` replaces each scenario's own.  ``on_start(label, i,
    total)`` and ``on_result(result)`` are called as the run goes, ``note(line)`` with
    what the check does to the user's files (an output kept aside, one put back).
    """
    return asyncio.run(check_client_async(command, **options))
