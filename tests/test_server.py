"""The exchange server over real loopback sockets: protocol, bad input, loss, lifecycle, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from packetcore.faults.model import FaultPlan, Faults
from packetcore.io.feeds import synthetic
from packetcore.protocol import (
    INFO_SIZE,
    FeedInfo,
    encode_info,
    hello_request,
    range_requests,
    resend_request,
    stream_all_request,
    subscribe_request,
)
from packetcore.server.server import STREAM_CHUNK, Server
from serverutil import (
    PACKET,
    TIMEOUT,
    connect,
    exchange,
    packets_of,
    range_request,
    recv_all,
    recv_exact,
    reference_bytes,
    wait_until,
)

import packetcore
from packetcore import Packets, decode

STREAM_ALL = stream_all_request()
HELLO = hello_request()
#: The hello's answer for the book, as PROTOCOL.md lays it out: magic, version 1, first 1,
#: last 14.
BOOK_INFO = b"PKCI\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0e"
#: One response packet as PROTOCOL.md lays it out: symbol, side, quantity, price, sequence.
RECORD = struct.Struct(">4s1siii")


def wire_of(feed: Packets) -> bytes:
    """Return ``feed`` as the server must send it, packed here without the engine."""
    columns = (feed.symbol, feed.buysellindicator, feed.quantity, feed.price, feed.sequence)
    return b"".join(
        RECORD.pack(*record) for record in zip(*(c.tolist() for c in columns), strict=True)
    )


@pytest.fixture
def server() -> Iterator[Server]:
    """The book with nothing dropped, on a free loopback port."""
    with Server(host="127.0.0.1", port=0, drop=0.0) as running:
        yield running


@pytest.fixture
def lossy() -> Iterator[Server]:
    """The book with the reference's loss, seeded."""
    with Server(host="127.0.0.1", port=0, seed=11) as running:
        yield running


# -- base protocol, byte-exact -----------------------------------------------------------


