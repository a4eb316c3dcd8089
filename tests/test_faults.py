"""The fault models, measured from a raw client: through packetcore.faults.proxy, and in-process in
the server; the fault options of packetcore-proxy and packetcore-serve."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from packetcore.errors import PacketcoreError
from packetcore.faults.model import FaultCounts, FaultPlan, Faults, parse_rate
from packetcore.faults.proxy import ConnectionRecord, Proxy
from packetcore.faults.scenario import load_scenario
from packetcore.faults.shaper import Shaper
from packetcore.io.feeds import synthetic
from packetcore.protocol import (
    decode_info,
    hello_request,
    resend_request,
    stream_all_request,
    subscribe_request,
)
from packetcore.server.server import Server, ServerStats
from packetcore.server.workers import WorkerReport, Workers

import packetcore
from packetcore import encode

pytestmark = pytest.mark.timeout(60)

N = 60_000
PACKET = 17
STREAM = stream_all_request()
WIRE = encode(synthetic(N, 11))
SRC = str(Path(packetcore.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def clean() -> Iterator[Server]:
    """N packets, nothing dropped: stream packet i is sequence i + 1."""
    with Server(synthetic(N, 11), host="127.0.0.1", port=0, drop=0.0) as server:
        yield server


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def ask(port: int, request: bytes = STREAM) -> bytes:
    with connect(port) as sock:
        sock.sendall(request)
        return read_to_eof(sock)


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


def sequences(data: bytes) -> npt.NDArray[np.int64]:
    """Return the sequence of each whole packet in ``data``."""
    rows = np.frombuffer(data, dtype=np.uint8)[: len(data) // PACKET * PACKET]
    return rows.reshape(-1, PACKET)[:, 13:17].copy().view(">i4").ravel().astype(np.int64)


def through(server: Server, faults: Faults, seed: int = 1) -> tuple[bytes, ConnectionRecord]:
    """Stream the whole feed through a proxy with ``faults``; return it and the record."""
    with Proxy(("127.0.0.1", server.port), FaultPlan(faults, seed=seed)) as proxy:
        data = ask(proxy.port)
        assert proxy.wait_idle()
        (record,) = proxy.records
        assert proxy.stats.faults == {k: v for k, v in record.counts.items() if v}
    return data, record


def runs(lost: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Return the lengths of the runs of consecutive sequences in sorted ``lost``."""
    if not lost.size:
        return np.zeros(0, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(lost) != 1)
    ends = np.append(breaks, lost.size - 1)
    starts = np.insert(breaks + 1, 0, 0)
    return ends - starts + 1


# -- each model, from a raw client through the proxy ---------------------------------------


@pytest.mark.parametrize(("loss", "burst"), [(0.05, 1.0), (0.1, 4.0), (0.3, 8.0)])
def test_loss_rate_and_burst_length(clean: Server, loss: float, burst: float) -> None:
    data, record = through(clean, Faults(loss=loss, burst=burst), seed=7)
    got = sequences(data)
    assert np.all(np.diff(got) > 0)  # whole packets dropped, nothing else touched
    lost = np.setdiff1d(np.arange(1, N + 1), got)
    assert record.counts["loss"] == lost.size
    assert abs(lost.size / N - loss) < 0.02 + 0.04 * loss
    mean_burst = runs(lost).mean()
    # Independent losses run 1 / (1 - P) long on average; Gilbert-Elliott's, `burst` long.
    expected = 1 / (1 - loss) if burst == 1 else burst
    assert abs(mean_burst - expected) < 0.1 * expected


def test_duplicates_follow_their_packet_and_are_counted(clean: Server) -> None:
    data, record = through(clean, Faults(duplicate=0.05), seed=3)
    got = sequences(data)
    twice = np.flatnonzero(np.diff(got) == 0)
    assert np.array_equal(np.unique(got), np.arange(1, N + 1))
    assert twice.size == record.counts["duplicate"] == got.size - N
    assert abs(twice.size / N - 0.05) < 0.006


def test_reorders_swap_within_the_span_and_are_counted(clean: Server) -> None:
    data, record = through(clean, Faults(reorder=0.05), seed=4)
    got = sequences(data)
    assert np.array_equal(np.sort(got), np.arange(1, N + 1))
    displaced = np.flatnonzero(got != np.arange(1, N + 1))
    assert np.abs(got - np.arange(1, N + 1)).max() <= 3
    swaps = record.counts["reorder"]
    assert displaced.size == 2 * swaps  # each swap moves two packets
    assert 0.03 < swaps / N < 0.05


