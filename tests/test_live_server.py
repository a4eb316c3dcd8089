"""The live server over real loopback sockets: the clock, subscriptions, base clients, CLI."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from packetcore.cli.serve import main as serve_main
from packetcore.faults.model import FaultPlan, Faults
from packetcore.io.feeds import MappedFeed, book, open_feed, synthetic
from packetcore.protocol import (
    FeedInfo,
    decode_info,
    hello_request,
    resend_request,
    stream_all_request,
    subscribe_request,
)
from packetcore.server.connection import Connection
from packetcore.server.live import (
    BLOCK,
    DEFAULT_MAX_LAG,
    TICK,
    LiveFeed,
    Publisher,
    Subscription,
)
from packetcore.server.loss import LossModel
from packetcore.server.server import Server, feed_source
from packetcore.server.stats import ServerStats
from packetcore.server.wire_index import WireIndex
from serverutil import (
    PACKET,
    ServeProcess,
    connect,
    exchange,
    range_request,
    recv_all,
    recv_exact,
    wait_until,
)

import packetcore
from packetcore import Packets, decode, encode


def live_server(
    rate: float,
    feed: Packets | MappedFeed | None = None,
    *,
    drop: float = 0.0,
    seed: int = 5,
    until: int | None = None,
    max_lag: float = DEFAULT_MAX_LAG,
    idle_timeout: float = 30.0,
) -> Server:
    """Return a live server on a free loopback port (not started)."""
    return Server(
        feed, host="127.0.0.1", port=0, live=rate, drop=drop, seed=seed, until=until,
        max_lag=max_lag, idle_timeout=idle_timeout,
    )  # fmt: skip


def hello(server: Server | ServeProcess) -> FeedInfo:
    """Return the server's answer to a hello on a fresh connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(hello_request())
        return decode_info(recv_exact(sock, 16))


def subscribe(server: Server, start: int) -> socket.socket:
    """Return a connection that subscribed from ``start``."""
    sock = connect(server)
    sock.sendall(subscribe_request(start))
    return sock


def read_sequences(sock: socket.socket, until: int) -> bytes:
    """Read whole packets until one with sequence ``until`` or above has arrived."""
    data = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            pytest.fail(f"the subscription closed after {len(data) // PACKET} packets")
        data += chunk
        whole = len(data) // PACKET * PACKET
        if whole and int.from_bytes(data[whole - 4 : whole], "big") >= until:
            return bytes(data[:whole])


# -- the clock -------------------------------------------------------------------------------


def test_publication_is_a_function_of_the_clock() -> None:
    feed = LiveFeed(1000.0, until=50)
    assert feed.info == FeedInfo(1, 0)  # not started: nothing published, last = first - 1
    feed.start(t0=100.0)
    assert feed.published_rows(99.0) == 0
    assert feed.published_rows(100.0) == 1  # the first packet at t0
    assert feed.published_rows(100.0095) == 10
    assert feed.published_rows(100.010) == 11
    assert feed.published_rows(500.0) == 50  # until
    assert feed.due(10) == pytest.approx(100.010)
    twin = LiveFeed(1000.0, until=50)
    twin.start(t0=100.0)  # another process with the same t0 publishes alike
    assert [twin.published_rows(100 + k / 7000) for k in range(400)] == [
        feed.published_rows(100 + k / 7000) for k in range(400)
    ]


def test_synthetic_blocks_are_regenerated_identically() -> None:
    feed = LiveFeed(1.0, seed=11)
    first = bytes(feed.rows(BLOCK - 5, BLOCK + 5))  # across two blocks
    for number in range(2, 12):  # evict them from the cache
        feed.rows(number * BLOCK, number * BLOCK + 1)
    assert bytes(feed.rows(BLOCK - 5, BLOCK + 5)) == first
    assert bytes(LiveFeed(9.0, seed=11).rows(BLOCK - 5, BLOCK + 5)) == first
    assert bytes(LiveFeed(1.0, seed=12).rows(BLOCK - 5, BLOCK + 5)) != first
    packets = decode(first)
    assert packets.sequence.tolist() == list(range(BLOCK - 4, BLOCK + 6))
    assert set(packets.buysellindicator.tolist()) <= {b"B", b"S"}
    assert encode(packets) == first


