"""The server at scale: a log nobody reads, feeds larger than memory."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packetcore.cli.logqueue import DroppingQueueHandler, FdHandler, _Drops
from packetcore.protocol import stream_all_request
from serverutil import recv_all, reference_bytes

import packetcore

SRC = str(Path(packetcore.__file__).resolve().parents[1])
STREAM_ALL = stream_all_request()


def serve(*args: str) -> subprocess.Popen[bytes]:
    """Start ``packetcore serve`` with stdout and stderr as pipes."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
         *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip


def listening_port(process: subprocess.Popen[bytes]) -> int:
    """Read stderr up to the line naming the port, and no further."""
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(rb"listening on port (\d+)", line)
        if found:
            return int(found.group(1))
    pytest.fail("the server never said it was listening")


@pytest.fixture
def stopped_at_end() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- a log stream nobody reads ------------------------------------------------------------


def test_unread_stderr_does_not_freeze_the_server(
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    process = serve("--drop", "0", "-v")
    stopped_at_end.append(process)
    port = listening_port(process)
    # From here on stderr is never read: its pipe (64 KiB on Linux) fills after a few
    # hundred lines, about a hundred clients at three lines each.
    wire = reference_bytes()
    for _ in range(600):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(STREAM_ALL)
            assert recv_all(sock) == wire
    process.send_signal(signal.SIGTERM)
    # Still unread: SIGTERM must end the process even with a writer blocked on the pipe.
    assert process.wait(timeout=20) == 128 + signal.SIGTERM


def test_full_queue_drops_with_a_count_and_says_so() -> None:
    drops = _Drops()
    records: queue.Queue[logging.LogRecord] = queue.Queue(3)
    handler = DroppingQueueHandler(records, drops)
    logger = logging.getLogger("packetcore.test_scale.drops")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(5):
            logger.warning("line %d", i)  # returns at once: nothing reads the queue
    finally:
        logger.removeHandler(handler)
    assert records.qsize() == 3
    read, write = os.pipe()
    try:
        writer = FdHandler(write, drops)
        writer.handle(records.get_nowait())
        writer.handle(records.get_nowait())
        os.close(write)
        write = -1
        with os.fdopen(read, "rb") as pipe:
            read = -1
            lines = pipe.read().decode().splitlines()
    finally:
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)
    assert lines == ["packetcore: 2 log records dropped (the log was not read)", "line 0", "line 1"]