def test_stream_all_is_the_reference_capture_and_closes(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(STREAM_ALL)
        # No half-close: end of stream must come from the server.
        assert recv_all(sock) == reference_bytes()
    assert server.stats.packets_sent == 14


def test_resend_answers_one_packet_and_keeps_the_connection(server: Server) -> None:
    wire = reference_bytes()
    with connect(server) as sock:
        for sequence in (5, 1, 14):
            sock.sendall(resend_request(sequence))
            assert recv_exact(sock, PACKET) == packets_of(wire, sequence)
        sock.sendall(HELLO)  # still open: it answers more
        assert recv_exact(sock, 16) == BOOK_INFO
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    assert server.stats.packets_resent == 3


def test_pipelined_resends_answer_in_request_order(server: Server) -> None:
    wire = reference_bytes()
    sequences = [(i * 5) % 14 + 1 for i in range(3000)]
    request = b"".join(resend_request(s) for s in sequences)
    assert exchange(server, request) == packets_of(wire, *sequences)


def test_every_resend_of_the_book_rebuilds_the_capture(server: Server) -> None:
    request = b"".join(resend_request(s) for s in range(1, 15))
    assert exchange(server, request) == reference_bytes()


def test_resends_then_stream_all_on_one_connection(server: Server) -> None:
    wire = reference_bytes()
    answer = exchange(server, resend_request(3) + resend_request(9) + STREAM_ALL + HELLO)
    # What follows stream-all is never answered: the server closes after the stream.
    assert answer == packets_of(wire, 3, 9) + wire


def test_localhost_binds_both_loopbacks_on_one_port() -> None:
    with Server(host="localhost", port=0, drop=0.0) as running:
        families = {address[0] for address in running.addresses}
        assert "127.0.0.1" in families
        assert exchange(running, STREAM_ALL, "127.0.0.1") == reference_bytes()
        if "::1" not in families:
            pytest.skip("this host cannot bind ::1")
        assert exchange(running, STREAM_ALL, "::1") == reference_bytes()


def test_default_feed_is_the_book() -> None:
    with Server(host="127.0.0.1", port=0) as running:
        assert wire_of(running.feed) == reference_bytes()
        assert running.info == FeedInfo(1, 14)


# -- framing ------------------------------------------------------------------------------


def test_split_requests_are_framed(server: Server) -> None:
    wire = reference_bytes()
    request = resend_request(2) + range_request(12, 2) + HELLO + resend_request(7)
    with connect(server) as sock:
        for byte in request:
            sock.sendall(bytes((byte,)))
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
    assert answer == packets_of(wire, 2, 12, 13) + BOOK_INFO + packets_of(wire, 7)


def test_requests_split_between_answers(server: Server) -> None:
    wire = reference_bytes()
    with connect(server) as sock:
        sock.sendall(resend_request(4) + range_request(1, 2)[:3])
        assert recv_exact(sock, PACKET) == packets_of(wire, 4)
        sock.sendall(range_request(1, 2)[3:] + b"\x02")
        assert recv_exact(sock, 2 * PACKET) == packets_of(wire, 1, 2)
        sock.sendall(b"\x0e")
        assert recv_exact(sock, PACKET) == packets_of(wire, 14)


def test_coalesced_mixed_requests(server: Server) -> None:
    wire = reference_bytes()
    request = HELLO + resend_request(1) + range_request(13, 5) + resend_request(6) + STREAM_ALL
    answer = exchange(server, request)
    assert answer == BOOK_INFO + packets_of(wire, 1, 13, 14, 6) + wire


def test_two_clients_interleaving_keep_their_own_framing(server: Server) -> None:
    wire = reference_bytes()
    with connect(server) as first, connect(server) as second:
        first.sendall(b"\x02")  # half a request: held for this connection only
        second.sendall(b"\x02")
        second.sendall(b"\x07")
        assert recv_exact(second, PACKET) == packets_of(wire, 7)
        first.sendall(b"\x03" + b"\x04\x00\x00\x00")
        assert recv_exact(first, PACKET) == packets_of(wire, 3)
        second.sendall(b"\x02\x0a")
        first.sendall(b"\x00\x0b\x00\x00\x00\x02")
        assert recv_exact(second, PACKET) == packets_of(wire, 10)
        assert recv_exact(first, 2 * PACKET) == packets_of(wire, 11, 12)


# -- extension ----------------------------------------------------------------------------


def test_hello_answers_the_info_frame(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(HELLO)
        assert recv_exact(sock, 16) == BOOK_INFO


@pytest.mark.parametrize(
    ("start", "count", "expected"),
    [
        (1, 14, range(1, 15)),
        (3, 1, [3]),
        (0, 5, range(1, 5)),
        (10, 100, range(10, 15)),
        (5, 0, []),
        (15, 3, []),
        (2**32 - 1, 2**32 - 1, []),
        (0, 2**32 - 1, range(1, 15)),
    ],
)
def test_range_is_clamped_to_the_feed(
    server: Server, start: int, count: int, expected: range | list[int]
) -> None:
    answer = exchange(server, range_request(start, count) + resend_request(1))
    assert answer == packets_of(reference_bytes(), *expected, 1)


def test_large_range_and_stream_span_many_chunks() -> None:
    feed = synthetic(3 * STREAM_CHUNK + 5, seed=3)
    wire = wire_of(feed)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0) as running:
        assert (
            exchange(running, range_request(7, 2 * STREAM_CHUNK))
            == wire[6 * PACKET : (6 + 2 * STREAM_CHUNK) * PACKET]
        )
        assert exchange(running, STREAM_ALL) == wire


@pytest.mark.parametrize("step", [7, 50], ids=["close", "spread"])
@pytest.mark.parametrize("sparse", [False, True], ids=["contiguous", "with-gaps"])
def test_thousands_of_pipelined_ranges_are_answered_in_order(sparse: bool, step: int) -> None:
    # A repair asks for thousands of small ranges in one write, with a hello and a
    # range larger than a chunk among them: each answered in request order, clamped.
    feed = synthetic(3 * STREAM_CHUNK, seed=5)
    if sparse:
        feed = feed[feed.sequence % 3 != 0]
    wire = wire_of(feed)
    rows = {int(s): i for i, s in enumerate(feed.sequence.tolist())}
    asks = [(s, 1 + s % 4) for s in range(1, 3 * STREAM_CHUNK, step)]
    asks[len(asks) // 2 : len(asks) // 2] = [(5, 2 * STREAM_CHUNK), (0, 0), (10**9, 3)]
    hello_at = len(asks) // 3
    with Server(feed, host="127.0.0.1", port=0, drop=0.0) as running:
        info = encode_info(running.info)
        requests = b"".join(range_request(s, n) for s, n in asks[:hello_at]) + HELLO
        answer = exchange(
            running, requests + b"".join(range_request(s, n) for s, n in asks[hello_at:])
        )
        resent = running.stats.packets_resent
    expected = bytearray()
    packets = 0
    for number, (start, count) in enumerate(asks):
        if number == hello_at:
            expected += info
        for sequence in range(start, start + count):
            if sequence in rows:
                expected += wire[rows[sequence] * PACKET : (rows[sequence] + 1) * PACKET]
                packets += 1
    assert answer == bytes(expected)
    assert resent == packets


def test_unsorted_feed_with_gaps_is_served_in_sequence_order() -> None:
    feed = Packets([b"C", b"A", b"B"], [b"S", b"B", b"B"], [3, 1, 2], [30, 10, 20], [30, 10, 20])
    ordered = RECORD.pack(b"A", b"B", 1, 10, 10) + RECORD.pack(b"B", b"B", 2, 20, 20)
    ordered += RECORD.pack(b"C", b"S", 3, 30, 30)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0) as running:
        assert running.info == FeedInfo(10, 30)
        assert exchange(running, STREAM_ALL) == ordered
        answer = exchange(running, resend_request(20) + resend_request(15) + range_request(11, 19))
    assert answer == ordered[PACKET : 2 * PACKET] * 2


def test_feed_not_starting_at_1_is_served_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = synthetic(20, seed=8)[9:]  # sequences 10..20
    with (
        caplog.at_level(logging.WARNING, logger="packetcore.server"),
        Server(feed, host="127.0.0.1", port=0, drop=0.0) as running,
    ):
        assert exchange(running, STREAM_ALL) == wire_of(feed)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "starts at sequence 10" in warnings[0]
    assert "base-protocol clients" in warnings[0] and "extended" in warnings[0]


def test_feed_starting_at_1_has_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="packetcore.server"),
        Server(synthetic(20, seed=8)[:15], host="127.0.0.1", port=0) as running,
    ):
        assert running.info == FeedInfo(1, 15)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- bad input ------------------------------------------------------------------------------


