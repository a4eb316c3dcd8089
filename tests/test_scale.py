"""The server at scale: a log nobody reads, feeds larger than memory, workers, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
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
from packetcore.io.feeds import MappedFeed, book, open_feed, synthetic
from packetcore.packets import Packets
from packetcore.protocol import (
    FeedInfo,
    decode_info,
    hello_request,
    resend_request,
    stream_all_request,
)
from packetcore.server.loss import LossModel
from packetcore.server.server import STREAM_CHUNK, Server
from serverutil import (
    PACKET,
    exchange,
    packets_of,
    range_request,
    recv_all,
    recv_exact,
    reference_bytes,
)

import packetcore
from packetcore import decode, encode

SRC = str(Path(packetcore.__file__).resolve().parents[1])
STREAM_ALL = stream_all_request()


def serve(*args: str, session: bool = False) -> subprocess.Popen[bytes]:
    """Start ``packetcore serve`` with stdout and stderr as pipes (``session``: its own group)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port", "0",
         *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=session,
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


@pytest.mark.engine_neutral
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
    # Not a timing test of speed: the resident memory guards against reading or copying
    # the whole file (~850 MB); the limit only catches a hang.
    assert ready < 30, f"listening after {ready:.2f} s"
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


# -- --workers N and the event loop ------------------------------------------------------

WORKERS_LINE = re.compile(rb"listening on port (\d+) .* with 2 workers \(.*; pids (\d+), (\d+)\)")


def start_workers(
    *args: str, session: bool = False
) -> tuple[subprocess.Popen[bytes], int, list[int]]:
    """Start a 2-worker server with -q; return it, its port and its workers' pids."""
    process = serve("--workers", "2", "-q", *args, session=session)
    assert process.stderr is not None
    line = process.stderr.readline()
    while line.startswith(b"packetcore-serve: metrics on port"):  # said first, if asked
        line = process.stderr.readline()
    found = WORKERS_LINE.search(line)
    if found is None:
        process.kill()
        process.wait()
        pytest.fail(f"no listening line naming 2 workers: {line!r}")
    return process, int(found.group(1)), [int(found.group(2)), int(found.group(3))]


