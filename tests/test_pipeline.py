"""The fetch as a streaming pipeline, against servers that are broken or hostile.

Each test names the failure it guards against.  The command runs in a subprocess
wherever signals, pipes, stdout or memory are what is tested.
"""

from __future__ import annotations

import array
import fcntl
import functools
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from packetcore.client.fetch import fetch
from packetcore.errors import FetchError
from packetcore.io.feeds import book, synthetic
from packetcore.protocol import FeedInfo, encode_info
from packetcore.server.server import Server
from serverutil import RawServer, _package_root

from packetcore import Packets, encode, to_json
from packetcore.engine import implementation

FAST = ("--timeout", "0.5", "--backoff", "0.02")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=_package_root())


def _command(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "packetcore", "fetch", "--port", str(port), *args]


def _run(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(port, *args), capture_output=True, text=True, env=_env(), timeout=timeout
    )


def _one_line_error(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "packetcore-fetch: error:" in line]
    assert len(lines) == 1, err


def _endless(conn: socket.socket, taken: threading.Event | None = None, batch: int = 1000) -> None:
    # Valid, increasing packets, about a million a second (``batch`` a millisecond), and
    # the connection is never closed.  ``taken`` is set once more was sent than the
    # sockets' buffers can hold: the client is reading.
    conn.recv(64)
    sequence = 1
    sent = 0
    while True:
        time.sleep(0.001)
        data = b"".join(
            struct.pack(">4s1siii", b"ENDL", b"B", 1, 2, s)
            for s in range(sequence, sequence + batch)
        )
        conn.sendall(data)
        sent += len(data)
        if taken is not None and sent > 32 << 20:
            taken.set()
        sequence += batch
        if sequence > 2**31 - 2 * batch:
            sequence = 1


def _random_bytes(conn: socket.socket) -> None:
    # Garbage: some 17-byte chunks decode as packets with random, huge sequences.
    conn.recv(64)
    rng = random.Random(7)
    for _ in range(300):
        conn.sendall(rng.randbytes(1 << 16))


# The command, reporting its own peak RSS (VmHWM) on the way out.  Not the rusage of the
# child: Linux counts in it the memory of the parent it was forked from, up to the exec.
_PEAK = (
    "import atexit, runpy, sys\n"
    "def report():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('peak-rss-kib ' + line.split()[1] + '\\n')\n"
    "atexit.register(report)\n"
    "sys.argv = ['packetcore'] + sys.argv[1:]\n"
    "runpy.run_module('packetcore', run_name='__main__')\n"
)


def _run_measured(port: int, *args: str, timeout: float = 90) -> tuple[int, str, int]:
    """Run the fetch; return (exit status, stderr, its own peak RSS in bytes)."""
    command = [sys.executable, "-c", _PEAK, *_command(port, *args)[3:]]
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)
    lines = proc.stderr.splitlines()
    peaks = [int(line.split()[1]) for line in lines if line.startswith("peak-rss-kib ")]
    assert peaks, proc.stderr
    err = "\n".join(line for line in lines if not line.startswith("peak-rss-kib "))
    return proc.returncode, err, peaks[0] * 1024


# The compiled engine holds packets in 13-byte columns; the pure twin, being Python, in
# far more: each is held to a bound of its own.
RSS_BOUND = (300 if implementation == "cython" else 700) << 20


@pytest.fixture(scope="module")
def big() -> Iterator[Server]:
    feed = synthetic(300_000, seed=5)
    with Server(feed, host="127.0.0.1", port=0, drop=0.25, seed=3) as server:
        yield server