def test_resend_of_a_missing_sequence_writes_nothing(server: Server) -> None:
    wire = reference_bytes()
    request = resend_request(0) + resend_request(15) + resend_request(255) + resend_request(2)
    assert exchange(server, request) == packets_of(wire, 2)
    assert server.stats.bad_requests == 3
    assert exchange(server, STREAM_ALL) == wire


def test_resend_seq_is_read_unsigned() -> None:
    feed = synthetic(300, seed=1)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0) as running:
        answer = exchange(running, resend_request(200) + resend_request(255))
    assert answer == packets_of(wire_of(feed), 200, 255)


@pytest.mark.parametrize("call_type", [0, 9, 200, 255])
def test_unknown_call_type_is_ignored_and_the_connection_kept(
    server: Server, call_type: int
) -> None:
    wire = reference_bytes()
    with connect(server) as sock:
        # As the reference exchange: nothing written back, the requests after it answered.
        sock.sendall(resend_request(4) + bytes((call_type, 7)) + resend_request(5))
        assert recv_exact(sock, 2 * PACKET) == packets_of(wire, 4, 5)
        sock.sendall(bytes((call_type, 0)))
        sock.sendall(HELLO)
        assert recv_exact(sock, 16) == BOOK_INFO
        sock.sendall(bytes((call_type,)))  # split: still framed as 2 bytes
        sock.sendall(b"\x00" + resend_request(14))
        assert recv_exact(sock, PACKET) == packets_of(wire, 14)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    assert server.stats.bad_requests == 3
    assert server.stats.packets_resent == 3


