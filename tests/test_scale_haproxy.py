"""HAProxy in front of two servers, as docs/scaling.md sets it up: ``make test-scale``.

The configuration run is the docs' block with only the addresses changed (the first
test checks that, and that haproxy finds the block itself valid), after a ``global``
section that opens a stats socket, for HAProxy's own counters.  Two ``packetcore-serve``
processes serve the same synthetic feed with the same seed; 200 fetches run through
HAProxy at once, on one event loop, and every one must bring the feed byte for byte,
also when one server is killed with SIGKILL mid-run, where the cost must be the
connections it held; run again without the block's ``option redispatch``, the kill costs
more, which is why the line is there.  The tests print their figures (``pytest -s``) for
docs/scaling.md.  haproxy must be on the PATH (.ci/run takes it out
of Debian's package); without it they skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packetcore.io.feeds import open_feed
from packetcore.packets import Packets
from serverutil import ServeProcess

from packetcore import FetchResult, encode, fetch_async

HAPROXY = shutil.which("haproxy")
pytestmark = [
    pytest.mark.scale,
    pytest.mark.skipif(
        HAPROXY is None,
        reason="haproxy is not installed (.ci/run takes it out of Debian's haproxy package)",
    ),
]

SCALING = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
CLIENTS = 200
PACKETS = 50_000
SEED = 7
DROP = "0.2"
SERVE = ("--feed", f"synthetic:{PACKETS}", "--seed", str(SEED), "--drop", DROP)
#: A stream-all whose highest sequence is this far below the feed's end was cut short:
#: the seeded loss drops a run that long with a chance of 0.2**100.
CUT = 100
#: The lines that name an address: the only ones the test changes.
BIND = re.compile(r"^(\s*bind )(\S+)$", re.MULTILINE)
SERVER = re.compile(r"^(\s*server \S+ )(\S+)$", re.MULTILINE)
BACKEND = "packetcore"


def docs_config() -> str:
    """Return the HAProxy configuration of docs/scaling.md, as written there."""
    text = SCALING.read_text(encoding="utf-8")
    found = re.findall(r"^```text\n(defaults\n.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert len(found) == 1, "docs/scaling.md holds no one HAProxy configuration block"
    return str(found[0])


def addressed(config: str, front: int, ports: list[int]) -> str:
    """Return ``config`` listening on 127.0.0.1:``front``, its servers on ``ports``."""
    config, binds = BIND.subn(rf"\g<1>127.0.0.1:{front}", config)
    backends = iter(ports)
    config, servers = SERVER.subn(lambda m: f"{m.group(1)}127.0.0.1:{next(backends)}", config)
    assert (binds, servers) == (1, len(ports)), "the docs' block: one bind, one server each"
    return config


def free_port() -> int:
    # Bound and closed: nothing listens there for the moment.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Balancer:
    """haproxy in the foreground with ``config``, a stats socket in a directory of its own.

    A thread keeps haproxy's output, each line with the time it came.
    """

    def __init__(self, config: str) -> None:
        # A short path: a Unix socket's must fit in 108 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.socket = self.directory / "stats.sock"
        self.config = f"global\n    stats socket {self.socket}\n\n{config}"
        self.lines: list[tuple[float, str]] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Balancer:
        path = self.directory / "haproxy.cfg"
        path.write_text(self.config, encoding="utf-8")
        assert HAPROXY is not None
        self.process = subprocess.Popen(
            [HAPROXY, "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while True:  # another process's socket: there is no event to await, so poll
            with contextlib.suppress(OSError):
                # Up, and checked: each server's health check has passed at least once.
                servers = self.servers()
                if servers and all(
                    (row["status"], row["check_status"]) == ("UP", "L4OK")
                    for row in servers.values()
                ):
                    return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                pytest.fail("haproxy did not start:\n" + self.output())
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line))

    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def said(self, pattern: str) -> float | None:
        """Return when haproxy first printed a line matching ``pattern`` (None: never)."""
        return next((at for at, line in self.lines if re.search(pattern, line)), None)

    def servers(self) -> dict[str, dict[str, str]]:
        """Return the backend's servers' counters, by name, from ``show stat``."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            answer = bytearray()
            while chunk := sock.recv(1 << 16):
                answer += chunk
        if not answer:
            return {}  # not serving its socket yet
        header, *rows = answer.decode().splitlines()
        names = header.removeprefix("# ").split(",")
        found = {}
        for row in rows:
            stat = dict(zip(names, row.split(","), strict=False))
            if row and stat["pxname"] == BACKEND and stat["svname"] != "BACKEND":
                found[stat["svname"]] = stat
        return found

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.terminate()  # SIGTERM: haproxy's hard stop
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._reader is not None:
                self._reader.join(10)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Fetch:
    """One fetch through the balancer: its result, its events, and when it ended."""

    result: FetchResult | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: float = 0.0

    @property
    def lost(self) -> int:
        """Connections the fetch replaced: a repair connection lost or gone silent."""
        return sum(1 for event in self.events if event["event"] == "reconnect")

    @property
    def cut(self) -> int:
        """Stream-all passes that ended short of the feed's end (a close, to the client)."""
        return sum(
            1
            for event in self.events
            if event["event"] == "pass" and event["highest"] < PACKETS - CUT
        )


