"""Following a live feed: packetcore.follow() and packetcore-fetch --follow.

A scripted live server (:class:`LiveStub`) plays the protocol's live part exactly where
a test needs it: packets it never sends on a subscription (tail losses), subscriptions
it cuts after so many bytes (mid-packet), a feed that ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from packetcore.client.follow import FollowStats, follow
from packetcore.io.feeds import synthetic
from packetcore.packets import Packets
from packetcore.protocol import (
    HELLO,
    RESEND_RANGE,
    SUBSCRIBE,
    FeedInfo,
    RequestFramer,
    encode_info,
)
from packetcore.server.server import Server
from serverutil import PACKET, RawServer, collect

import packetcore
from packetcore.engine import encode

TIMEOUT = 20.0


class LiveStub:
    """A live server of ``total`` packets, scripted.

    ``published`` (settable) is how far the feed has published; ``never`` lists
    sequences no subscription ever sends; ``cuts`` lists, per subscription, the bytes
    after which it is cut (mid-packet when not a multiple of 17); ``ended``: once
    everything is published and written, subscriptions close (the feed's end);
    ``delay``: seconds before each range request is answered (repairs behind);
    ``shift``: a range request is answered with the packets ``shift`` sequences on (wrong).
    """

    def __init__(self, total: int, *, published: int | None = None, never: set[int] | None = None,
                 cuts: list[int] | None = None, ended: bool = True,
                 delay: float = 0.0, shift: int = 0) -> None:  # fmt: skip
        self.total = total
        self.delay = delay
        self.shift = shift
        self.wire = encode(synthetic(total, seed=7))
        self.published = total if published is None else published
        self.never = never or set()
        self.cuts = list(cuts or [])
        self.ended = ended
        self.subscriptions: list[int] = []
        self.ranges = 0
        self.lock = threading.Lock()
        #: Set once a subscription was written sequence ``mark`` or beyond.
        self.mark = 800
        self.sent = threading.Event()
        self.server = RawServer(self.serve)

    def __enter__(self) -> LiveStub:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def port(self) -> int:
        return self.server.port

    def packets(self, start: int, stop: int) -> bytes:
        return self.wire[(start - 1) * PACKET : (stop - 1) * PACKET]

    def serve(self, conn: socket.socket) -> None:
        framer = RequestFramer()
        while data := conn.recv(1 << 16):
            for request in framer.feed(data):
                if request.call_type == HELLO:
                    conn.sendall(encode_info(FeedInfo(1, self.published)))
                elif request.call_type == RESEND_RANGE:
                    self.ranges += 1
                    time.sleep(self.delay)
                    stop = min(request.start + request.count, self.published + 1)
                    start = request.start + self.shift
                    conn.sendall(self.packets(start, max(stop + self.shift, start)))
                elif request.call_type == SUBSCRIBE:
                    self._subscribe(conn, request.start)
                    return

    def _subscribe(self, conn: socket.socket, start: int) -> None:
        with self.lock:
            self.subscriptions.append(start)
            cut = self.cuts.pop(0) if self.cuts else None
        sent = 0
        at = max(start, 1)
        while not self.server.stopped.is_set():
            top = self.published
            if at <= top:
                chunk = b"".join(
                    self.packets(s, s + 1) for s in range(at, top + 1) if s not in self.never
                )
                at = top + 1
                if cut is not None and sent + len(chunk) >= cut:
                    conn.sendall(chunk[: cut - sent])
                    conn.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
                    )  # a reset, as a connection killed on the way
                    return
                conn.sendall(chunk)
                sent += len(chunk)
                if top >= self.mark:
                    self.sent.set()
            elif self.ended and top >= self.total:
                return  # the feed's final packet written: end of file
            else:
                time.sleep(0.002)
        # A server that stops resets its subscriptions: end of file would say the feed ended.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")


def assert_exactly(packets: Packets, first: int, last: int) -> None:
    assert packets.sequence.tolist() == list(range(first, last + 1))


def test_follow_is_exported_lazily() -> None:
    assert packetcore.follow is follow
    assert "follow" in packetcore.__all__


def test_a_feed_that_ends_with_tail_losses_is_followed_to_its_last() -> None:
    # 2000 packets; the subscription never sends the last three nor a few inside.
    with LiveStub(2000, never={5, 6, 700, 1998, 1999, 2000}) as stub:
        packets, stats = collect(stub.port)
    assert_exactly(packets, 1, 2000)
    expected = stub.wire
    assert encode(packets) == expected
    assert stats.packets == 2000 and stats.delivered == 2000
    # Three gaps, the tail among them (more is repaired if a loaded machine delays the
    # subscription past the tail's quiet time: the hello then says it all exists).
    assert 1 <= stats.gaps <= 3 and stats.repaired >= 6
    assert stats.reason == "the feed ended"
    assert stats.reconnects == 0
    assert 0 < stats.repair_p50_ms <= stats.repair_p99_ms <= stats.repair_max_ms
    assert stats.gaps_repaired == stats.gaps


def test_tail_loss_on_a_live_feed_is_repaired_from_the_hello() -> None:
    # Published up to 100 and then nothing for a while: the last two never came on the
    # subscription; only the hello says they exist.
    with LiveStub(200, published=100, never={99, 100}) as stub:

        async def run() -> tuple[list[int], FollowStats]:
            got: list[int] = []
            async with follow("127.0.0.1", stub.port, timeout=2.0) as feed:
                async for batch in feed:
                    got += batch.sequence.tolist()
                    if got[-1] == 100:
                        stats = feed.stats
                        assert stats.published == 100
                        stub.published = 200  # the feed goes on
                    if got[-1] == 200:
                        break
            return got, feed.stats

        got, stats = asyncio.run(asyncio.wait_for(run(), TIMEOUT))
    assert got == list(range(1, 201))
    assert stats.gaps >= 1 and stats.repaired >= 2  # 99 and 100 came from the repair
    assert stats.lag >= 0 and stats.max_lag >= 2
    assert stats.reason == "stopped"


def test_resume_from_a_sequence_until_another() -> None:
    with LiveStub(3000, never={1500}) as stub:
        packets, stats = collect(stub.port, start=1001, until=2000)
    assert_exactly(packets, 1001, 2000)
    assert encode(packets) == stub.packets(1001, 2001)
    assert stub.subscriptions[0] == 1001
    assert stats.reason == "until reached" and stats.gaps >= 1


@pytest.mark.parametrize("cut", [17 * 40 + 5, 17 * 40, 3])
def test_reconnect_in_the_middle_of_a_packet_loses_and_repeats_nothing(cut: int) -> None:
    with LiveStub(5000, never={2, 4000}, cuts=[cut, cut, cut]) as stub:
        packets, stats = collect(stub.port, backoff=0.0)
    assert encode(packets) == stub.wire
    assert stats.reconnects == 3
    # Each resubscription starts past what arrived or was asked for.
    assert stub.subscriptions == sorted(stub.subscriptions)
    # Three cut, one to the end, one from past the end that confirms it.
    assert len(stub.subscriptions) == 5 and stub.subscriptions[-1] == 5001


def test_ten_killed_subscriptions_lose_and_repeat_nothing() -> None:
    cuts = [17 * 997 + 11 * k for k in range(1, 11)]  # about 1000 packets each
    never = set(range(3, 30_000, 101))
    with LiveStub(30_000, never=never, cuts=cuts) as stub:
        packets, stats = collect(stub.port, backoff=0.0)
    assert len(packets) == 30_000
    assert encode(packets) == stub.wire
    assert stats.reconnects == 10
    assert stats.packets == 30_000 and stats.delivered == 30_000


def test_a_silent_subscription_is_replaced() -> None:
    # The first subscription sends nothing after 10 packets while the server publishes
    # on: the repair connection brings what the hello says was published meanwhile, and
    # the subscription is replaced after the timeout.
    with LiveStub(1000, published=500) as stub:
        stalls = [True]
        original = stub._subscribe

        def subscribe(conn: socket.socket, start: int) -> None:
            if stalls and stalls.pop():
                stub.subscriptions.append(start)
                conn.sendall(stub.packets(1, 11))
                stub.server.stopped.wait(TIMEOUT)
                return
            original(conn, start)

        stub._subscribe = subscribe  # type: ignore[method-assign]
        later = threading.Timer(1.0, setattr, (stub, "published", 1000))
        later.start()
        packets, stats = collect(stub.port, timeout=0.3)
        later.join()
    assert_exactly(packets, 1, 1000)
    assert stats.reconnects == 1
    # The stalled one, then its replacement from the first sequence still needed; maybe
    # one from past the end that confirmed it (when the replacement ended first).
    assert stub.subscriptions[:2] == [1, 501]
    assert stub.subscriptions[2:] in ([], [1001])


def test_no_extension_is_a_fetch_error() -> None:
    silent = RawServer(lambda conn: conn.recv(10) and time.sleep(1))
    with silent as server, pytest.raises(packetcore.FetchError, match="extension hello"):
        collect(server.port, timeout=0.2)


def test_stats_are_readable_while_following() -> None:
    with LiveStub(1000, published=300, ended=False) as stub:

        async def run() -> list[int]:
            seen: list[int] = []
            feed = follow("127.0.0.1", stub.port, timeout=2.0)
            async for _batch in feed:
                seen.append(feed.stats.packets)
                if feed.stats.delivered == 300:
                    break
            await feed.aclose()
            assert feed.stats.delivered == 300
            return seen

        seen = asyncio.run(asyncio.wait_for(run(), TIMEOUT))
    assert seen[-1] == 300 and seen == sorted(seen)


# The command line


def _fetch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore.cli.fetch", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_cli_follow_to_stdout_ends_at_until() -> None:
    with LiveStub(400, never={10, 400}) as stub:
        process = _fetch("--port", str(stub.port), "--follow", "--until", "300", "-o", "-",
                         "--format", "ndjson")  # fmt: skip
        out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["packetSequence"] for r in records] == list(range(1, 301))
    assert "300 packets in order" in err and "gaps" in err and "reconnects" in err


@pytest.mark.parametrize("form", ["json", "parquet"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_follow_with_a_finished_file(
    tmp_path: Path, form: str, signum: signal.Signals
) -> None:
    if form == "parquet":
        pytest.importorskip("pyarrow")
    target = tmp_path / f"out.{form}"
    with LiveStub(100_000, published=500, ended=False) as stub:
        process = _fetch("--port", str(stub.port), "--follow", "-o", str(target))
        deadline = time.monotonic() + TIMEOUT
        # Wait until it has followed what is published (the stub saw its range asks or
        # its subscription), then let the feed go on a little.
        while not stub.subscriptions and time.monotonic() < deadline:
            time.sleep(0.01)
        stub.published = 800
        stub.sent.wait(TIMEOUT)  # everything written to the subscription
        process.send_signal(signum)
        _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    got = packetcore.read(target)
    assert got.sequence.tolist() == list(range(1, len(got) + 1))
    assert 500 <= len(got) <= 800  # what arrived before the signal, all of it in order
    assert f"stopped by {signum.name}" in err
    assert not [p for p in os.listdir(tmp_path) if p != target.name]


def test_cli_follow_refuses_the_base_protocol_in_one_line() -> None:
    process = _fetch("--follow", "--protocol", "base")
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2
    assert err.strip().count("\n") == 0 and "--follow" in err


def test_cli_follow_without_a_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = tmp_path / "out.json"
    process = _fetch("--port", str(port), "--follow", "--retries", "0", "-o", str(target))
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1
    assert err.strip().count("\n") == 0 and "cannot connect" in err
    assert not target.exists() and not os.listdir(tmp_path)


def test_until_is_the_same_option_as_to() -> None:
    from packetcore.cli.fetch import build_parser

    parser = build_parser()
    assert parser.parse_args(["--until", "5"]).stop == 5
    assert parser.parse_args(["--to", "5"]).stop == 5


# Against the live server (packetcore-serve --live)


class CuttingProxy:
    """A loopback proxy that resets the Nth subscription after ``cuts[N]`` bytes.

    A subscription is told by its client's first request bytes (a hello, then callType
    5); every other connection passes through untouched.
    """

    def __init__(self, port: int, cuts: list[int]) -> None:
        self.upstream = port
        self.cuts = list(cuts)
        self.cut = 0
        self.lock = threading.Lock()
        self.server = RawServer(self.serve)

    def __enter__(self) -> CuttingProxy:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def port(self) -> int:
        return self.server.port

    def serve(self, conn: socket.socket) -> None:
        # One thread, both directions: a close must not wait on a recv blocked elsewhere
        # (the reset would never leave).
        with socket.create_connection(("127.0.0.1", self.upstream)) as up:
            budget: int | None = None
            decided = False
            head = b""
            sent = 0
            while not self.server.stopped.is_set():
                ready, _, _ = select.select([conn, up], [], [], 0.05)
                if conn in ready:
                    data = conn.recv(1 << 16)
                    if not data:
                        return
                    if not decided:
                        head += data
                        decided = len(head) >= 3  # the request after the hello
                        with self.lock:
                            if decided and head[2] == SUBSCRIBE and self.cuts:
                                budget = self.cuts.pop(0)
                    up.sendall(data)
                if up in ready:
                    data = up.recv(1 << 16)
                    if not data:
                        return
                    if budget is not None and sent + len(data) >= budget:
                        conn.sendall(data[: budget - sent])
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                        with self.lock:
                            self.cut += 1
                        return
                    conn.sendall(data)
                    sent += len(data)


def _live(count: int, rate: float, drop: float) -> Server:
    return Server(synthetic(count, seed=3), host="127.0.0.1", port=0, drop=drop, seed=11,
                  live=rate)  # fmt: skip


def test_a_live_feed_with_loss_is_followed_to_its_end() -> None:
    with _live(3000, 20_000, 0.3) as server:
        packets, stats = collect(server.port)
        expected = encode(server.feed)
    assert encode(packets) == expected
    assert stats.reason == "the feed ended" and stats.gaps > 100
    assert stats.repaired >= stats.gaps and stats.reconnects == 0


def test_ten_killed_subscriptions_of_a_live_server_lose_and_repeat_nothing() -> None:
    # Each subscription is reset a little over 1000 packets in, mid-packet.
    cuts = [17 * 1000 + 5 + k for k in range(10)]
    with _live(40_000, 40_000, 0.05) as server, CuttingProxy(server.port, cuts) as proxy:
        packets, stats = collect(proxy.port, backoff=0.0)
        expected = encode(server.feed)
    assert proxy.cut == 10
    assert stats.reconnects == 10
    assert len(packets) == 40_000 and encode(packets) == expected


def test_cli_follow_resumes_from_a_sequence(tmp_path: Path) -> None:
    target = tmp_path / "tail.ndjson"
    with _live(2000, 10_000, 0.2) as server:
        process = _fetch("--port", str(server.port), "--follow", "--from", "1500",
                         "-o", str(target))  # fmt: skip
        _, err = process.communicate(timeout=TIMEOUT)
        expected = server.feed[1499:]
    assert process.returncode == 0, err
    got = packetcore.read(target)
    assert encode(got) == encode(expected)
    assert "501 packets in order (last 2000)" in err and "the feed ended" in err


def test_cli_follow_to_stdout_shows_records_while_it_runs() -> None:
    with LiveStub(10_000, published=300, ended=False) as stub:
        process = _fetch("--port", str(stub.port), "--follow", "-o", "-", "--format", "ndjson")
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(300)]  # while the follow runs
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    sequences = [json.loads(line)["packetSequence"] for line in lines + rest.splitlines()]
    assert sequences == list(range(1, 301))
    assert "stopped by SIGINT" in err


def test_cli_follow_that_fails_saves_what_it_wrote_as_partial(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    stub = LiveStub(1000, published=100, ended=False)
    stub.mark = 100
    with stub:
        process = _fetch("--port", str(stub.port), "--follow", "--retries", "1",
                         "--backoff", "0", "-q", "-o", str(target))  # fmt: skip
        stub.sent.wait(TIMEOUT)
    # The server is gone: the subscription ends and cannot be opened again.
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1, err
    assert err.strip().count("\n") == 0 and ".partial" in err
    assert not target.exists()
    got = packetcore.read(tmp_path / "out.json.partial")
    assert 0 < len(got) <= 100
    assert got.sequence.tolist() == list(range(1, len(got) + 1))


def test_a_window_bound_holds_the_subscription_back_and_loses_nothing() -> None:
    # Every 50th packet lost and each repair 2 ms late: the window above the first gap
    # would take the whole feed; bounded at 300 packets, the subscription is closed when
    # it is full and opened again from the first sequence still needed.
    never = set(range(50, 5001, 50))
    with LiveStub(5000, never=never, delay=0.002) as stub:
        packets, stats = collect(stub.port, window=300)
    assert_exactly(packets, 1, 5000)
    assert 250 < stats.max_window <= 300
    assert len(stub.subscriptions) > 10 and stub.subscriptions == sorted(stub.subscriptions)
    assert stats.reason == "the feed ended" and stats.reconnects == 0


def test_a_subscription_repeating_the_same_packet_fails_in_one_line() -> None:
    class Repeating(LiveStub):
        def _subscribe(self, conn: socket.socket, start: int) -> None:
            self.subscriptions.append(start)
            while not self.server.stopped.is_set():
                conn.sendall(self.packets(1, 2) * 50)
                time.sleep(0.001)

    stub = Repeating(1000, published=500, ended=False)
    with stub, pytest.raises(packetcore.FetchError, match="nothing new 2 times in a row"):
        collect(stub.port, timeout=0.2, retries=1, backoff=0.0)
    assert stub.subscriptions == [1, 2, 2]  # the first brought 1, then nothing new


def test_a_repair_connection_answering_wrong_sequences_fails_in_one_line() -> None:
    stub = LiveStub(1000, published=500, never={50}, ended=False, shift=7)
    with stub, pytest.raises(packetcore.FetchError, match="did not answer sequence 50 asked"):
        collect(stub.port, retries=2, backoff=0.0)
    assert stub.ranges >= 3


def test_cli_follow_to_stdout_is_ndjson_unless_a_format_is_given() -> None:
    with LiveStub(300) as stub:
        plain = _fetch("--port", str(stub.port), "--follow", "-o", "-", "-q")
        lines, err = plain.communicate(timeout=TIMEOUT)
        array = _fetch("--port", str(stub.port), "--follow", "-o", "-", "-q", "--format", "json")
        whole, err2 = array.communicate(timeout=TIMEOUT)
    assert plain.returncode == 0 and array.returncode == 0, err + err2
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["packetSequence"] for r in records] == list(range(1, 301))
    assert [r["packetSequence"] for r in json.loads(whole)] == list(range(1, 301))


def _ignored_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return int(line.split()[1], 16)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("follows", [True, False])
def test_sigint_ignored_at_start_stays_ignored(follows: bool) -> None:
    # A shell starts `cmd &` with SIGINT ignored: the command must not take it back.
    connected = threading.Event()

    def silent(conn: socket.socket) -> None:
        connected.set()
        conn.recv(10)
        time.sleep(TIMEOUT)

    stub = LiveStub(10_000, published=300, ended=False) if follows else RawServer(silent)
    with stub:
        args = ["--port", str(stub.port), "-o", "-", "-q", "--timeout", str(TIMEOUT)]
        process = subprocess.Popen(
            [sys.executable, "-m", "packetcore.cli.fetch", *args, *(["--follow"] * follows)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
        assert process.stdout is not None
        if follows:
            process.stdout.readline()  # following: its handlers are in place
        else:
            assert connected.wait(TIMEOUT)  # fetching: its handlers are in place
        ignored = _ignored_signals(process.pid)
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
    assert ignored & (1 << (signal.SIGINT - 1)), err


def test_the_stats_of_a_failed_follow_give_the_failure_as_reason() -> None:
    async def run(port: int) -> FollowStats:
        feed = follow("127.0.0.1", port, timeout=0.2)
        with pytest.raises(packetcore.FetchError) as failure:
            async for _ in feed:
                pass
        assert feed.stats.reason == str(failure.value)
        return feed.stats

    silent = RawServer(lambda conn: conn.recv(10) and time.sleep(1))
    with silent as server:
        stats = asyncio.run(run(server.port))
    assert "extension hello" in stats.reason


def test_lag_is_counted_from_where_the_follow_started() -> None:
    with LiveStub(1000) as stub:
        packets, stats = collect(stub.port, start=900, until=950)
    assert_exactly(packets, 900, 950)
    assert stats.max_lag == 101 and stats.lag == 1000 - 950  # not 1000 from sequence 0


@pytest.mark.parametrize("option", [["--confidence", "1e-9"], ["--max-passes", "3"], ["--strict"]])
def test_cli_follow_refuses_options_that_do_nothing_in_one_line(option: list[str]) -> None:
    process = _fetch("--port", "1", "--follow", "-o", "-", *option)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2
    assert err.strip().count("\n") == 0 and f"{option[0]} does not apply to --follow" in err


def test_cli_follow_of_a_server_gone_for_good_is_one_line_with_retries_at_debug(
    tmp_path: Path,
) -> None:
    stub = LiveStub(1000, published=100, ended=False)
    stub.mark = 100
    with stub:
        process = _fetch("--port", str(stub.port), "--follow", "--retries", "2",
                         "--backoff", "0", "-o", str(tmp_path / "out.json"))  # fmt: skip
        stub.sent.wait(TIMEOUT)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1
    assert err.strip().count("\n") == 0, err  # no line per retry without -v


class Resetting(LiveStub):
    """A live stub whose first ``resets`` connections are reset before any answer."""

    resets = 1
    done = 0  # connections reset so far

    def serve(self, conn: socket.socket) -> None:
        with self.lock:
            reset = self.done < self.resets
            self.done += reset
        if not reset:
            super().serve(conn)
            return
        conn.recv(16)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")


def test_a_first_connection_reset_is_retried() -> None:
    with Resetting(500) as stub:
        packets, stats = collect(stub.port, backoff=0.0)
    assert_exactly(packets, 1, 500)
    assert stub.done == 1 and stats.reason == "the feed ended"


def test_first_connections_reset_past_retries_say_so_in_one_line() -> None:
    stub = Resetting(500)
    stub.resets = 100
    with stub, pytest.raises(packetcore.FetchError, match="before the extension hello's an"):
        collect(stub.port, backoff=0.0, retries=2)
    assert stub.done == 3


def test_cli_follow_to_stdout_ends_normally_when_the_reader_leaves() -> None:
    with _live(1_000_000, 100_000, 0.0) as server:
        process = _fetch("--port", str(server.port), "--follow", "-o", "-")
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["packetSequence"] == 1
        process.stdout.close()  # `| head -1`
        err = process.stderr.read()
        process.wait(TIMEOUT)
    assert process.returncode == 0, err
    assert err.strip().count("\n") == 0 and err.endswith("[the reader closed stdout]\n"), err


def test_cli_follow_stopped_with_a_reader_that_takes_nothing_ends_promptly() -> None:
    with _live(2_000_000, 2_000_000, 0.0) as server:
        process = _fetch("--port", str(server.port), "--follow", "-o", "-")
        assert process.stdout is not None
        process.stdout.readline()  # following, then nothing more is read
        process.send_signal(signal.SIGINT)
        # Not until the reader took a backlog of up to 1M packets, which it never does:
        # waiting on it would hang, and only a hang reaches the timeout.
        process.wait(TIMEOUT)
        assert process.stderr is not None
        err = process.stderr.read()
    assert process.returncode in (0, 1)  # 1: what was still to be written was dropped
    assert err.strip().count("\n") == 0, err


def test_the_summary_quotes_the_time_and_reason_it_is_given() -> None:
    # The command quotes the wall time the user waited and its own reason (the reader
    # left), without writing them into the stats the follow keeps.
    stats = FollowStats(packets=3, delivered=3, seconds=1.0, reason="until reached")
    assert stats.summary("out.json").endswith("1.00 s -> out.json [until reached]")
    line = stats.summary("stdout", seconds=2.5, reason="the reader closed stdout")
    assert line.endswith("2.50 s -> stdout [the reader closed stdout]")
    assert (stats.seconds, stats.reason) == (1.0, "until reached")


def test_a_follow_that_never_connected_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    # Stopped (here by its deadline) while it retried a server that is not there, a
    # follow replaced the user's file with an empty one and exited 0.
    target = tmp_path / "keep.ndjson"
    target.write_text('{"precious": 1}\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "packetcore", "fetch", "--port", str(port), "--follow",
         "--deadline", "1", "--retries", "50", "-o", str(target)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert target.read_text() == '{"precious": 1}\n'
    assert f"no connection to 127.0.0.1:{port} was made" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