def test_unknown_call_type_then_stream_all_gets_the_stream(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"\x09\x00\x01\x00")
        # No half-close: the stream and its end must come from the server.
        assert recv_all(sock) == reference_bytes()
    assert server.stats.bad_requests == 1
    assert server.stats.streams == 1


def test_unknown_call_types_are_logged_at_debug_only(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="packetcore.server"):
        assert exchange(server, b"\x09\x00" * 3 + resend_request(1)) == packets_of(
            reference_bytes(), 1
        )
    ignored = [r for r in caplog.records if "unknown callType 9" in r.getMessage()]
    assert len(ignored) == 3
    assert all(record.levelno == logging.DEBUG for record in ignored)


def test_incomplete_request_before_half_close_is_ignored(server: Server) -> None:
    assert exchange(server, resend_request(1) + range_request(1, 14)[:7]) == packets_of(
        reference_bytes(), 1
    )


def test_idle_client_is_closed() -> None:
    with Server(host="127.0.0.1", port=0, idle_timeout=0.2) as running, connect(running) as sock:
        sock.sendall(resend_request(1))
        assert len(recv_exact(sock, PACKET)) == PACKET
        assert recv_all(sock) == b""  # the server closed it
        wait_until(lambda: running.stats.active == 0)
        assert running.stats.timeouts == 1


def test_stalled_reader_is_not_buffered_whole_and_is_closed() -> None:
    feed = synthetic(1_000_000, seed=2)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0, idle_timeout=0.5) as running:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
            sock.connect(("127.0.0.1", running.port))
            sock.sendall(STREAM_ALL)
            # Read nothing: the server must stall on drain(), not buffer 17 MB, and give
            # up after idle_timeout.
            wait_until(lambda: running.stats.timeouts == 1)
            assert 0 < running.stats.packets_sent < len(feed) // 2
        assert running.stats.active == 0


def test_max_connections_refuses_the_extra_client() -> None:
    with Server(host="127.0.0.1", port=0, drop=0.0, max_connections=2) as running:
        first, second = connect(running), connect(running)
        for sock in (first, second):  # both are being served
            sock.sendall(HELLO)
            recv_exact(sock, 16)
        with connect(running) as third:
            third.sendall(STREAM_ALL)
            with contextlib.suppress(ConnectionResetError):  # closed unread: may be a RST
                assert recv_all(third) == b""
        assert running.stats.refused == 1
        first.close()
        wait_until(lambda: running.stats.active == 1)
        assert exchange(running, STREAM_ALL) == reference_bytes()
        second.close()