def fetch_book(port: int) -> bytes:
    """Fetch the book as a base client does: stream-all, then resend what the stream lost."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(STREAM_ALL)
        sock.shutdown(socket.SHUT_WR)
        streamed = recv_all(sock)
    rows = {int.from_bytes(streamed[i + 13 : i + 17], "big"): streamed[i : i + PACKET]
            for i in range(0, len(streamed), PACKET)}  # fmt: skip
    missing = [s for s in range(1, 15) if s not in rows]
    if missing:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"".join(resend_request(s) for s in missing))
            sock.shutdown(socket.SHUT_WR)
            resent = recv_all(sock)
        assert len(resent) == PACKET * len(missing)
        rows.update(
            (int.from_bytes(resent[i + 13 : i + 17], "big"), resent[i : i + PACKET])
            for i in range(0, len(resent), PACKET)
        )
    return b"".join(rows[s] for s in sorted(rows))


def summary_of(stderr: bytes) -> tuple[str, list[int]]:
    """Return the one summary line of a stopped server and its connections per worker."""
    lines = [line for line in stderr.decode().splitlines() if "connections per worker" in line]
    assert len(lines) == 1, stderr
    per_worker = re.search(r"connections per worker: ([-\d, ]+)", lines[0])
    assert per_worker is not None
    return lines[0], [int(n) if n != "-" else -1 for n in per_worker.group(1).split(", ")]


def test_two_workers_serve_concurrent_fetches_spread_and_summed(
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    process, port, _ = start_workers("--seed", "7")
    stopped_at_end.append(process)
    fetches = 200
    with ThreadPoolExecutor(50) as pool:
        books = list(pool.map(fetch_book, [port] * fetches))
    expected = reference_bytes()
    assert all(book_ == expected for book_ in books)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 128 + signal.SIGTERM
    line, per_worker = summary_of(stderr)
    assert "stopped by SIGTERM: 2 workers: " in line
    assert "died" not in line
    # Every fetch is a stream-all connection and maybe a resend connection; both workers
    # took some, and the sum is every connection made.
    total = int(re.search(r"workers: (\d+) connections", line).group(1))  # type: ignore[union-attr]
    assert sum(per_worker) == total
    assert fetches <= total <= 2 * fetches
    assert min(per_worker) > 0, line
    assert f"{fetches} streams" in line


def test_sigint_stops_every_worker(stopped_at_end: list[subprocess.Popen[bytes]]) -> None:
    process, port, pids = start_workers()
    stopped_at_end.append(process)
    assert fetch_book(port) == reference_bytes()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 128 + signal.SIGINT
    line, _ = summary_of(stderr)
    assert "stopped by SIGINT" in line
    assert "1 connections" in line or "2 connections" in line
    for pid in pids:  # reaped by the parent: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.engine_neutral
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_stops_every_worker_as_asked(
    signum: int, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    # Ctrl-C in a terminal signals the parent and every worker at once.  The parent's
    # SIGTERM then reached workers already stopping: some died of it (their loop closed,
    # its handlers gone), some were "stopped unasked", one wrote to a closed wakeup fd;
    # the exit status was 1.  A worker that got the parent's signal stopped as asked.
    for trial in range(4):
        # A live feed, or the book with a fetch made: a worker that has served something.
        process, port, _ = start_workers(*(("--live", "10") if trial % 2 else ()), session=True)
        stopped_at_end.append(process)
        if not trial % 2:
            assert fetch_book(port) == reference_bytes()
        os.killpg(process.pid, signum)
        _, stderr = process.communicate(timeout=20)
        text = stderr.decode()
        assert process.returncode == 128 + signum, text
        assert "died" not in text and "unasked" not in text, text
        assert "Traceback" not in text and "Exception ignored" not in text, text
        line, per_worker = summary_of(stderr)
        assert f"stopped by {signal.Signals(signum).name}: 2 workers" in line
        assert min(per_worker) >= 0, line  # every worker sent its stats
        assert len(text.splitlines()) == 1, text


@pytest.mark.engine_neutral
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_workers_stop_as_asked_on_either_loop(
    loop: str, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    # On uvloop every worker died of its own stop (exit 1, three tracebacks each): the
    # parent's signal wake-up fd, closed in the child, was still the interpreter's, and
    # uvloop, given that fd number again for its own use, could not put it back.
    process, port, _ = start_workers("--loop", loop)
    stopped_at_end.append(process)
    assert fetch_book(port) == reference_bytes()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    text = stderr.decode()
    assert process.returncode == 128 + signal.SIGTERM, text
    assert "Traceback" not in text and "died" not in text, text
    line, per_worker = summary_of(stderr)
    assert "stopped by SIGTERM: 2 workers" in line and min(per_worker) >= 0, line


@pytest.mark.engine_neutral
def test_workers_of_a_killed_parent_stop_and_free_the_port(
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    # SIGKILL to the parent: nobody would ever ask its workers to stop, and they held
    # the port for ever.  A worker sees its parent's end of the request pipe close.
    process, port, pids = start_workers()
    stopped_at_end.append(process)
    assert fetch_book(port) == reference_bytes()
    process.kill()
    process.wait()
    _wait_ended(pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.engine_neutral
def test_a_worker_whose_answer_finds_its_parent_gone_stops_too(
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    # A scrape asks every worker for its counts; the parent killed before worker 0
    # answered: its answer finds the pipe broken, and it stopped listening to the pipe,
    # serving for ever.  (SIGSTOP holds it in that moment.)
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics = probe.getsockname()[1]
    process, _, pids = start_workers("--metrics-port", str(metrics))
    stopped_at_end.append(process)
    os.kill(pids[0], signal.SIGSTOP)
    try:
        with contextlib.suppress(OSError):  # the parent waits for worker 0, then is gone
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=0.5)
        process.kill()
        process.wait()
    finally:
        os.kill(pids[0], signal.SIGCONT)
    _wait_ended(pids)


def _wait_ended(pids: list[int], seconds: float = 20) -> None:
    """Wait until every process of ``pids`` has ended."""
    deadline = time.monotonic() + seconds
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, [_running(pid) for pid in pids]
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie nobody reaped yet has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_worker_is_reported_and_the_other_serves_on(
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    process, port, pids = start_workers()
    stopped_at_end.append(process)
    assert process.stderr is not None
    os.kill(pids[0], signal.SIGKILL)
    line = process.stderr.readline().decode()
    assert f"worker 0 (pid {pids[0]}) died: killed by SIGKILL; 1 worker left" in line
    # The kernel hands every new connection to the surviving worker.
    for _ in range(20):
        assert fetch_book(port) == reference_bytes()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    summary, per_worker = summary_of(stderr)
    assert summary.endswith("; 1 died")
    assert per_worker[0] == -1 and per_worker[1] >= 20


def test_the_parent_ends_when_every_worker_died(
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    process, _, pids = start_workers()
    stopped_at_end.append(process)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    summary, _ = summary_of(stderr)
    assert "all workers died" in summary and summary.endswith("; 2 died")


def test_bind_workers_shares_one_port() -> None:
    from packetcore.server.workers import REUSE_PORT, bind_workers

    sets, port = bind_workers("127.0.0.1", 0, 3, 16)
    try:
        assert len(sets) == 3
        assert {sock.getsockname()[1] for s in sets for sock in s} == {port}
        # SO_REUSEPORT: a socket set per worker; otherwise the one set, shared.
        assert len({id(sock) for s in sets for sock in s}) == (3 if REUSE_PORT else 1)
    finally:
        for sock in {sock for s in sets for sock in s}:
            sock.close()


def test_worker_seeds_are_seed_plus_index_and_worker_0_is_a_single_server() -> None:
    from packetcore.server.workers import worker_seed

    assert [worker_seed(5, w) for w in range(3)] == [5, 6, 7]
    assert worker_seed(None, 2) is None
    # Worker 1's Nth stream drops what a single server seeded 6 drops for its Nth.
    one = LossModel(0.5, seed=worker_seed(5, 1))
    single = LossModel(0.5, seed=6)
    for number in range(3):
        rng_a, rng_b = one.stream_rng(number), single.stream_rng(number)
        assert rng_a is not None and rng_b is not None
        assert np.array_equal(
            LossModel.keep_mask(rng_a, 1000, 0.5), LossModel.keep_mask(rng_b, 1000, 0.5)
        )


def test_loop_uvloop_missing_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetcore.cli.serve import main

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert main(["--loop", "uvloop", "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "packetcore-serve: error: uvloop is not installed: pip install "
        "'packetcore[uvloop]', or use --loop asyncio"
    ]


def test_loop_auto_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    from packetcore.server.workers import loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert loop_factory("auto") == ("asyncio", asyncio.new_event_loop)


@pytest.mark.parametrize("mapped", [False, True], ids=["packets", "mapped"])
def test_uvloop_serves_byte_exact(mapped: bool, tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    from packetcore.server.workers import loop_factory, run_loop

    assert loop_factory("auto")[0] == "uvloop"
    feed = synthetic(50_000, seed=3)
    wire = encode(feed)
    if mapped:
        path = tmp_path / "feed.bin"
        path.write_bytes(wire)
        served: Packets | MappedFeed = MappedFeed(path)
    else:
        served = feed

    async def ask(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        writer.write_eof()
        data = await reader.read()
        writer.close()
        return data

    async def main() -> tuple[str, bytes, bytes]:
        async with Server(served, host="127.0.0.1", port=0, drop=0) as server:
            streamed = await ask(server.port, STREAM_ALL)
            ranged = await ask(server.port, range_request(100, 200))
            return type(asyncio.get_running_loop()).__module__, streamed, ranged

    module, streamed, ranged = run_loop("uvloop", main())
    if isinstance(served, MappedFeed):
        served.close()
    assert module.startswith("uvloop")
    assert streamed == wire
    assert ranged == wire[99 * PACKET : 299 * PACKET]


@pytest.mark.engine_neutral
def test_a_full_log_queue_on_an_unread_pipe_never_holds_the_exit() -> None:
    # The queue fills and the writer blocks on the pipe: leaving gives up on it, and the
    # process's own last writes to stderr (error lines, the final flush) must not block.
    script = (
        "import logging, os, sys\n"
        "from packetcore.cli.logqueue import queued_stderr\n"
        "os.set_blocking(2, False)\n"  # fill the pipe to the brim first
        "try:\n"
        "    while True:\n"
        "        os.write(2, b'x' * 4096)\n"
        "except BlockingIOError:\n"
        "    os.set_blocking(2, True)\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "with queued_stderr(size=8):\n"
        "    for i in range(20000):\n"
        "        logging.getLogger('t').info('line %d %s', i, 'x' * 200)\n"
        "print('after the queue, straight to stderr', file=sys.stderr, flush=True)\n"
        "sys.exit(7)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,  # never read
        env=dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")),
    )
    try:
        assert process.wait(timeout=30) == 7
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_mapped_feed_truncated_while_served_costs_connections_not_the_server(
    tmp_path: Path, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    # Reading a mapped page that a truncation took away kills a process (SIGBUS): the
    # server checks the file's size before each read and drops that answer instead.
    from packetcore.io.feeds import synthetic
    from packetcore.io.formats import write

    feed = tmp_path / "live.bin"
    write(feed, synthetic(200_000, seed=1))  # 3.4 MB: pages past a truncation vanish
    whole = feed.read_bytes()
    # With loss, the engine reads the mapped packets itself to drop some (a syscall
    # reading a vanished page fails; the engine's reading it is a SIGBUS).
    process = serve("--feed", str(feed), "--drop", "0.25")
    stopped_at_end.append(process)
    port = listening_port(process)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(STREAM_ALL)
        assert 0 < len(recv_all(sock)) < len(whole)
    os.truncate(feed, 17 * 5)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(STREAM_ALL)
        with contextlib.suppress(ConnectionError):
            assert len(recv_all(sock)) < len(whole)
    assert process.poll() is None, "the server died"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGTERM


def children(pid: int) -> set[int]:
    """The pids of ``pid``'s children now (its main thread forks the workers)."""
    try:
        return {int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:  # gone, or exiting
        return set()


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="needs /proc/PID/task/TID/children to watch the workers being forked",
)
@pytest.mark.parametrize("forked", [1, 4])
def test_sigterm_while_workers_start_stops_them_all(
    forked: int, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    # A stop signal that arrives while the workers are being forked used to be lost:
    # the parent and every worker kept running.  It is acted on once they have started.
    # The signal goes as soon as the parent has forked ``forked`` of its 8 workers (the
    # event, watched in /proc): the parent's handler is in place by then, so the exit
    # status is exactly 143; the workers its lines name (all 8) are gone when it exits.
    process = serve("--workers", "8", "-q")
    stopped_at_end.append(process)
    seen: set[int] = set()
    deadline = time.monotonic() + 60  # only a hang reaches it
    while len(seen) < forked:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the workers never started"
        seen |= children(process.pid)
        time.sleep(0.001)  # a poll's pace, not a guess: forked workers stay till the end
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    text = stderr.decode()
    assert process.returncode == 128 + signal.SIGTERM, text
    assert "Traceback" not in text and "died" not in text, text
    listed = re.search(r"with 8 workers \(.*; pids ([\d, ]+)\)", text)
    assert listed is not None, text
    pids = {int(pid) for pid in listed.group(1).split(", ")}
    assert len(pids) == 8 and seen <= pids, (seen, text)
    assert text.splitlines()[-1].startswith("packetcore-serve: stopped by SIGTERM: 8 workers: ")
    for pid in pids:  # reaped by the parent before it exited: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_are_bounded() -> None:
    from packetcore.cli.serve import MAX_WORKERS, main

    with pytest.raises(SystemExit) as exc:
        main(["--workers", str(MAX_WORKERS + 1)])
    assert exc.value.code == 2