def run_fetches(port: int, midway: Callable[[], None] | None = None) -> tuple[list[Fetch], float]:
    """Run CLIENTS fetches through ``127.0.0.1:port`` at once; return them and the time.

    ``midway`` is called once, as soon as half the fetches are repairing (have asked for
    a round of ranges): each then holds a repair connection, and some still stream.
    """
    fetches = [Fetch() for _ in range(CLIENTS)]
    repairing: set[int] = set()

    def told(index: int) -> Callable[[dict[str, Any]], None]:
        def event(event: dict[str, Any]) -> None:
            fetches[index].events.append(event)
            if event["event"] == "round" and index not in repairing:
                repairing.add(index)
                if len(repairing) == CLIENTS // 2 and midway is not None:
                    midway()

        return event

    async def one(index: int, started: float) -> None:
        fetch = fetches[index]
        fetch.result = await fetch_async("127.0.0.1", port, events=told(index))
        fetch.ended = time.monotonic() - started

    async def every() -> float:
        started = time.monotonic()
        await asyncio.gather(*(one(index, started) for index in range(CLIENTS)))
        return time.monotonic() - started

    seconds = asyncio.run(asyncio.wait_for(every(), 90))
    return fetches, seconds


@pytest.fixture(scope="module")
def wire() -> bytes:
    """The feed both servers serve (as the server opens it), the bytes a fetch must bring."""
    feed = open_feed(f"synthetic:{PACKETS}", SEED)
    assert isinstance(feed, Packets)
    return encode(feed)


@pytest.fixture
def servers() -> Iterator[tuple[ServeProcess, ServeProcess]]:
    with ServeProcess(*SERVE) as first, ServeProcess(*SERVE) as second:
        yield first, second


def byte_exact(fetches: list[Fetch], wire: bytes) -> int:
    """Return how many fetches ended complete with the feed's bytes exactly."""
    return sum(
        1
        for fetch in fetches
        if fetch.result is not None
        and fetch.result.complete
        and encode(fetch.result.packets) == wire
    )


