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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from packetcore.cli.logqueue import DroppingQueueHandler, FdHandler, _Drops
from packetcore.errors import FeedError
from packetcore.feeds import MappedFeed, book, open_feed, synthetic
from packetcore.loss import LossModel
from packetcore.protocol import (
    FeedInfo,
    decode_info,
    hello_request,
    range_request,
    resend_request,
    stream_all_request,
)
from packetcore.server import STREAM_CHUNK, Server
from serverutil import PACKET, exchange, packets_of, recv_all, recv_exact, reference_bytes

import packetcore
from packetcore import decode, encode

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


# -- feeds larger than memory: a mapped .bin ------------------------------------------------


def write_bin(path: Path, count: int, seed: int = 1) -> None:
    """Write a ``count``-packet .bin feed a block at a time, never whole in memory."""
    block = min(count, 1 << 20)
    rows = np.frombuffer(bytearray(encode(synthetic(block, seed=seed))), np.uint8)
    rows = rows.reshape(block, PACKET).copy()
    with path.open("wb") as file:
        for start in range(0, count, block):
            size = min(block, count - start)
            sequences = np.arange(start + 1, start + size + 1, dtype=">i4")
            rows[:size, 13:17] = sequences.view(np.uint8).reshape(size, 4)
            file.write(rows[:size].tobytes())


def test_mapped_feed_is_served_byte_exact(tmp_path: Path) -> None:
    feed = synthetic(3 * STREAM_CHUNK + 11, seed=4)
    wire = encode(feed)
    path = tmp_path / "feed.bin"
    path.write_bytes(wire)
    mapped = MappedFeed(path)
    assert (len(mapped), mapped.first, mapped.last) == (len(feed), 1, len(feed))
    with Server(mapped, host="127.0.0.1", port=0, drop=0.0) as running:
        assert running.info == FeedInfo(1, len(feed))
        assert exchange(running, STREAM_ALL) == wire
        request = resend_request(200) + range_request(7, 2 * STREAM_CHUNK) + resend_request(1)
        assert exchange(running, request) == (
            packets_of(wire, 200) + wire[6 * PACKET : (6 + 2 * STREAM_CHUNK) * PACKET]
            + packets_of(wire, 1)
        )  # fmt: skip
    # The same seed drops the same packets from a mapping as from packets in memory.
    answers = []
    for source in (feed, mapped):
        with Server(source, host="127.0.0.1", port=0, seed=3, drop_resends=0.5) as running:
            answers.append(
                (exchange(running, STREAM_ALL), exchange(running, range_request(1, 5000) * 3))
            )
    assert answers[0] == answers[1]
    assert 0 < len(answers[0][0]) < len(wire)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-3], "not a whole number of 17-byte packets"),
        (lambda b: b"", "holds no packets"),
        (lambda b: b[: 40 * PACKET] + b[41 * PACKET :], "record 40, field 'packetSequence'"),
        (lambda b: b[:-PACKET] + b"\xff" * PACKET, "record 99, field 'symbol'"),
        (lambda b: b"\x00" * 4 + b[4:], "record 0, field 'symbol'"),
    ],
)
def test_mapped_feed_is_checked(
    tmp_path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    path = tmp_path / "feed.bin"
    path.write_bytes(damage(encode(synthetic(100, seed=2))))
    with pytest.raises(FeedError, match=re.escape(message)):
        MappedFeed(path)


def test_open_feed_maps_bin_and_loads_the_rest(tmp_path: Path) -> None:
    feed = synthetic(50, seed=5)
    path = tmp_path / "feed.bin"
    path.write_bytes(encode(feed))
    mapped = open_feed(str(path))
    assert isinstance(mapped, MappedFeed)
    assert mapped.packets() == feed
    assert open_feed("book") == book()


def test_serve_a_50m_packet_bin_feed_quickly_in_little_memory(
    tmp_path: Path, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's resident memory")
    count = 50_000_000
    path = tmp_path / "big.bin"
    write_bin(path, count)
    start = time.monotonic()
    process = serve("--feed", str(path), "--drop", "0", "-q")
    stopped_at_end.append(process)
    port = listening_port(process)
    ready = time.monotonic() - start
    rss = resident_bytes(process.pid)
    # Not a timing test of speed: it guards against reading or copying the whole file,
    # which takes many seconds and ~850 MB.
    assert ready < 3.0, f"listening after {ready:.2f} s"
    assert rss < 150 << 20, f"resident {rss >> 20} MiB"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(range_request(count - 2, 10) + hello_request())
        answer = recv_exact(sock, 3 * PACKET + 16)
    assert decode(answer[: 3 * PACKET]).sequence.tolist() == [count - 2, count - 1, count]
    assert decode_info(answer[3 * PACKET :]) == FeedInfo(1, count)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    print(f"\n50M .bin: listening after {ready:.2f} s, resident {rss / 2**20:.0f} MiB")


def resident_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.fail("no VmRSS")


# -- the loss model, without sockets ----------------------------------------------------------


def test_loss_model_is_seeded_and_per_request() -> None:
    model = LossModel(drop=0.25, seed=7)
    first = LossModel.keep_mask(model.stream_rng(0) or pytest.fail(), 100_000, 0.25)
    again = LossModel.keep_mask(LossModel(drop=0.25, seed=7).stream_rng(0) or pytest.fail(),
                                100_000, 0.25)  # fmt: skip
    second = LossModel.keep_mask(model.stream_rng(1) or pytest.fail(), 100_000, 0.25)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, second)
    assert abs(first.mean() - 0.75) < 0.01
    assert LossModel(drop=0.0).stream_rng(0) is None
    assert LossModel(drop_resends=0.0).resend_rng(0) is None


def test_loss_model_select_keeps_the_last_and_drops_all() -> None:
    wire = encode(synthetic(10, seed=1))
    rows = memoryview(wire)
    model = LossModel(drop=1.0, keep_last=True, seed=1)
    chunk, kept = model.select(rows, model.stream_rng(0), 1.0, keep_last=True)
    assert (bytes(chunk), kept) == (wire[-PACKET:], 1)
    chunk, kept = model.select(rows, None, 1.0)
    assert (bytes(chunk), kept) == (wire, 10)
    with pytest.raises(ValueError, match="drop_resends"):
        LossModel(drop_resends=-0.1)