def test_corruption_changes_one_byte_of_a_packet(clean: Server) -> None:
    data, record = through(clean, Faults(corrupt=0.01), seed=5)
    assert len(data) == len(WIRE)
    diff = np.frombuffer(data, np.uint8) != np.frombuffer(WIRE, np.uint8)
    per_packet = diff.reshape(-1, PACKET).sum(axis=1)
    assert set(np.unique(per_packet).tolist()) == {0, 1}
    assert int(per_packet.sum()) == record.counts["corrupt"]
    assert abs(per_packet.sum() / N - 0.01) < 0.003


def test_split_writes_small_pieces_byte_exact(clean: Server) -> None:
    data, record = through(clean, Faults(split=50), seed=1)
    assert data == WIRE
    assert record.largest_write == 50
    assert record.writes >= -(-len(WIRE) // 50)  # each chunk is cut on its own
    assert record.applied == []  # shaping, not an injected fault


def test_stall_keeps_the_connection_open_after_n_bytes(clean: Server) -> None:
    with Proxy(("127.0.0.1", clean.port), Faults(stall_after=1000)) as proxy:
        with connect(proxy.port, timeout=0.5) as sock:
            sock.sendall(STREAM)
            got = bytearray()
            with pytest.raises(socket.timeout):
                while data := sock.recv(1 << 16):
                    got += data
        assert bytes(got) == WIRE[:1000]
        assert proxy.wait_idle()
        assert proxy.records[0].outcome == "stall"
        assert proxy.stats.faults == {"stall": 1}


def test_latency_and_jitter_delay_each_answer(clean: Server) -> None:
    faults = Faults(latency=0.2, jitter=0.05)
    with Proxy(("127.0.0.1", clean.port), faults) as proxy, connect(proxy.port) as sock:
        for sequence in (5, 9):
            started = time.monotonic()
            sock.sendall(resend_request(sequence))
            assert read_exact(sock, PACKET) == WIRE[(sequence - 1) * 17 :][:17]
            assert 0.14 <= time.monotonic() - started < 30  # above: only a hang


def test_a_seed_makes_every_connection_reproducible(clean: Server) -> None:
    faults = Faults(loss=0.1, burst=3, duplicate=0.02, corrupt=0.01)
    first, _ = through(clean, faults, seed=42)
    again, _ = through(clean, faults, seed=42)
    other, _ = through(clean, faults, seed=43)
    assert first == again != other


def test_upstream_faults_delay_the_requests(clean: Server) -> None:
    plan = FaultPlan(Faults(latency=0.3, split=1), upstream=True)
    with Proxy(("127.0.0.1", clean.port), plan) as proxy:
        with connect(proxy.port) as sock:
            started = time.monotonic()
            sock.sendall(hello_request() + resend_request(3))
            answer = read_exact(sock, 16 + PACKET)
            assert time.monotonic() - started >= 0.28
        assert answer[16:] == WIRE[2 * 17 : 3 * 17]
    with pytest.raises(ValueError, match="upstream"):
        Proxy(("127.0.0.1", clean.port), FaultPlan(Faults(loss=0.1), upstream=True))


def test_upstream_down_costs_the_connection_not_the_proxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead = spare.getsockname()[1]
    with Proxy(("127.0.0.1", dead)) as proxy:
        for _ in range(2):
            with connect(proxy.port) as sock, contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
        assert proxy.wait_idle()
        assert proxy.stats.upstream_errors == 2
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 2 and f"port {dead}" in lines[0]


@pytest.mark.parametrize(
    "faults",
    [
        Faults(loss=0.2, burst=3, duplicate=0.05, reorder=0.05, split=61),
        Faults(loss=0.1, latency=0.02, jitter=0.01, bandwidth=2e6),
    ],
)
def test_fetch_through_the_proxy_ends_complete(clean: Server, faults: Faults) -> None:
    with Proxy(("127.0.0.1", clean.port), FaultPlan(faults, seed=2)) as proxy:
        # A repair round waits its timeout for what it lost again: keep it short.
        result = packetcore.fetch("127.0.0.1", proxy.port, timeout=0.3, retries=3)
    assert result.complete
    assert encode(result.packets) == WIRE


def test_fetch_through_corruption_ends_cleanly(clean: Server) -> None:
    faults = Faults(corrupt=0.001, loss=0.05)
    with Proxy(("127.0.0.1", clean.port), FaultPlan(faults, seed=2)) as proxy:
        try:
            result = packetcore.fetch("127.0.0.1", proxy.port, timeout=0.5, retries=2)
        except PacketcoreError as exc:
            assert str(exc)  # a clean failure says what went wrong
        else:
            assert result.count > 0
        assert proxy.stats.faults["corrupt"] > 0


# -- the shaper alone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [Faults(loss=0.2, burst=5), Faults(duplicate=0.1, corrupt=0.05, loss=0.1)],
)
def test_seeded_faults_do_not_depend_on_how_the_stream_is_cut(faults: Faults) -> None:
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.integers(0, len(WIRE), 300)).tolist()
    whole = bytes(Shaper(faults, np.random.default_rng(9)).feed(WIRE))
    shaper = Shaper(faults, np.random.default_rng(9))
    pieces = [WIRE[a:b] for a, b in zip([0, *cuts], [*cuts, len(WIRE)], strict=True)]
    split = b"".join(bytes(shaper.feed(p)) for p in pieces) + bytes(shaper.finish())
    assert split == whole