def test_the_docs_configuration_is_valid_and_is_what_runs() -> None:
    assert HAPROXY is not None
    config = docs_config()
    with tempfile.TemporaryDirectory(prefix="haproxy-") as directory:
        path = Path(directory) / "haproxy.cfg"
        path.write_text(config, encoding="utf-8")
        checked = subprocess.run(
            [HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
        )
    said = checked.stdout + checked.stderr
    assert checked.returncode == 0 and "WARNING" not in said and "ALERT" not in said, said
    # What the tests run differs from the docs' block in the addresses alone.
    run = addressed(config, 1111, [2222, 3333]).splitlines()
    docs = config.splitlines()
    assert len(run) == len(docs)
    changed = [(a, b) for a, b in zip(docs, run, strict=True) if a != b]
    assert [(a.split()[:-1], b.split()[:-1]) for a, b in changed] == [
        (["bind"], ["bind"]),
        (["server", "feed1"], ["server", "feed1"]),
        (["server", "feed2"], ["server", "feed2"]),
    ]
    assert [b.split()[-1] for _, b in changed] == [
        "127.0.0.1:1111",
        "127.0.0.1:2222",
        "127.0.0.1:3333",
    ]


@pytest.mark.timeout(120)
def test_200_concurrent_fetches_through_haproxy_are_byte_exact(wire: bytes) -> None:
    front = free_port()
    with ServeProcess(*SERVE) as first, ServeProcess(*SERVE) as second:
        config = addressed(docs_config(), front, [first.port, second.port])
        with Balancer(config) as balancer:
            fetches, seconds = run_fetches(front)
            stats = balancer.servers()
    assert byte_exact(fetches, wire) == CLIENTS
    assert sum(fetch.lost + fetch.cut for fetch in fetches) == 0
    sessions = {name: int(stat["stot"]) for name, stat in stats.items()}
    assert all(count >= CLIENTS // 2 for count in sessions.values()), sessions  # both served
    # Stopped (SIGTERM), each server printed its summary: it counted exactly the
    # connections HAProxy gave it, never a health check, though each ran at least once
    # (HAProxy resets a check's connection before the server could accept it).
    counted = {}
    for name, server in (("feed1", first), ("feed2", second)):
        summary = re.search(r"stopped by SIGTERM: (\d+) connections", "".join(server.log))
        assert summary is not None, "".join(server.log[-5:])
        counted[name] = int(summary.group(1))
    assert counted == sessions
    print(
        f"\nHAProxy: {CLIENTS} concurrent fetches of {PACKETS:,} packets (drop {DROP}) "
        f"through it, all byte-exact, in {seconds:.2f} s; connections per server: {sessions}"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("redispatch", [True, False], ids=["docs", "without-redispatch"])
def test_a_server_killed_mid_run_costs_the_connections_it_held(
    servers: tuple[ServeProcess, ServeProcess], wire: bytes, redispatch: bool
) -> None:
    front = free_port()
    config = addressed(docs_config(), front, [s.port for s in servers])
    if not redispatch:
        # The docs' block without its `option redispatch`: why that line is there.
        config, removed = re.subn(r"^\s*option redispatch\n", "", config, flags=re.MULTILINE)
        assert removed == 1
    victim, survivor = servers
    killed: dict[str, Any] = {}
    with Balancer(config) as balancer:

        def kill() -> None:
            # Before the kill: the connections the victim holds, then SIGKILL.
            killed["held"] = int(balancer.servers()["feed1"]["scur"])
            killed["at"] = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)

        # Which server is feed1: the first of the docs' block, the victim's port.
        assert f"server feed1 127.0.0.1:{victim.port}" in config
        started = time.monotonic()
        fetches, seconds = run_fetches(front, kill)
        stats = balancer.servers()
        down = balancer.said(r"Server packetcore/feed1 is DOWN")
    assert killed, "the kill never came"
    assert survivor.alive() and not victim.alive()
    assert byte_exact(fetches, wire) == CLIENTS
    at = killed["at"] - started
    hurt = sum(1 for fetch in fetches if fetch.lost or fetch.cut)
    lost = sum(fetch.lost for fetch in fetches)
    cut = sum(fetch.cut for fetch in fetches)
    ended = sorted(fetch.ended for fetch in fetches)
    feed1 = stats["feed1"]
    failed, retried, redispatched = (int(feed1[k] or 0) for k in ("econ", "wretr", "wredis"))
    detected = "not yet" if down is None else f"after {down - killed['at']:.1f} s"
    print(
        f"\nHAProxy ({'docs' if redispatch else 'without option redispatch'}): "
        f"{CLIENTS} fetches of {PACKETS:,} packets, feed1 killed at {at:.2f} s holding "
        f"{killed['held']} connections: all byte-exact in {seconds:.2f} s (the last "
        f"{ended[-1] - at:.2f} s after the kill); {hurt} fetches lost a connection "
        f"({lost} repair connections replaced, {cut} streams cut short); {failed} "
        f"connections HAProxy gave feed1 after it died failed ({retried} retries), "
        f"{redispatched} went to feed2 instead; feed1 marked down {detected}"
    )
    assert hurt > 0, "the kill cost nothing: it came too late"
    if redispatch:
        # The cost is the connections the dead server held: every new connection HAProxy
        # gave it was refused and given to the other server, unseen by the fetch.
        assert failed == 0
        assert lost + cut <= killed["held"]
    else:
        # Without it, leastconn gives the dead server (no connections left) every new
        # one until the health check takes it out; haproxy retries each (a second
        # apart), then closes it, and the fetch connects again.
        assert failed > 0
        assert lost + cut > killed["held"]