@pytest.mark.parametrize("steps", [0, 1, 3, 100])
def test_a_block_built_ahead_step_by_step_is_the_block_made_at_once(steps: int) -> None:
    # The publisher builds the next block a column at each wake-up; wanted before it is
    # done (a resend, a catch-up), the rest is built at once.  Either way, the same bytes.
    at_once, ahead = (
        LiveFeed(1.0, seed=11, until=3 * BLOCK + 7),
        LiveFeed(1.0, seed=11, until=3 * BLOCK + 7),
    )
    for row in (0, BLOCK, 2 * BLOCK + 1, 3 * BLOCK):  # the last: nothing after it to build
        for _ in range(steps):
            ahead.prepare(row)
        number = row // BLOCK + 1
        span = (number * BLOCK, min((number + 1) * BLOCK, 3 * BLOCK + 7))
        assert bytes(ahead.rows(*span)) == bytes(at_once.rows(*span))
    assert decode(bytes(ahead.rows(0, 3 * BLOCK + 7))).sequence[-1] == 3 * BLOCK + 7


def test_a_feed_with_an_end_publishes_what_the_endless_feed_does() -> None:
    # The same seed, the same packets: the last block of a feed that ends (cut short)
    # holds what the endless feed's holds there.
    until = BLOCK + 1234
    ended = LiveFeed(1.0, seed=5, until=until)
    endless = LiveFeed(1.0, seed=5)
    assert bytes(ended.rows(0, until)) == bytes(endless.rows(0, until))
    assert len(ended.rows(BLOCK, 2 * BLOCK)) == 1234 * PACKET


def test_bad_live_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        LiveFeed(0.0)
    with pytest.raises(ValueError, match="until"):
        Server(book(), live=10.0, until=0)
    with pytest.raises(ValueError, match="until needs a live feed"):
        Server(book(), until=5)
    with pytest.raises(ValueError, match="live must be"):
        Server(book(), live=-1.0)
    assert Server(book(), live=0.0).live is None  # 0: today's finished feed


def test_a_server_chooses_its_feed_source_once(caplog: pytest.LogCaptureFixture) -> None:
    # One function decides what a feed is served as; a source given is served as it is
    # (shared by the workers of one port), and only a live one has a publisher.
    index = WireIndex(book())
    clock = LiveFeed(100.0, index, until=10)
    assert feed_source(index) == (index, None)
    assert feed_source(clock) == (clock, clock)
    assert feed_source(clock, live=5.0)[0] is clock  # its own rate, its own clock
    built, published = feed_source(index, live=50.0, until=12)
    assert isinstance(built, LiveFeed) and published is built and built.source is index
    assert (built.rate, built.final) == (50.0, 12)
    plain, none = feed_source(book())
    assert isinstance(plain, WireIndex) and none is None and plain.count == 14
    endless, _ = feed_source(None, live=10.0)
    assert isinstance(endless, LiveFeed) and endless.source is None and endless.endless
    assert isinstance(feed_source(None)[0], WireIndex)  # the reference book
    # Both kinds answer what the server's start-up line says of them.
    caplog.set_level("INFO", logger="packetcore.server")
    for feed, line in (
        (index, "serving 14 packets (sequences 1..14) on 127.0.0.1"),
        (LiveFeed(100.0, index), "serving live at 100 packets/s (replay, sequences 1..14) on"),
        (LiveFeed(7.5), "serving live at 7.5 packets/s (synthetic, sequences 1..(endless)) on"),
    ):
        with Server(feed, host="127.0.0.1", port=0) as server:
            assert (server.live is None) == (feed is index)
        assert any(r.getMessage().startswith(line) for r in caplog.records), line


# -- hello and subscriptions -----------------------------------------------------------------


def test_hello_last_grows_with_time() -> None:
    with live_server(2000.0) as server:
        first = hello(server)
        assert first.first == 1 and first.last >= 0
        wait_until(lambda: server.published >= first.last + 20)
        later = hello(server)
        assert later.last >= first.last + 20
        assert later.last <= server.published