def test_client_reset_mid_stream_does_not_disturb_the_server() -> None:
    feed = synthetic(400_000, seed=4)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0) as running:
        sock = connect(running)
        sock.sendall(STREAM_ALL)
        recv_exact(sock, 1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        wait_until(lambda: running.stats.active == 0)
        assert exchange(running, range_request(1, 3)) == wire_of(feed[:3])


# -- loss -----------------------------------------------------------------------------------


def test_drop_zero_gives_every_packet(server: Server) -> None:
    for _ in range(3):
        assert exchange(server, STREAM_ALL) == reference_bytes()


def stream_sequences(running: Server) -> list[int]:
    sequences: list[int] = decode(exchange(running, STREAM_ALL)).sequence.tolist()
    return sequences


def test_seeded_loss_is_reproducible() -> None:
    # 50,000 packets: a loss within 0.01 of 0.25 is 5 standard deviations wide at this
    # size (the twin decodes the nine streams in Python: 200,000 took it 3.6 s).
    feed = synthetic(50_000, seed=5)

    def three_streams(seed: int) -> list[list[int]]:
        with Server(feed, host="127.0.0.1", port=0, drop=0.25, seed=seed) as running:
            exchange(running, HELLO)  # connections without stream-all do not count
            return [stream_sequences(running) for _ in range(3)]

    runs = three_streams(42)
    assert runs == three_streams(42)
    assert runs[0] != runs[1] != runs[2]
    assert runs != three_streams(43)
    for sequences in runs:
        assert sequences == sorted(set(sequences))
        assert abs(len(sequences) / len(feed) - 0.75) < 0.01


def test_book_loss_drops_the_last_packet_sometimes(lossy: Server) -> None:
    streams = [stream_sequences(lossy) for _ in range(40)]
    assert any(14 not in s for s in streams)
    assert all(set(s) <= set(range(1, 15)) for s in streams)
    assert lossy.stats.packets_sent + lossy.stats.packets_dropped == 40 * 14


def test_drop_all_and_keep_last() -> None:
    with Server(host="127.0.0.1", port=0, drop=1.0) as running:
        assert exchange(running, STREAM_ALL) == b""
    with Server(host="127.0.0.1", port=0, drop=1.0, keep_last=True) as running:
        assert exchange(running, STREAM_ALL) == packets_of(reference_bytes(), 14)


def test_drop_resends() -> None:
    request = b"".join(resend_request(s) for s in range(1, 15)) + range_request(1, 14)
    with Server(host="127.0.0.1", port=0, drop_resends=1.0) as running:
        assert exchange(running, request) == b""
        assert running.stats.packets_dropped == 28
    answers = []
    for _ in range(2):
        with Server(host="127.0.0.1", port=0, drop_resends=0.5, seed=9) as running:
            answers.append(exchange(running, request * 20))
    assert answers[0] == answers[1]
    assert 0 < len(answers[0]) < 20 * 28 * PACKET


# -- lifecycle --------------------------------------------------------------------------------


def test_graceful_shutdown_closes_connections_and_the_port() -> None:
    running = Server(host="127.0.0.1", port=0).start()
    port = running.port
    sock = connect(running)
    sock.sendall(HELLO)
    recv_exact(sock, 16)
    running.stop()
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    running.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert running.stats.active == 0


def test_stop_mid_stream_of_a_large_feed() -> None:
    # Nothing dropped, so only an interrupted stream can come up short; 34 MB, far more
    # than the socket buffers and the transport's chunk hold between them.
    feed = synthetic(2_000_000, seed=6)
    wire = wire_of(feed)
    running = Server(feed, host="127.0.0.1", port=0, drop=0.0).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)  # before connect: it holds
    sock.connect(("127.0.0.1", running.port))
    sock.sendall(STREAM_ALL)
    data = recv_exact(sock, PACKET)
    # Stopped in a thread, so that a stop() waiting for the stream to end cannot hang
    # the test: it fails below, having read the whole stream.
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    stopper.join(TIMEOUT)
    stopped_unread = not stopper.is_alive()
    with sock, contextlib.suppress(ConnectionResetError):  # an aborted transport may RST
        data += recv_all(sock)
    stopper.join()
    assert stopped_unread, "stop() waited for a stream that nobody reads"
    assert data == wire[: len(data)]
    assert len(data) < len(wire) // 4


def test_port_in_use_raises_oserror(server: Server) -> None:
    with pytest.raises(OSError) as info:
        Server(host="127.0.0.1", port=server.port).start()
    assert info.value.errno == errno.EADDRINUSE
    assert "cannot listen" in str(info.value)


def test_async_context_manager() -> None:
    async def fetch() -> tuple[bytes, bytes]:
        async with Server(host="127.0.0.1", port=0, drop=0.0) as running:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(HELLO + resend_request(3))
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(STREAM_ALL)
            stream = await reader.read()
            writer.close()
            await writer.wait_closed()
            return answer, stream

    answer, stream = asyncio.run(fetch())
    assert answer == BOOK_INFO + packets_of(reference_bytes(), 3)
    assert stream == reference_bytes()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="drop"):
        Server(drop=1.5)
    with pytest.raises(ValueError, match="empty"):
        Server(Packets.empty())
    with pytest.raises(ValueError, match="max_connections"):
        Server(max_connections=0)


# -- the command line ---------------------------------------------------------------------------

SRC = str(Path(packetcore.__file__).resolve().parents[1])


def cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    process = cli(*args)
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.engine_neutral
def test_cli_help_explains_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--host", "--port", "--feed", "--seed", "--drop", "--drop-resends", "--keep-last",
        "--idle-timeout", "--max-connections", "--quiet", "--verbose",
    ):  # fmt: skip
        assert option in result.stdout