def test_counts_add_up_over_workers() -> None:
    workers = Workers([], lambda *_: ServerStats())
    workers.reports = [
        WorkerReport(0, 1, stats=ServerStats(faults=FaultCounts(loss=2))),
        WorkerReport(1, 2, latest=ServerStats(faults=FaultCounts(loss=3, reset=1))),
        WorkerReport(2, 3),
    ]
    assert workers.total().faults == {"loss": 5, "reset": 1}


@pytest.mark.parametrize(
    ("text", "rate"), [("500", 500.0), ("64k", 64e3), ("1.5M", 1.5e6), ("2MB", 2e6)]
)
def test_rates_take_suffixes(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


def test_faults_refuse_loss_its_bursts_cannot_make() -> None:
    with pytest.raises(ValueError, match="bursts"):
        Faults(loss=0.9, burst=2)
    assert Faults(loss=0.6, burst=2).burst == 2


# -- scenarios --------------------------------------------------------------------------------

SCENARIO = """\
seed = 9
[faults]
latency = 0
[[connection]]
number = 1
close-after = 100
[[connection]]
from = 2
duplicate = 1.0
[[phase]]
after = 3600
loss = 1.0
"""


def test_scenario_chooses_faults_by_connection_and_time(clean: Server, tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO)
    plan = load_scenario(path)
    assert (plan.seed, plan.faults_for(0)) == (9, Faults())
    assert plan.faults_for(1) == Faults(close_after=100)
    assert plan.faults_for(7) == Faults(duplicate=1.0)
    assert plan.faults_for(0, elapsed=4000) == Faults(loss=1.0)
    with Proxy(("127.0.0.1", clean.port), plan) as proxy:
        got = [ask(proxy.port, resend_request(1) + resend_request(2) + b"\x01\x00")]
        got += [ask(proxy.port), ask(proxy.port, resend_request(1) + STREAM)]
    assert got[0] == WIRE[:34] + WIRE
    assert got[1] == WIRE[:100]
    doubled = np.repeat(np.frombuffer(WIRE, np.uint8).reshape(-1, PACKET), 2, axis=0)
    assert got[2] == WIRE[:17] * 2 + doubled.tobytes()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[faults]\nlos = 0.1\n", "unknown fault 'los'"),
        ("[faults]\nloss = 2\n", "probability"),
        ("[[connection]]\nnumber = -1\nloss = 0.1\n", "connection numbers"),
        ("speed = 1\n", "unknown key 'speed'"),
        ("[faults\n", "not valid TOML"),
        # Values of the wrong shape: one line naming the file, never a traceback.
        ("faults = 5\n", "wrong type"),
        ("phase = [1, 2]\n", "wrong type"),
        ("[[connection]]\nnumbers = 5\n", "wrong type"),
        ("[[connection]]\nnumbers = [[1]]\n", "wrong type"),
        ("[faults]\nbandwidth = [1]\n", "wrong type"),
        # Rules valid alone but not together, and packet faults on the client's requests.
        ("[[phase]]\nloss = 0.9\n[[connection]]\nfrom = 0\nburst = 3\n", "bursts"),
        ("upstream-faults = true\n[[phase]]\nafter = 1\nloss = 0.5\n", "upstream-faults"),
    ],
)
def test_bad_scenarios_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_scenario(path)