def test_subscription_gets_every_packet_in_order_and_closes_at_until() -> None:
    with live_server(50_000.0, until=6000) as server:
        with subscribe(server, 1) as sock:
            data = recv_all(sock)  # EOF after the final packet: the feed ended
        assert data == bytes(server.index.rows(0, 6000))
        assert server.published == 6000
        wait_until(lambda: server.stats.active == 0)
        assert server.stats.subscriptions == 1
        assert server.stats.packets_sent == 6000


def test_subscription_drops_the_seeded_pattern() -> None:
    count = 9000
    with live_server(60_000.0, until=count, drop=0.3, seed=21) as server:
        received = [decode(exchange(server, subscribe_request(1))).sequence for _ in range(2)]
        wire = bytes(server.index.rows(0, count))
    patterns = []
    for number, sequences in enumerate(received):
        rng = LossModel(0.3, seed=21).subscription_rng(number)
        assert rng is not None
        keep = LossModel.keep_mask(rng, count, 0.3)
        assert sequences.tolist() == (np.flatnonzero(keep) + 1).tolist()
        patterns.append(keep)
    assert not np.array_equal(patterns[0], patterns[1])  # each subscription its own
    assert 0.25 < 1 - patterns[0].mean() < 0.35
    # A later subscription drops what an earlier one from sequence 1 would have there.
    with live_server(60_000.0, until=count, drop=0.3, seed=21) as server:
        late = decode(exchange(server, subscribe_request(5000))).sequence
    assert late.tolist() == [s for s in (np.flatnonzero(patterns[0]) + 1).tolist() if s >= 5000]
    assert wire  # the bytes: checked in the resend test


def test_subscription_from_a_published_sequence_gets_the_backlog_then_follows() -> None:
    with live_server(5000.0) as server:
        wait_until(lambda: server.published >= 600)
        published = server.published
        with subscribe(server, 100) as sock:
            data = read_sequences(sock, published + 200)
        sequences = decode(data).sequence
        assert sequences[0] == 100
        assert np.array_equal(sequences, np.arange(100, 100 + len(sequences)))
        assert data == bytes(server.index.rows(99, 99 + len(sequences)))


def test_subscription_from_a_future_sequence_waits_for_it() -> None:
    with live_server(3000.0) as server:
        start = server.published + 300
        with subscribe(server, start) as sock:
            data = read_sequences(sock, start + 50)
        assert decode(data).sequence[0] == start
        assert server.published >= start + 50


def test_replay_of_a_mapped_file_ends_after_its_last_packet(tmp_path: Path) -> None:
    path = tmp_path / "feed.bin"
    wire = encode(synthetic(3000, seed=4))
    path.write_bytes(wire)
    feed = open_feed(str(path))
    with live_server(40_000.0, feed=feed) as server:
        assert server.index.mapped
        with subscribe(server, 1) as sock:
            assert recv_all(sock) == wire
        assert server.published == 3000
        # Subscribing after the end: the backlog, then the close.
        assert exchange(server, subscribe_request(2990)) == wire[2989 * PACKET :]
        assert exchange(server, subscribe_request(5000)) == b""


def test_replay_of_the_book_with_until() -> None:
    with live_server(500.0, feed=book(), until=9) as server:
        assert decode(exchange(server, subscribe_request(1))).sequence.tolist() == list(
            range(1, 10)
        )
        assert hello(server) == FeedInfo(1, 9)


def test_subscribe_on_a_finished_feed_sends_it_and_closes() -> None:
    with Server(book(), host="127.0.0.1", port=0, drop=0.0) as server:
        assert exchange(server, subscribe_request(3)) == encode(book())[2 * PACKET :]


# -- base clients on a live server -----------------------------------------------------------


def test_stream_all_sends_what_is_published_and_closes() -> None:
    with live_server(4000.0) as server:
        wait_until(lambda: server.published >= 200)
        before = server.published
        data = exchange(server, stream_all_request())
        after = server.published
        sequences = decode(data).sequence
        assert before <= len(sequences) <= after
        assert np.array_equal(sequences, np.arange(1, len(sequences) + 1))


def test_resends_answer_published_packets_only() -> None:
    with live_server(20.0, feed=synthetic(300, seed=2)) as server:
        wait_until(lambda: server.published >= 3)
        assert server.published < 200
        # 200 is not published yet: answered as a sequence the feed lacks (nothing).
        data = exchange(server, resend_request(200) + resend_request(2) + range_request(1, 250))
        sequences = decode(data).sequence.tolist()
        assert sequences[0] == 2
        assert sequences[1:] == list(range(1, len(sequences)))
        assert len(sequences) - 1 <= server.published < 200
        assert server.stats.bad_requests == 1