# -- output ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stdout_streams_before_the_fetch_ends() -> None:
    # An extended server that streams the first half of its feed, then stalls for good:
    # the first records reach stdout while the fetch still runs.
    feed = synthetic(2000, seed=1)
    wire = encode(feed)
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        request = conn.recv(2)
        if request[:1] == b"\x03":
            conn.sendall(encode_info(FeedInfo(1, len(feed))))
            request = conn.recv(2)
        if request[:1] == b"\x01":
            conn.sendall(wire[: 17 * 1000])
        release.wait(30)

    with RawServer(stall) as server:
        proc = subprocess.Popen(
            _command(server.port, "-o", "-", "--timeout", "20", "--format", "ndjson"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
        )  # fmt: skip
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert proc.poll() is None, "the fetch had ended before its first record was read"
        assert json.loads(first) == feed[:1].to_records()[0]
        release.set()
        proc.kill()
        proc.communicate()


@pytest.mark.timeout(60)
def test_a_reader_that_leaves_early_is_a_normal_end(big: Server) -> None:
    # `fetch -o - | head`: as for `yes | head` (and a follow), no error, exit 0.
    proc = subprocess.Popen(
        _command(big.port, "-o", "-"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(), text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1000)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(30) == 0, err
    assert "Traceback" not in err and "error" not in err, err
    assert err.strip().count("\n") == 0 and "the reader closed it" in err, err
    assert "300000 packets" not in err  # no success summary


@pytest.mark.timeout(60)
def test_closed_stdout_is_one_line(big: Server) -> None:
    command = " ".join(_command(big.port, "-o", "-"))
    proc = subprocess.run(
        ["bash", "-c", f"exec >&-; {command}"], capture_output=False, stderr=subprocess.PIPE,
        text=True, env=_env(), timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    _one_line_error(proc.stderr)
    assert "stdout" in proc.stderr


@pytest.mark.timeout(60)
def test_a_full_disk_stops_the_fetch_at_once(big: Server) -> None:
    started = time.monotonic()
    proc = _run(big.port, "-o", "/dev/full")
    assert proc.returncode == 1
    _one_line_error(proc.stderr)
    assert "No space left on device" in proc.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("where", ["proc", "dangling", "parent-is-file"])
def test_unwritable_outputs_fail_before_fetching(where: str, tmp_path: Path) -> None:
    # No server runs on the port: the output's error must come first, before connecting.
    if where == "proc":
        output = "/proc/packetcore-output.json"
    elif where == "dangling":
        link = tmp_path / "link.json"
        link.symlink_to(tmp_path / "no" / "such" / "dir" / "out.json")
        output = str(link)
    else:
        (tmp_path / "file").write_text("x")
        output = str(tmp_path / "file" / "out.json")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = _run(port, "-o", output, "--retries", "0")
    assert proc.returncode == 1
    _one_line_error(proc.stderr)
    assert "cannot write the output" in proc.stderr
    assert "connect" not in proc.stderr


# -- interrupts --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_stops_the_fetch(signum: int, tmp_path: Path) -> None:
    # A server that never ends its stream: only the signal can stop the fetch.
    output = tmp_path / "output.json"
    output.write_bytes(b"previous\n")
    taken = threading.Event()
    # Eight times the pace: the fetch sets how soon the sockets' buffers are passed, not
    # the making of the packets (2.5 s of the test at 1000 a millisecond).
    with RawServer(functools.partial(_endless, taken=taken, batch=8000)) as server:
        proc = subprocess.Popen(
            _command(server.port, "-o", str(output), "--protocol", "base"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        try:
            # The signal goes once the fetch is taking packets (it has read more than the
            # sockets can buffer) into its temporary output; only the signal can end it
            # then: a hang is caught by the timeout.
            assert taken.wait(30), "the fetch never read the stream"
            assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
            assert proc.poll() is None
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=30)
        finally:
            # A fetch left running by a failure would take the endless stream, and grow,
            # for the rest of the session: the server's thread ends with its connection.
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 128 + signum
    _one_line_error(err)
    assert "interrupted" in err
    assert output.read_bytes() == b"previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json"]


# -- endless and hostile servers ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_deadline_ends_an_endless_stream_in_bounded_memory(tmp_path: Path) -> None:
    output = tmp_path / "output.json"
    with RawServer(_endless) as server:
        started = time.monotonic()
        code, err, peak = _run_measured(
            server.port, "-o", str(output), "--protocol", "base", "--deadline", "3"
        )
        took = time.monotonic() - started
    assert code == 3, err
    assert took < 3 + 30  # the deadline, then saving what arrived: only a hang reaches it
    assert "deadline" in err
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MiB"
    saved = json.loads((tmp_path / "output.json.partial").read_bytes())
    assert saved and [r["packetSequence"] for r in saved[:3]] == [1, 2, 3]
    assert not output.exists()


@pytest.mark.timeout(120)
def test_huge_sequences_in_base_mode_keep_memory_small(tmp_path: Path) -> None:
    # A legal feed of two packets at the very top of the sequence space, at 50 % loss:
    # memory follows the packets held, not the span of sequences.
    feed = Packets([b"HUGE"] * 2, [b"B"] * 2, [1, 2], [3, 4], [2**31 - 2, 2**31 - 1])
    with Server(feed, host="127.0.0.1", port=0, drop=0.5, seed=2) as server:
        output = str(tmp_path / "o.json")
        code, err, peak = _run_measured(
            server.port, "-o", output, "--protocol", "base", "--max-passes", "8", *FAST
        )
    assert code == 3, err
    _one_line_error(err)
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MiB"


@pytest.mark.timeout(120)
def test_a_random_bytes_server_keeps_memory_small(tmp_path: Path) -> None:
    with RawServer(_random_bytes) as server:
        code, err, peak = _run_measured(server.port, "-o", str(tmp_path / "o.json"),
                                        "--max-passes", "3", "--retries", "1", *FAST)  # fmt: skip
    assert code in (1, 3), err
    _one_line_error(err)
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MiB"


# -- no packet, dropped resends ----------------------------------------------------------------


def test_no_packet_at_all_is_a_fetch_error(tmp_path: Path) -> None:
    def silent_close(conn: socket.socket) -> None:
        conn.recv(16)

    with RawServer(silent_close) as server:
        with pytest.raises(FetchError):
            fetch(port=server.port, timeout=0.3, backoff=0.01, retries=1, max_passes=3)
        proc = _run(server.port, "-o", str(tmp_path / "o.json"), "--retries", "1",
                    "--max-passes", "3", *FAST)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    _one_line_error(proc.stderr)
    assert not (tmp_path / "o.json.partial").exists()


def test_extended_falls_back_to_passes_when_resends_are_all_dropped() -> None:
    with Server(host="127.0.0.1", port=0, drop=0.25, drop_resends=1.0, seed=4) as server:
        result = fetch(port=server.port, timeout=0.5, backoff=0.01)
    assert result.complete and result.packets == book() and result.mode == "extended"
    assert result.passes > 1


# -- slices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["extended", "base"])
@pytest.mark.parametrize(("start", "stop"), [(1, 1), (14, 14), (3, 9), (None, 5), (10, None)])
def test_slices(protocol: str, start: int | None, stop: int | None) -> None:
    with Server(host="127.0.0.1", port=0, drop=0.25, seed=6) as server:
        result = fetch(port=server.port, protocol=protocol, start=start, stop=stop,
                       timeout=0.5, backoff=0.01)  # fmt: skip
    low, high = start or 1, stop or 14
    assert result.complete, result.reason
    assert result.packets == book()[low - 1 : high]


def test_a_slice_beyond_the_feed_fails_cleanly() -> None:
    with (
        Server(host="127.0.0.1", port=0, drop=0.0, seed=6) as server,
        pytest.raises(FetchError, match="slice"),
    ):
        fetch(port=server.port, protocol="extended", start=20, stop=30, timeout=0.5)


def test_a_slice_above_127_in_base_mode() -> None:
    feed = synthetic(400, seed=2)
    with Server(feed, host="127.0.0.1", port=0, drop=0.3, seed=6) as server:
        result = fetch(port=server.port, protocol="base", start=200, stop=260,
                       timeout=0.5, backoff=0.01)  # fmt: skip
    assert result.complete and result.packets == feed[199:260]


# -- the streamed document ---------------------------------------------------------------------


def test_streamed_json_is_the_document_byte_for_byte(big: Server, tmp_path: Path) -> None:
    output = tmp_path / "output.json"
    proc = _run(big.port, "-o", str(output))
    assert proc.returncode == 0, proc.stderr
    assert output.read_bytes() == to_json(synthetic(300_000, seed=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json"]


# -- every format, through the command ---------------------------------------------------------


def _formats() -> list[str]:
    from packetcore.io.formats import FORMATS

    return list(FORMATS)


@pytest.mark.parametrize("form", _formats())
def test_every_format_from_its_extension(form: str, tmp_path: Path) -> None:
    if form == "parquet":
        pytest.importorskip("pyarrow")
    from packetcore.io.formats import read

    suffix = {"ndjson": "jsonl"}.get(form, form)
    output = tmp_path / f"output.{suffix}"
    with Server(host="127.0.0.1", port=0, drop=0.25, seed=9) as server:
        proc = _run(server.port, "-o", str(output), *FAST)
    assert proc.returncode == 0, proc.stderr
    assert read(output) == book()


@pytest.mark.parametrize("form", ["json", "ndjson", "csv", "bin"])
def test_an_incomplete_fetch_saves_its_partial_in_the_chosen_format(
    form: str, tmp_path: Path
) -> None:
    from packetcore.io.formats import read

    feed = synthetic(5000, seed=4)
    wire = encode(feed)

    def half(conn: socket.socket) -> None:
        # Extended, but the stream stops half-way and no range is ever answered.
        request = conn.recv(2)
        if request[:1] == b"\x03":
            conn.sendall(encode_info(FeedInfo(1, len(feed))))
            request = conn.recv(2)
        if request[:1] == b"\x01":
            conn.sendall(wire[: 17 * 2500])

    output = tmp_path / "output.dat"
    with RawServer(half) as server:
        proc = _run(server.port, "-o", str(output), "--format", form, "--retries", "1",
                    "--max-passes", "2", *FAST)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "2501-5000" in proc.stderr
    assert not output.exists()
    assert read(tmp_path / "output.dat.partial", form) == feed[:2500]


def test_the_fetch_command_imports_only_what_it_uses() -> None:
    # No server code, no progress bar without a terminal, no pyarrow unless writing parquet.
    # A whole (failing) fetch: nothing listens on port 1.
    probe = (
        "import sys; from packetcore.cli.fetch import main; "
        "main(['--port', '1', '--retries', '0', '-o', '-', '-q']); "
        "print(' '.join(sorted(m for m in sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), check=True
    ).stdout.split()
    for module in ("packetcore.server.server", "packetcore.io.feeds", "tqdm", "pyarrow", "orjson"):
        assert module not in loaded
    assert "packetcore.client.fetch" in loaded


def test_a_base_slice_past_the_feeds_end_says_the_end_was_inferred() -> None:
    with Server(host="127.0.0.1", port=0, drop=0.25, seed=6) as server:
        inferred = fetch(port=server.port, protocol="base", start=10, stop=500, timeout=0.5,
                         backoff=0.01)  # fmt: skip
        known = fetch(port=server.port, protocol="base", start=2, stop=9, timeout=0.5,
                      backoff=0.01)  # fmt: skip
    assert inferred.complete and inferred.packets == book()[9:]
    assert inferred.last_inferred and "inferred" in inferred.summary()
    assert known.complete and not known.last_inferred and "inferred" not in known.summary()


def _wait_until_full(pipe: IO[bytes], deadline: float) -> float:
    """Wait until nobody-reads ``pipe`` is full (its writer blocked); return when it was."""
    fd = pipe.fileno()
    full = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) - select.PIPE_BUF  # short of one atomic write
    held = array.array("i", [0])
    while True:
        fcntl.ioctl(fd, termios.FIONREAD, held)
        if held[0] >= full:
            return time.monotonic()
        assert time.monotonic() < deadline, f"the pipe never filled: {held[0]} bytes"
        time.sleep(0.005)  # a poll's pace: a full pipe stays full


@pytest.mark.timeout(60)
@pytest.mark.parametrize("deadline", [None, 1])
def test_a_reader_that_stops_reading_cannot_hold_the_fetch(
    deadline: int | None, big: Server
) -> None:
    # stdout is a pipe nobody reads: the writer blocks on it for good.  SIGTERM must
    # still end the fetch at once (it used to flush into the full pipe for ever).
    # The signal goes once the pipe is full and, with a deadline, once the deadline has
    # passed (the fetch started before the pipe filled): the fetch then waits to save
    # into the pipe, and would give up by itself DEADLINE_GRACE later, with status 1.
    extra = ("--deadline", str(deadline)) if deadline else ()
    proc = subprocess.Popen(
        _command(big.port, "-o", "-", *extra), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    full = _wait_until_full(proc.stdout, time.monotonic() + 30)
    if deadline:
        time.sleep(max(0.0, full + deadline - time.monotonic()))  # the deadline has passed
    assert proc.poll() is None  # still waiting on the reader: that is allowed
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)  # only a hang reaches it: without a deadline, nothing else ends it
    assert proc.returncode == 143
    _one_line_error(proc.stderr.read().decode())


def _scattered(conn: socket.socket) -> None:
    # An extended server announcing the whole sequence space, then sending valid packets
    # with random sequences across it, for ever.
    rng = random.Random(3)
    conn.recv(2)
    conn.sendall(encode_info(FeedInfo(1, 2**31 - 1)))
    while True:
        conn.sendall(b"".join(
            struct.pack(">4s1siii", b"SCAT", b"S", 1, 1, rng.randrange(1, 2**31))
            for _ in range(2000)
        ))  # fmt: skip
        time.sleep(0.002)


@pytest.mark.timeout(60)
def test_a_deadline_over_scattered_sequences_is_kept(tmp_path: Path) -> None:
    # Saving what arrived walks the whole sequence space: in few steps, not 8192.
    with RawServer(_scattered) as server:
        started = time.monotonic()
        code, err, peak = _run_measured(
            server.port, "-o", str(tmp_path / "o.json"), "--deadline", "1.5"
        )
        took = time.monotonic() - started
    assert code == 3, err
    assert took < 1.5 + 30  # only a hang reaches it: "in few steps" is shown by the exit
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MiB"
    saved = json.loads((tmp_path / "o.json.partial").read_bytes())
    sequences = [r["packetSequence"] for r in saved]
    assert len(saved) > 1000 and sequences == sorted(set(sequences))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loaded", ["packetcore.cli.signals", "packetcore.client.session"])
def test_ctrl_c_while_starting_is_one_line(loaded: str) -> None:
    # Numpy and the engine load once the command runs: a Ctrl-C then (it used to print a
    # KeyboardInterrupt traceback of twenty lines) ends in one line like any other.
    # The signal goes once the module ``loaded`` has been imported (-X importtime says
    # so on stderr): the command line's package, numpy still to load; or the fetch's own.
    def silent(conn: socket.socket) -> None:
        conn.recv(16)
        time.sleep(30)

    with RawServer(silent) as server:
        command = _command(server.port, "-o", "-")
        proc = subprocess.Popen(
            [command[0], "-X", "importtime", *command[1:]], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == loaded:
                break
        else:
            pytest.fail(f"{loaded} was never imported")
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    err = "".join(line for line in rest.splitlines(True) if not line.startswith("import time:"))
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err


def test_a_hello_given_up_on_may_still_open_the_stream() -> None:
    from packetcore.protocol import ResponseFramer

    packets = encode(book()[:2])
    late = ResponseFramer()
    late.expect()
    late.give_up()
    items = late.feed(encode_info(FeedInfo(1, 14))[:7])
    items += late.feed(encode_info(FeedInfo(1, 14))[7:] + packets)
    assert items[0] == FeedInfo(1, 14) and b"".join(bytes(i) for i in items[1:]) == packets
    never = ResponseFramer()
    never.expect()
    never.give_up()
    assert b"".join(bytes(i) for i in never.feed(packets)) == packets  # a base server
    assert never.due == 0


# The compiled engine only: the twin's sparse store is Python, minutes at this size (its
# behaviour on scattered sequences is covered by the store's model tests on both).
@pytest.mark.c_extension
@pytest.mark.timeout(60)
def test_a_server_far_out_of_order_is_no_feed(tmp_path: Path) -> None:
    # Base mode against scattered sequences: every other packet is out of order and in
    # doubt.  Past a bound the connection is dropped as no feed: memory stays bounded.
    def scattered_base(conn: socket.socket) -> None:
        rng = random.Random(5)
        conn.recv(16)
        for _ in range(120):  # 240,000 packets: past the bound of 100,000 doubts
            conn.sendall(b"".join(
                struct.pack(">4s1siii", b"SCAT", b"B", 1, 1, rng.randrange(1, 2**31))
                for _ in range(2000)
            ))  # fmt: skip

    with RawServer(scattered_base) as server:
        code, err, peak = _run_measured(
            server.port, "-o", str(tmp_path / "o.json"), "--protocol", "base",
            "--max-passes", "1", "--retries", "0", *FAST,
        )  # fmt: skip
    assert code == 3, err
    _one_line_error(err)
    assert "out of sequence order" in err
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MiB"


def test_write_takes_packets_only(tmp_path: Path) -> None:
    from packetcore.io.formats import write

    with pytest.raises(TypeError, match="Packets"):
        write(tmp_path / "x.json", [1, 2])  # type: ignore[arg-type]


# The command with a grace past the deadline of GRACE s instead of DEADLINE_GRACE's 5 s:
# the same bound, tested in a fifth of the wait.
GRACE = 1.0
_SHORT_GRACE = (
    "import runpy, sys\n"
    "import packetcore.client.fetch\n"
    f"packetcore.client.fetch.DEADLINE_GRACE = {GRACE}\n"
    "sys.argv = ['packetcore'] + sys.argv[1:]\n"
    "runpy.run_module('packetcore', run_name='__main__')\n"
)


@pytest.mark.timeout(60)
def test_a_deadline_holds_against_a_reader_that_stops_reading(big: Server) -> None:
    # stdout is a pipe nobody reads, nobody closes: past the deadline, saving what
    # arrived may wait on it, but only for a while.
    command = [sys.executable, "-c", _SHORT_GRACE, *_command(big.port, "-o", "-")[3:]]
    proc = subprocess.Popen(
        [*command, "--deadline", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(),
    )  # fmt: skip
    try:
        code = proc.wait(timeout=1 + GRACE + 30)  # deadline + grace; the rest catches a hang
    finally:
        proc.kill()
    assert code == 1  # it gave up by itself (the message below), not by the timeout
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _one_line_error(err)
    assert "took nothing" in err and "past the deadline" in err