# -- in-process, on the server --------------------------------------------------------------


def test_server_faults_are_applied_and_counted() -> None:
    plan = FaultPlan(Faults(loss=0.1, burst=2, duplicate=0.01), seed=5)
    with Server(synthetic(N, 11), host="127.0.0.1", port=0, drop=0.0, faults=plan) as server:
        data = ask(server.port, hello_request() + STREAM)
        stats = server.stats
    assert data[:16] == server.index.info_frame  # the info frame passes untouched
    got = sequences(data[16:])
    assert np.unique(got).size == N - stats.faults["loss"]
    assert got.size - np.unique(got).size == stats.faults["duplicate"]
    assert stats.packets_sent == N  # what the server sent, before the network's faults


@pytest.mark.parametrize(
    "faults", [Faults(latency=0.05), Faults(bandwidth=2e6), Faults(split=1000)], ids=str
)
def test_a_timed_stream_from_the_server_still_ends(faults: Faults) -> None:
    # The delivery's task sends what is due, then the end: a stream-all under latency,
    # bandwidth or split writes closes after its last packet (it used to hang there).
    with Server(
        synthetic(N, 11), host="127.0.0.1", port=0, drop=0.0, faults=FaultPlan(faults)
    ) as server:
        started = time.monotonic()
        data = ask(server.port, STREAM)
    assert data == WIRE
    assert time.monotonic() - started >= faults.latency


@pytest.mark.parametrize(("kind", "after"), [("close", 1000), ("reset", 500), ("stall", 300)])
def test_server_ends_connections_where_the_faults_say(kind: str, after: int) -> None:
    plan = FaultPlan(Faults(**{f"{kind}_after": after}))
    with Server(synthetic(N, 11), host="127.0.0.1", port=0, drop=0.0, faults=plan) as server:
        got = bytearray()
        with connect(server.port, timeout=0.5) as sock:
            sock.sendall(STREAM)
            expected = {"close": OSError, "reset": ConnectionResetError, "stall": socket.timeout}
            with contextlib.suppress(expected[kind]):
                while data := sock.recv(1 << 16):
                    got += data
                assert kind == "close"
        assert bytes(got) == WIRE[:after]
        assert server.stats.faults == {kind: 1}


# -- latency on a live feed ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["proxy", "server"])
@pytest.mark.engine_neutral
def test_latency_on_a_live_feed_of_small_chunks_does_not_add_up(where: str) -> None:
    """Every packet of a live subscription arrives the latency after its publication.

    The publisher writes every 0.5 ms: a delivery that held 64 chunks (32 ms of them)
    made its reader wait, and a 100 ms latency through the proxy grew by the second (p50
    370 ms, max 726 ms after 4.5 s at 100,000 packets/s).
    """
    import asyncio

    from packetcore.client.follow import run_follow
    from packetcore.client.session import FetchOptions

    delay, rate, seconds = 0.1, 20_000, 3.0
    on_server = FaultPlan(Faults(latency=delay)) if where == "server" else None
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(
            Server(None, host="127.0.0.1", port=0, live=rate, drop=0.0, seed=3, faults=on_server)
        )
        port = live.port
        if where == "proxy":
            proxy = stack.enter_context(Proxy(("127.0.0.1", port), Faults(latency=delay)))
            port = proxy.port
        with connect(live.port) as sock:
            sock.sendall(hello_request())
            edge = decode_info(read_exact(sock, 16)).last
        # Published 0.5 s after the follow starts: its hello and subscription, however
        # late the faults answer them, are in place before the first packet.
        start = edge + rate // 2
        until = start + int(rate * seconds)
        options = FetchOptions(host="127.0.0.1", port=port, start=start, stop=until, timeout=2.0)
        stats = asyncio.run(asyncio.wait_for(run_follow(options, lambda batch: None), 30))
        if where == "proxy":
            assert proxy.wait_idle()
            writes = max(record.writes for record in proxy.records)
            # The 0.5 ms chunks went out a millisecond's worth at a time, not one by one.
            assert writes < (until - start) // 10, writes
    latency = stats.publication
    assert latency.count == until - start + 1
    low, median, high = latency.percentile(0), latency.percentile(50), latency.max
    # Flat over the seconds: no packet later than the latency and a little.
    assert delay <= low and median < delay + 0.01 and high < delay + 0.05, (low, median, high)