@pytest.mark.engine_neutral
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--drop", "2"], "not a probability"),
        (["--drop-resends", "x"], "not a number"),
        (["--port", "70000"], "not a port"),
        (["--max-connections", "0"], "not 1 or more"),
        (["--idle-timeout", "-1"], "0 seconds or more"),
        (["--seed", "-3"], "negative"),
        (["--feed", "synthetic:zero"], "'zero' is not a packet count"),
    ],
)
def test_cli_bad_option_is_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_feed_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"
    path.write_text('[{"symbol": "AAPL", "buysellindicator": "X", "quantity": 1, '
                    '"price": 1, "packetSequence": 1}]')  # fmt: skip
    cases = [
        (str(path), "record 0, field 'buysellindicator'"),
        ("nowhere.json", "no such file"),
    ]
    for feed, message in cases:
        result = run_cli("--feed", feed, "--port", "0")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("packetcore-serve: error:")
        assert message in lines[0]


def test_cli_port_in_use_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot listen on 127.0.0.1 port" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_on_signal(signum: int) -> None:
    process = cli("--port", "0", "--drop", "0", "--seed", "1")
    assert process.stderr is not None
    try:
        port = 0
        for line in process.stderr:
            found = re.search(r"listening on port (\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "the server never said it was listening"
        for host in ("127.0.0.1", "::1") if socket.has_ipv6 else ("127.0.0.1",):
            try:
                sock = socket.create_connection((host, port), timeout=10)
            except OSError:
                continue  # no IPv6 loopback here
            with sock:
                sock.sendall(STREAM_ALL)
                assert recv_all(sock) == reference_bytes()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signum  # 143 or 130, as a shell reports them
    summary = [line for line in stderr.splitlines() if line.startswith("packetcore-serve:")]
    assert len(summary) == 1
    assert f"stopped by {signal.Signals(signum).name}:" in summary[0]
    assert "14 packets sent" in summary[0] or "28 packets sent" in summary[0]


# -- bytes written: counted once, as the clients receive them --------------------------------


def _received(server: Server, request: bytes) -> int:
    """Send ``request``, half-close, and return how many bytes came back until the end."""
    with connect(server) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return len(recv_all(sock))


@pytest.mark.parametrize(
    "faults",
    [None, Faults(loss=0.05, duplicate=0.05, split=700), Faults(duplicate=0.02, latency=0.01)],
    ids=["clean", "faults", "timed-faults"],
)
def test_every_byte_written_is_counted_once(faults: Faults | None) -> None:
    # Every path that writes (stream-all, resends, ranges small and large, a finished feed's
    # subscription, a live one's, hello) goes through the connection, which counts each byte
    # once: stats.bytes_written is what the raw clients received, faults or not.
    plan = None if faults is None else FaultPlan(faults, seed=4)
    requests = [
        HELLO + STREAM_ALL,
        HELLO + resend_request(7) + range_request(10, 200) + range_request(500, STREAM_CHUNK + 9),
        range_requests([(3, 4), (90, 5), (7000, 2)]) + resend_request(200) + HELLO,
        subscribe_request(19_000),
    ]
    received = 0
    feed = synthetic(STREAM_CHUNK + 1000, seed=3)
    finished = Server(feed, host="127.0.0.1", port=0, drop=0.2, drop_resends=0.1, seed=2,
                      faults=plan)  # fmt: skip
    with finished:
        for request in requests:
            received += _received(finished, request)
        wait_until(lambda: finished.stats.active == 0)
        assert finished.stats.bytes_written == received > 0
        if faults is not None:
            assert sum(finished.stats.faults.values()) > 0
    live = Server(host="127.0.0.1", port=0, live=50_000, until=3000, drop=0.2, seed=2,
                  faults=plan)  # fmt: skip
    with live:
        received = _received(live, HELLO + subscribe_request(1))
        wait_until(lambda: live.stats.active == 0)
        assert live.stats.bytes_written == received > INFO_SIZE