def test_resends_match_the_subscription_byte_for_byte() -> None:
    count = 4000
    with live_server(40_000.0, until=count, drop=0.5, seed=3) as server:
        streamed = exchange(server, subscribe_request(1))
        resent = exchange(server, range_request(1, count))
        single = exchange(server, b"".join(resend_request(s) for s in (1, 17, 255)))
    kept = decode(streamed).sequence - 1
    rows = np.frombuffer(resent, dtype=np.uint8).reshape(count, PACKET)
    assert streamed == rows[kept].tobytes()
    assert single == rows[[0, 16, 254]].tobytes()


# -- pacing and slow subscribers -------------------------------------------------------------


def test_a_slow_subscriber_is_disconnected_while_another_keeps_up() -> None:
    rate, count = 400_000.0, 600_000
    with live_server(rate, until=count, max_lag=0.05) as server:
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        slow.connect(("127.0.0.1", server.port))
        slow.sendall(subscribe_request(1))  # and never reads
        started = time.monotonic()
        with subscribe(server, 1) as fast:
            view = memoryview(bytearray(1 << 20))
            total = 0
            disconnected_at = None
            while n := fast.recv_into(view):
                total += n
                if disconnected_at is None and server.stats.slow_disconnects:
                    disconnected_at = total // PACKET
        elapsed = time.monotonic() - started
        assert server.stats.slow_disconnects == 1
        assert server.stats.summary().endswith(", 2 subscriptions (1 too slow)")
        assert disconnected_at is not None and disconnected_at < count
        assert total == count * PACKET  # the fast one got all, closed at the end
        # Paced by the clock, not by the slow reader (about count / rate seconds; the
        # slow one was cut off mid-feed, above): the limit only catches a hang.
        assert elapsed < count / rate + 30
        # The slow one was cut off with a reset, never an end of file ("the feed ended").
        with pytest.raises(ConnectionResetError):
            while slow.recv(1 << 16):
                pass
        slow.close()


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--live", "-1"], "--live: -1 is not a rate of 0 or more"),
        (["--live", "fast"], "--live: 'fast' is not a number"),
        (["--until", "0", "--live", "5"], "--until: 0 is not 1 or more"),
        (["--until", "5"], "--until needs --live RATE"),
        (["--until", "5", "--live", "0"], "--until needs --live RATE"),
        (["--max-lag", "0", "--live", "5"], "--max-lag: 0 is not a number of seconds above 0"),
    ],
)
def test_bad_live_options_are_one_line_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code([*args, "--port", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_until_below_a_replayed_feed_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "late.bin"
    path.write_bytes(encode(synthetic(10, seed=1))[5 * PACKET :])  # sequences 6..10
    assert serve_main(["--feed", str(path), "--live", "5", "--until", "3", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "packetcore-serve: error: --until: until must be 6 or above (the first), not 3"


def exit_code(argv: list[str]) -> int:
    """Run ``packetcore-serve`` with ``argv``; return its status, argparse's exit included."""
    try:
        return serve_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_cli_live_workers_publish_alike() -> None:
    with ServeProcess("--live", "2000", "--seed", "9", "--workers", "2", "--drop", "0") as server:
        announced = "".join(server.log)
        assert "live at 2000 packets/s (endless synthetic feed)" in announced
        lasts = [hello(server).last for _ in range(4)]
        assert lasts == sorted(lasts)
        wait_until(lambda: hello(server).last >= 50)
        answers = set()
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(range_request(1, 50))
                answers.add(recv_exact(sock, 50 * PACKET))
        assert len(answers) == 1  # whichever worker answered, the same packets
        assert answers == {bytes(LiveFeed(1.0, seed=9).rows(0, 50))}


def test_stopping_the_server_resets_subscribers_rather_than_ending_the_feed() -> None:
    server = live_server(1000.0).start()
    try:
        sock = subscribe(server, 1)
        read_sequences(sock, 3)
    finally:
        server.stop()
    with sock, pytest.raises(ConnectionResetError):
        while sock.recv(1 << 16):
            pass


def test_a_subscriber_is_never_timed_out_for_idling() -> None:
    with live_server(50.0, idle_timeout=0.15) as server:
        # It sends nothing after its request, and waits longer than the idle timeout
        # for its first packet.
        start = server.published + 15
        with subscribe(server, start) as sock:
            data = read_sequences(sock, start + 10)
        assert decode(data).sequence.tolist() == list(range(start, start + 11))
        assert server.stats.timeouts == 0


@pytest.mark.parametrize("protocol", ["extended", "base"])
def test_a_fetch_against_a_live_server_gets_what_was_published(protocol: str) -> None:
    # The book replayed: a base client can name its sequences (up to 127).
    with live_server(400.0, feed=book(), drop=0.25, seed=8) as server:
        wait_until(lambda: server.published >= 6)
        before = server.published
        result = packetcore.fetch("127.0.0.1", server.port, protocol=protocol, timeout=2.0)
        assert result.complete
        sequences = result.packets.sequence.tolist()
        assert sequences == list(range(1, len(sequences) + 1))
        assert before <= len(sequences) <= server.published
        assert result.packets == book()[: len(sequences)]


def test_drop_patterns_span_blocks_and_a_late_subscription_skips_them() -> None:
    count = 4 * BLOCK + 123
    with live_server(3_000_000.0, until=count, drop=0.2, seed=30) as server:
        wait_until(lambda: server.published == count)
        whole = decode(exchange(server, subscribe_request(1))).sequence
        late = decode(exchange(server, subscribe_request(3 * BLOCK + 7))).sequence
    loss = LossModel(0.2, seed=30)
    for number, sequences, start in ((0, whole, 1), (1, late, 3 * BLOCK + 7)):
        rng = loss.subscription_rng(number)
        assert rng is not None
        kept = np.flatnonzero(LossModel.keep_mask(rng, count, 0.2)) + 1
        assert np.array_equal(sequences, kept[kept >= start])


def test_a_failure_serving_one_subscriber_costs_that_one_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send = Subscription.send

    def failing(self: Subscription, hi: int, data: bytes | memoryview, kept: int) -> None:
        if self.number == 0:
            raise RuntimeError("injected")
        send(self, hi, data, kept)

    monkeypatch.setattr(Subscription, "send", failing)
    with live_server(2000.0, until=400) as server:
        broken = subscribe(server, 1)
        wait_until(lambda: server.stats.subscriptions == 1)
        with broken, subscribe(server, 1) as healthy:
            assert decode(recv_all(healthy)).sequence.tolist() == list(range(1, 401))
            with pytest.raises(ConnectionResetError):
                while broken.recv(1 << 16):
                    pass


# -- faults on the server itself -------------------------------------------------------------


def test_server_faults_shape_a_subscription() -> None:
    # --loss in bursts and a latency on the server: a subscriber gets the feed's packets
    # in order, minus exactly what the faults say they dropped, each at least the
    # latency after it was published.
    plan = FaultPlan(Faults(loss=0.2, burst=3.0, latency=0.05), seed=9)
    server = Server(host="127.0.0.1", port=0, live=40_000, until=4000, drop=0.0, faults=plan)
    # The latency counts from publication, which starts with the server: timed from
    # before it starts, not from the subscription (the first packet may predate it).
    started = time.monotonic()
    with server, subscribe(server, 1) as sock:
        first = recv_exact(sock, PACKET)
        waited = time.monotonic() - started
        data = first + recv_all(sock)  # EOF after the final packet, as without faults
        wait_until(lambda: server.stats.active == 0)
        lost = server.stats.faults["loss"]
    got = decode(data).sequence
    assert waited >= 0.05
    assert np.all(np.diff(got) > 0) and set(got) <= set(range(1, 4001))
    assert 0 < lost == 4000 - len(got)
    assert server.stats.packets_sent == 4000


# -- a fetch (not a follow) of a live feed ---------------------------------------------------


def test_a_fetch_of_a_live_feed_is_a_snapshot_and_says_so() -> None:
    with live_server(20_000.0, drop=0.3) as server:
        wait_until(lambda: server.published > 2000)
        result = packetcore.fetch("127.0.0.1", server.port)
        # Every packet published when the fetch began, none lost; the repair round's
        # hello saw the feed further on.
        assert result.complete and result.count == result.last >= 2000
        assert result.published is not None and result.published > result.last
        assert result.snapshot
        assert f"published to {result.published} meanwhile: --follow" in result.summary()
        with pytest.raises(packetcore.FetchError, match=r"99999..end starts past .* --follow"):
            packetcore.fetch("127.0.0.1", server.port, start=99_999)


# -- what the hostile tester found -----------------------------------------------------------


def expect_reset(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until the connection is reset; fail on an end of file (it says "the feed ended")."""
    sock.settimeout(timeout)
    data = bytearray()
    with pytest.raises(ConnectionResetError):
        while chunk := sock.recv(1 << 16):
            data += chunk
        pytest.fail(f"an end of file after {len(data)} bytes, not a reset")
    return bytes(data)


def test_a_backlog_reader_is_never_timed_out_but_reset_once_max_lag_behind() -> None:
    # A backlog of 17 MB: more than loopback's socket buffers take, so writes wait.
    with live_server(2_000_000.0, max_lag=0.2, idle_timeout=0.1) as server:
        wait_until(lambda: server.published >= 1_000_000)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.connect(("127.0.0.1", server.port))
        with sock:
            sock.sendall(subscribe_request(1))  # and never reads
            wait_until(lambda: server.stats.slow_disconnects == 1)
            data = expect_reset(sock)
        assert server.stats.timeouts == 0
        # What it got, if anything, is the feed from sequence 1.
        whole = len(data) // PACKET * PACKET
        assert data[:whole] == bytes(server.index.rows(0, whole // PACKET))


def test_a_truncated_mapped_feed_resets_rather_than_ends(tmp_path: Path) -> None:
    path = tmp_path / "feed.bin"
    path.write_bytes(encode(synthetic(40_000, seed=6)))
    with live_server(100_000.0, feed=open_feed(str(path))) as server:
        wait_until(lambda: server.published >= 20_000)
        with path.open("r+b") as file:
            file.truncate(5000 * PACKET)
        with subscribe(server, 1) as late:  # its backlog runs over the cut
            expect_reset(late)
        with connect(server) as ranged:
            ranged.sendall(range_request(4990, 20) + resend_request(5))
            expect_reset(ranged)


def test_a_subscription_from_beyond_the_end_closes_when_the_feed_ends() -> None:
    with live_server(4000.0, until=2000) as server, subscribe(server, 30_000) as sock:
        assert server.published < 1500
        assert recv_all(sock) == b""  # the end of file, once the final packet is out
        assert server.published == 2000


@pytest.mark.parametrize("start", [2**31, 2**32 - 1])
def test_a_subscription_beyond_any_sequence_is_a_bad_request_and_closed(
    start: int, caplog: pytest.LogCaptureFixture
) -> None:
    # An endless feed never reaches it: without the check the subscription waits, silent,
    # for ever.  It is counted as a bad request, logged in one line, and closed at once.
    with live_server(1000.0) as server, subscribe(server, start) as sock:
        assert recv_all(sock) == b""  # the end of file: nothing will ever come
        wait_until(lambda: server.stats.active == 0)
        assert server.stats.bad_requests == 1
        assert server.stats.subscriptions == 0
    lines = [r.getMessage() for r in caplog.records if "beyond any sequence" in r.getMessage()]
    assert len(lines) == 1 and str(start) in lines[0]


class _HeldTransport:
    """A transport holding ``held`` bytes unsent, as a subscriber that stopped reading has."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.held

    def get_extra_info(self, name: str) -> None:
        return None

    def abort(self) -> None:
        self.aborted = True
        self.held = 0


def test_a_reset_takes_what_was_unsent_back_out_of_the_counters() -> None:
    counted = {"sent": 100}
    stats = ServerStats(bytes_written=100 * PACKET)

    def count(*, sent: int = 0, dropped: int = 0) -> None:
        counted["sent"] += sent

    async def cut() -> tuple[Subscription, _HeldTransport]:
        transport = _HeldTransport(30 * PACKET)
        writer = cast(
            asyncio.StreamWriter,
            SimpleNamespace(transport=transport, get_extra_info=transport.get_extra_info),
        )
        connection = Connection(cast(asyncio.StreamReader, None), writer, stats, 0.0)
        subscription = Subscription(LiveFeed(10.0), LossModel(0.0), 0, 1, connection, count)
        subscription.reset()
        subscription.reset()  # counted once
        return subscription, transport

    subscription, transport = asyncio.run(cut())
    assert transport.aborted and subscription.cut and subscription.done.done()
    # The 30 packets still held were never the client's: sent and written no more.
    assert counted == {"sent": 70}
    assert stats.bytes_written == 70 * PACKET


@pytest.mark.parametrize(
    ("max_lag", "max_buffer", "readers"),
    [(10.0, 3 << 20, 4), (0.02, 1 << 30, 1)],
    ids=["all-subscribers", "one-subscriber"],
)
def test_unsent_bytes_never_pass_their_bounds(
    monkeypatch: pytest.MonkeyPatch, max_lag: float, max_buffer: int, readers: int
) -> None:
    # Subscribers that never read: the server disconnects the furthest behind before
    # their unsent bytes, together or each, would pass --max-buffer or --max-lag.
    seen = {"all": 0, "each": 0}
    tick, send = Publisher._tick, Subscription.send

    def watched_tick(self: Publisher) -> None:
        tick(self)
        unsent = sum(s.connection.unsent for s in self._subscriptions)
        seen["all"] = max(seen["all"], unsent)

    def watched_send(self: Subscription, *args: Any) -> Any:
        result = send(self, *args)
        seen["each"] = max(seen["each"], self.connection.unsent)
        return result

    monkeypatch.setattr(Publisher, "_tick", watched_tick)
    monkeypatch.setattr(Subscription, "send", watched_send)
    server = Server(
        host="127.0.0.1", port=0, live=2_000_000.0, drop=0.0, max_lag=max_lag,
        max_buffer=max_buffer,
    )  # fmt: skip
    with server:
        socks = []
        for _ in range(readers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(subscribe_request(server.published + 1))
            socks.append(sock)
        wait_until(lambda: server.stats.slow_disconnects >= 1)
        for sock in socks:
            sock.close()
        assert server.publisher is not None
        bound = server.publisher.bound
    assert 0 < seen["all"] <= max_buffer
    assert 0 < seen["each"] <= bound


def test_stopping_with_many_stalled_subscribers_is_prompt() -> None:
    server = live_server(1_000_000.0).start()
    socks = []
    try:
        for _ in range(200):
            socks.append(subscribe(server, server.published + 1))  # and never reads
        wait_until(lambda: server.stats.subscriptions == 200)
        # A second of packets: their unsent bytes pile up, as far as the bounds let them.
        edge = server.published
        wait_until(lambda: server.published >= edge + 1_000_000)
    finally:
        started = time.monotonic()
        server.stop()
        stopping = time.monotonic() - started
    # Every transport aborted at once, nothing flushed (the resets below); the limit
    # only catches a hang.
    assert stopping < 30
    for sock in socks:
        with sock, pytest.raises(ConnectionResetError):
            while sock.recv(1 << 16):
                pass


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_publisher_wakes_at_most_every_tick_on_either_loop(
    monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    # uvloop rounds a wait down to whole milliseconds: a half-millisecond tick was no
    # wait at all there, and the publisher spun a core (tens of thousands of wake-ups a
    # second).  On either loop it wakes at most 1 / TICK times a second.
    from packetcore.server.workers import run_loop

    ticks = 0
    tick = Publisher._tick

    def counted(self: Publisher) -> None:
        nonlocal ticks
        ticks += 1
        tick(self)

    monkeypatch.setattr(Publisher, "_tick", counted)

    async def main() -> tuple[int, float]:
        server = live_server(200_000.0)
        await server.start_async()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(subscribe_request(server.published + 1))
            started = time.monotonic()
            while time.monotonic() - started < 1.0:
                assert await reader.read(1 << 16)  # it publishes all along
            writer.close()
            return ticks, time.monotonic() - started
        finally:
            await server.stop_async()

    woken, seconds = run_loop(loop, main())
    assert 0 < woken <= seconds / TICK * 1.1, (woken, seconds)