def test_a_delivery_holds_back_many_chunks_within_a_bound_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More than the old 64 chunks are held back at once; past the bytes bound, a sender
    waits until the writer takes the first."""
    import asyncio

    import packetcore.faults.delivery
    from packetcore.faults.delivery import Delivery

    monkeypatch.setattr(packetcore.faults.delivery, "_QUEUE_BYTES", 100_000, raising=False)
    delay = 0.5

    class Writer:
        def __init__(self) -> None:
            self.data = bytearray()
            self.first: float | None = None

        def write(self, data: bytes) -> None:
            self.first = self.first or time.monotonic()
            self.data += data

        async def drain(self) -> None:
            pass

        def can_write_eof(self) -> bool:
            return False

    async def run() -> tuple[float, float, float, bytes]:
        writer = Writer()
        delivery = Delivery(writer, Shaper(Faults(latency=delay)))  # type: ignore[arg-type]
        started = time.monotonic()
        slowest = 0.0
        for at in range(0, 170 * 100, 170):  # 100 chunks, each due 2 ms after the last
            sent = time.monotonic()
            await delivery.send(WIRE[at : at + 170])
            slowest = max(slowest, time.monotonic() - sent)
            await asyncio.sleep(0.002)
        assert writer.first is None
        await delivery.send(WIRE[170 * 100 : 170 * 700])  # the bound is reached
        await delivery.send(WIRE[170 * 700 : 170 * 710])  # this waits for the writer
        waited = time.monotonic() - started
        await delivery.finish("close")
        assert writer.first is not None
        return slowest, waited, writer.first - started, bytes(writer.data)

    slowest, waited, first, data = asyncio.run(run())
    assert slowest < 0.1 and delay <= first and delay - 0.05 <= waited
    assert data == WIRE[: 170 * 710]


# -- the command lines ----------------------------------------------------------------------


def python(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


#: Scenarios a server must refuse: what they name acts in a proxy only, or is nothing.
SCENARIOS = Path(__file__).parent / "data" / "scenarios"
HANG = str(SCENARIOS / "hang.toml")
HANG_ONE = str(SCENARIOS / "hang-one.toml")
UPSTREAM = str(SCENARIOS / "upstream.toml")
UNKNOWN_KEY = str(SCENARIOS / "unknown.toml")

BAD = [
    ("proxy", ["--loss", "2"], "not a probability"),
    ("proxy", ["--bandwidth", "fast"], "not a rate"),
    ("proxy", ["--burst", "0.5"], "burst"),
    ("proxy", ["--split", "0"], "1 or more"),
    ("proxy", ["--latency", "-5"], "0 ms or more"),
    ("proxy", ["--loss", "0.9", "--burst", "2"], "bursts of mean length"),
    ("proxy", ["--scenario", "no-such.toml"], "cannot read"),
    ("proxy", ["--upstream-faults", "--loss", "0.1"], "not with --upstream-faults"),
    ("proxy", ["--close-after", "-1"], "byte count"),
    ("proxy", ["--listen", "4567", "--upstream", "localhost:4567"], "connect to itself"),
    ("serve", ["--corrupt", "x"], "not a number"),
    ("serve", ["--reset-after", "-1"], "byte count"),
    ("serve", ["--duplicate", "0.5", "--scenario", "no-such.toml"], "cannot read"),
    ("serve", ["--scenario", HANG], "hang acts in packetcore-proxy only"),
    ("serve", ["--scenario", HANG_ONE], "hang acts in packetcore-proxy only"),
    ("serve", ["--scenario", UPSTREAM], "upstream-faults acts in packetcore-proxy only"),
    ("serve", ["--scenario", UNKNOWN_KEY], "unknown fault 'freeze'"),
    ("proxy", ["--drop-sequences", "5-3"], "A <= B"),
    ("proxy", ["--drop-resend-sequences", "14,x"], "not a sequence"),
    ("serve", ["--drop-sequences", ""], "not a sequence"),
    ("serve", ["--drop-resend-sequences", "-1"], "not a sequence"),
    ("serve", ["--drop-sequences", "1-2000000"], "at most"),
    ("serve", ["--close-at-request", "0"], "a request number"),
    ("proxy", ["--close-at-request", "two"], "not a whole number"),
    ("proxy", ["--upstream-faults", "--drop-sequences", "3"], "not with --upstream-faults"),
]


@pytest.mark.engine_neutral
def test_bad_fault_values_are_refused_with_one_line() -> None:
    # All at once: each is a process start, and none waits on another.
    processes = []
    for command, args, _ in BAD:
        base = ["--listen", "0", "--upstream", "127.0.0.1:9"] if command == "proxy" else []
        processes.append(python(command, *base, *args))
    for (command, args, message), process in zip(BAD, processes, strict=True):
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 2, (command, args, stderr)
        errors = [line for line in stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and message in errors[0], (command, args, stderr)


def test_proxy_command_forwards_with_faults_and_stops_on_sigint(clean: Server) -> None:
    process = python(
        "proxy", "--host", "127.0.0.1", "--listen", "0", "--upstream",
        f"127.0.0.1:{clean.port}", "--loss", "0.1", "--seed", "3", "-q",
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("packetcore-proxy: listening on port "), line
        port = int(line.split()[4])
        got = sequences(ask(port))
        assert 0.08 * N < N - got.size < 0.12 * N
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130
        assert f"loss {N - got.size}" in stderr.splitlines()[-1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_proxy_command_refuses_a_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = python(
            "proxy", "--host", "127.0.0.1", "--listen", str(port), "--upstream", "127.0.0.1:9"
        )
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.count("\n") == 1 and "packetcore-proxy: error: cannot listen" in stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_command_applies_the_faults(workers: str) -> None:
    process = python(
        "serve", "--host", "127.0.0.1", "--port", "0", "--feed", f"synthetic:{N}",
        "--seed", "11", "--drop", "0", "--close-after", "170", "-q", "--workers", workers,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        port = int(line.split()[4])
        assert ask(port) == WIRE[:170]
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130
        # docs/faults.md: the counts are printed when it stops, on its last line.
        last = stderr.splitlines()[-1]
        assert last.startswith("packetcore-serve: stopped by SIGINT: "), stderr
        assert "; faults: close 1" in last, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_server_with_faults_says_so_when_none_were_injected(workers: str) -> None:
    process = python(
        "serve", "--host", "127.0.0.1", "--port", "0", "--loss", "0.5", "-q",
        "--workers", workers,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        assert "listening on port" in process.stderr.readline()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130
        last = stderr.splitlines()[-1]
        assert last.startswith("packetcore-serve: stopped by SIGINT: "), stderr
        assert "; faults: none injected" in last, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- faults keyed to sequences and requests -------------------------------------------------

BOOK = 14  # the reference book's packets: sequences 1..14


def book_sequences(data: bytes) -> list[int]:
    """Return the sequences of the whole packets in ``data``, in order."""
    return sequences(data).tolist()


def silent_answer(port: int, request: bytes, wait: float = 0.3) -> bytes:
    """Send ``request`` and return what comes within ``wait`` s (the client then gives up)."""
    got = bytearray()
    with connect(port, timeout=wait) as sock:
        sock.sendall(request)
        with contextlib.suppress(socket.timeout):
            while data := sock.recv(1 << 16):
                got += data
    return bytes(got)


@contextlib.contextmanager
def keyed(where: str, faults: Faults) -> Iterator[tuple[int, dict[str, int]]]:
    """Serve the book with ``faults``, in the server itself or through a proxy in front.

    Yields the port to ask and the fault counts.
    """
    plan = FaultPlan(faults, seed=1)
    if where == "server":
        with Server(host="127.0.0.1", port=0, drop=0.0, faults=plan) as server:
            yield server.port, server.stats.faults
    else:
        with (
            Server(host="127.0.0.1", port=0, drop=0.0) as server,
            Proxy(("127.0.0.1", server.port), plan) as proxy,
        ):
            yield proxy.port, proxy.stats.faults


def test_the_shaper_tells_stream_packets_from_repair_answers() -> None:
    from packetcore.protocol import RESEND, RESEND_RANGE, STREAM_ALL, Request

    book = WIRE[: BOOK * PACKET]  # sequences 1..14
    faults = Faults(drop_sequences={5, 14}, drop_resends={5})
    plan = FaultPlan(faults)
    shaper = Shaper(faults, ledger=plan.ledger)
    # A resend of 5 pipelined before a stream: its answer is a repair, the stream's 5 not.
    assert shaper.request(Request(RESEND, 5, 1)) and shaper.request(Request(STREAM_ALL))
    out = bytes(shaper.feed(book[4 * PACKET : 5 * PACKET] + book)) + bytes(shaper.finish())
    assert book_sequences(out) == [*range(1, 5), *range(6, 14)]
    assert shaper.counts == {"drop_resend": 1, "drop_sequence": 2}
    # Another connection of the plan: each was dropped once already, so it passes.
    again = Shaper(faults, ledger=plan.ledger)
    again.request(Request(RESEND_RANGE, 3, 4))
    again.request(Request(STREAM_ALL))
    out = bytes(again.feed(book[2 * PACKET : 6 * PACKET] + book))
    assert book_sequences(out) == [3, 4, 5, 6, *range(1, 15)]
    assert again.own == {}
    assert plan.ledger.dropped("drop_sequence") == {5, 14}
    # A range answers in order: 9 after 10 of range 8+4 is no answer to it.
    ranged = Shaper(Faults(drop_resends={9}))
    ranged.request(Request(RESEND_RANGE, 8, 4))
    out = bytes(ranged.feed(packets_of(book, 8, 10, 9, 9)))
    assert book_sequences(out) == [8, 10, 9, 9] and ranged.own == {}
    first = Shaper(Faults(drop_resends={9}))
    first.request(Request(RESEND_RANGE, 8, 4))
    assert book_sequences(bytes(first.feed(packets_of(book, 8, 9, 9)))) == [8, 9]


def packets_of(book: bytes, *numbers: int) -> bytes:
    return b"".join(book[(n - 1) * PACKET : n * PACKET] for n in numbers)


def test_close_at_request_answers_none_from_that_request_on() -> None:
    from packetcore.protocol import HELLO, RESEND, Request

    shaper = Shaper(Faults(close_at_request=3))
    answered = [shaper.request(Request(call, 1, 1)) for call in (HELLO, RESEND, RESEND, RESEND)]
    assert answered == [True, True, False, False]
    assert shaper.cut and shaper.own == {"close": 1}


@pytest.mark.parametrize("where", ["server", "proxy"])
def test_drop_sequences_drops_the_first_stream_copy_only(where: str) -> None:
    with keyed(where, Faults(drop_sequences={14})) as (port, counts):
        first, second = ask(port), ask(port)
        assert book_sequences(first) == list(range(1, BOOK))  # the tail lost: 13 of 14
        assert book_sequences(second) == list(range(1, BOOK + 1))
        # A resend of it is no stream: never dropped by drop_sequences.
        assert book_sequences(silent_answer(port, resend_request(14))) == [14]
        assert counts == {"drop_sequence": 1}
    # A subscription is a stream too (a finished feed's: all of it, then the end).
    with keyed(where, Faults(drop_sequences={5, 9})) as (port, counts):
        first = book_sequences(ask(port, subscribe_request(3)))
        assert first == [3, 4, 6, 7, 8, *range(10, BOOK + 1)]
        assert book_sequences(ask(port, subscribe_request(3))) == list(range(3, BOOK + 1))
        assert counts == {"drop_sequence": 2}


@pytest.mark.parametrize("where", ["server", "proxy"])
def test_corrupt_sequences_moves_the_first_stream_copy_far_ahead(where: str) -> None:
    with keyed(where, Faults(corrupt_sequences={9})) as (port, counts):
        first, second = ask(port), ask(port)
        # Sequence 9's packet, otherwise whole, claims 9 + 65,536: in its place.
        assert book_sequences(first) == [*range(1, 9), 9 + 65_536, *range(10, BOOK + 1)]
        assert first[8 * PACKET : 8 * PACKET + 13] == second[8 * PACKET : 8 * PACKET + 13]
        assert book_sequences(second) == list(range(1, BOOK + 1))
        assert book_sequences(silent_answer(port, resend_request(9))) == [9]
        assert counts == {"corrupt_sequence": 1}


@pytest.mark.parametrize("where", ["server", "proxy"])
def test_drop_resends_drops_the_first_answer_then_a_new_connection_gets_it(where: str) -> None:
    with keyed(where, Faults(drop_resends={14, 12})) as (port, counts):
        assert book_sequences(ask(port)) == list(range(1, BOOK + 1))  # streams untouched
        assert silent_answer(port, resend_request(14)) == b""
        assert book_sequences(silent_answer(port, resend_request(14))) == [14]
        # A range covering one: the rest of it comes, the listed one the next time.
        assert book_sequences(silent_answer(port, range_request(10, 5))) == [10, 11, 13, 14]
        assert book_sequences(silent_answer(port, range_request(10, 5))) == [10, 11, 12, 13, 14]
        assert counts == {"drop_resend": 2}


@pytest.mark.parametrize("where", ["server", "proxy"])
def test_close_at_request_answers_the_requests_before_it_then_ends(where: str) -> None:
    with keyed(where, Faults(close_at_request=3)) as (port, counts):
        with connect(port) as sock:
            sock.sendall(resend_request(1))
            assert book_sequences(read_exact(sock, PACKET)) == [1]
            # The second and third arrive together: the second answered, then the end.
            sock.sendall(resend_request(2) + resend_request(3) + resend_request(4))
            assert book_sequences(read_to_eof(sock)) == [2]
        # Pipelined all at once, on a new connection: the same.
        assert book_sequences(ask(port, b"".join(resend_request(s) for s in (5, 6, 7, 8)))) == [
            5,
            6,
        ]
        # Nothing more written: the end comes anyway (hellos count).
        answer = ask(port, hello_request() * 3)
        assert len(answer) == 32 and answer[:4] == answer[16:20] == b"PKCI"
        assert counts["close"] == 3


def range_request(start: int, count: int) -> bytes:
    from packetcore.protocol import range_requests

    return range_requests([(start, count)])


KEYED_SCENARIO = """\
[faults]
drop-sequences = [14, "20-22"]
[[phase]]
after = 3600
drop-resends = ["1-3", 9]
[[connection]]
number = 1
close-at-request = 2
[[connection]]
number = 2
drop-resend-sequences = 7
"""


def test_scenario_keys_name_sequences_and_a_request(tmp_path: Path) -> None:
    path = tmp_path / "keyed.toml"
    path.write_text(KEYED_SCENARIO)
    plan = load_scenario(path)
    base = Faults(drop_sequences={14, 20, 21, 22})
    assert plan.faults_for(0) == base
    assert plan.faults_for(0, elapsed=4000) == base.replace(drop_resends={1, 2, 3, 9})
    assert plan.faults_for(1) == base.replace(close_at_request=2)
    assert plan.faults_for(2) == base.replace(drop_resends={7})
    with Server(host="127.0.0.1", port=0, drop=0.0, faults=plan) as server:
        assert book_sequences(ask(server.port)) == list(range(1, BOOK))  # connection 0
        assert book_sequences(ask(server.port, resend_request(1) * 3)) == [1]  # 1: closed at 2
        assert silent_answer(server.port, resend_request(7)) == b""  # 2: 7 dropped once
        assert book_sequences(silent_answer(server.port, resend_request(7))) == [7]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[faults]\ndrop-sequences = ["3-1"]\n', "A <= B"),
        ("[faults]\ndrop-resends = [1.5]\n", "not a sequence"),
        ("[faults]\nclose-at-request = 0\n", "1 or more"),
        ('[faults]\nclose-at-request = "2"\n', "whole numbers"),
    ],
)
def test_bad_keyed_scenarios_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_scenario(path)


def test_serve_command_takes_the_keyed_faults() -> None:
    process = python(
        "serve", "--host", "127.0.0.1", "--port", "0", "--drop", "0", "-q",
        "--drop-sequences", "13-14", "--drop-resend-sequences", "2", "--close-at-request", "4",
    )  # fmt: skip
    try:
        assert process.stderr is not None
        port = int(process.stderr.readline().split()[4])
        assert book_sequences(ask(port)) == list(range(1, 13))
        asked = b"".join(resend_request(s) for s in (1, 2, 2, 3, 4))
        assert book_sequences(ask(port, asked)) == [1, 2]  # 2 dropped once; the 4th closes
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130
        last = stderr.splitlines()[-1]
        assert "faults: close 1, drop_resend 1, drop_sequence 2" in last, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
