"""packetcore.faults.proxy with exact faults, against a tiny packet server started here."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packetcore.faults.model import FaultPlan, Faults
from packetcore.faults.proxy import ConnectionRecord, Proxy
from packetcore.faults.shaper import Shaper
from packetcore.faults.trace import MAX_EVENTS, Trace, TracedRequest
from packetcore.io.feeds import synthetic
from packetcore.protocol import (
    HELLO,
    RESEND,
    RESEND_RANGE,
    STREAM_ALL,
    FeedInfo,
    Request,
    RequestFramer,
    encode_info,
    hello_request,
    resend_request,
    stream_all_request,
)
from packetcore.server.server import Server
from serverutil import range_request

import packetcore
from packetcore import encode

pytestmark = pytest.mark.timeout(30)

N_PACKETS = 40
PACKET = 17


def packet(seq: int) -> bytes:
    """One 17-byte response packet for a sequence."""
    return struct.pack(">4sciii", b"MSFT", b"B" if seq % 2 else b"S", 100 + seq, 5000 + seq, seq)


PACKETS = [packet(seq) for seq in range(1, N_PACKETS + 1)]
BOOK = b"".join(PACKETS)
INFO = encode_info(FeedInfo(1, N_PACKETS))
STREAM_ALL_REQUEST = stream_all_request()
HELLO_REQUEST = hello_request()


class _Handler(socketserver.BaseRequestHandler):
    """Answers the feed protocol on one connection."""

    def handle(self) -> None:
        """Frame requests and answer them, recording what was received."""
        feed: FeedServer = self.server.feed  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        sock.settimeout(5.0)
        received = bytearray()
        feed.received.append(received)
        framer = RequestFramer()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            received += data
            for request in framer.feed(data):
                call = request.call_type
                if call == STREAM_ALL:
                    sock.sendall(feed.stream)
                    return
                if call == RESEND and 1 <= request.start <= N_PACKETS:
                    sock.sendall(PACKETS[request.start - 1])
                elif call == HELLO and feed.hello:
                    sock.sendall(INFO)
                elif call == RESEND_RANGE:
                    start, stop = max(request.start, 1) - 1, request.start + request.count - 1
                    sock.sendall(b"".join(PACKETS[start:stop]))


class FeedServer:
    """A threaded loopback packet server: stream-all, resend, hello and resend-range."""

    def __init__(self, stream: bytes = BOOK, hello: bool = True) -> None:
        """Serve stream on callType 1; answer hellos only if hello is set."""
        self.stream = stream
        self.hello = hello
        self.received: list[bytearray] = []
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.feed = self  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    """A packet server whose hello is answered by an info frame."""
    feed = FeedServer()
    yield feed
    feed.close()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    """A client socket connected to the proxy."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_to_eof(sock: socket.socket) -> bytes:
    """Read until the peer closes."""
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def read_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes."""
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


def fetch(port: int, request: bytes = STREAM_ALL_REQUEST) -> bytes:
    """Send requests and read the answer until EOF."""
    with connect(port) as sock:
        sock.sendall(request)
        return read_to_eof(sock)


def only(proxy: Proxy) -> ConnectionRecord:
    """The record of the proxy's one connection, once it has finished."""
    assert proxy.wait_idle()
    (record,) = proxy.records
    return record


def test_pass_through_is_byte_exact_both_ways() -> None:
    """Without faults every byte passes unchanged, whatever its framing."""
    payload = os.urandom(300_001)
    feed = FeedServer(stream=payload)
    try:
        with Proxy(("127.0.0.1", feed.port)) as proxy:
            assert fetch(proxy.port) == payload
            with connect(proxy.port) as sock:
                requests = resend_request(3) + resend_request(7) + range_request(10, 3)
                sock.sendall(requests)
                assert read_exact(sock, 5 * 17) == PACKETS[2] + PACKETS[6] + b"".join(PACKETS[9:12])
            assert proxy.wait_idle()
            first, second = proxy.records
        assert bytes(feed.received[1]) == requests
        assert (first.bytes_to_client, first.bytes_from_server) == (len(payload), len(payload))
        assert (second.bytes_up, second.requests) == (14, {2: 2, 4: 1})
        assert first.applied == second.applied == []
        assert first.outcome == "eof"
    finally:
        feed.close()


@pytest.mark.parametrize("n", [0, 1, 17 * 3 + 5, len(BOOK) - 1])
def test_close_after_n_bytes_closes_exactly_there(server: FeedServer, n: int) -> None:
    """The client gets exactly N bytes, then a clean EOF (no reset)."""
    with Proxy(("127.0.0.1", server.port), [Faults(close_after=n)]) as proxy:
        assert fetch(proxy.port) == BOOK[:n]
        stats = only(proxy)
    assert (stats.outcome, stats.bytes_to_client, stats.applied) == ("close", n, ["close"])


@pytest.mark.parametrize("n", [0, 30])
def test_reset_after_n_bytes_resets_the_client(server: FeedServer, n: int) -> None:
    """The client reads exactly N bytes, then gets ConnectionResetError."""
    with Proxy(("127.0.0.1", server.port), [Faults(reset_after=n)]) as proxy:
        got = bytearray()
        with pytest.raises(ConnectionResetError), connect(proxy.port) as sock:  # N=0: maybe here
            sock.sendall(STREAM_ALL_REQUEST)
            while data := sock.recv(65536):
                got += data
        stats = only(proxy)
    assert bytes(got) == BOOK[:n]  # the proxy lets its send queue empty before the RST
    assert (stats.outcome, stats.bytes_to_client) == ("reset", n)


def test_throttle_slows_to_the_bandwidth() -> None:
    """A throttled transfer takes at least about bytes/bandwidth and stays byte-exact."""
    payload = os.urandom(20_000)
    rate = 40_000.0
    feed = FeedServer(stream=payload)
    try:
        with Proxy(("127.0.0.1", feed.port), [Faults(bandwidth=rate)]) as proxy:
            started = time.monotonic()
            assert fetch(proxy.port) == payload
            elapsed = time.monotonic() - started
            stats = only(proxy)
        assert elapsed >= 0.8 * len(payload) / rate
        assert stats.applied == []  # shaping, not an injected fault
        assert stats.largest_write <= rate / 50
    finally:
        feed.close()


def test_delay_holds_answers_without_adding_up(server: FeedServer) -> None:
    """Each answer waits the fixed latency; a whole stream is not delayed per chunk."""
    with Proxy(("127.0.0.1", server.port), lambda i: Faults(latency=0.3)) as proxy:
        with connect(proxy.port) as sock:
            started = time.monotonic()
            sock.sendall(resend_request(5))
            assert read_exact(sock, 17) == PACKETS[4]
            assert time.monotonic() - started >= 0.27
        started = time.monotonic()
        assert fetch(proxy.port) == BOOK
        assert 0.27 <= time.monotonic() - started < 30  # not per chunk; above: a hang


def test_duplicate_sends_the_chosen_packets_twice(server: FeedServer) -> None:
    """Exactly the chosen packets are repeated, right after themselves."""
    faults = Faults(duplicate_at=frozenset({0, 4, N_PACKETS - 1}))
    with Proxy(("127.0.0.1", server.port), [faults]) as proxy:
        got = fetch(proxy.port)
        stats = only(proxy)
    expected = [p for i, p in enumerate(PACKETS) for _ in range(2 if i in {0, 4, 39} else 1)]
    assert got == b"".join(expected)
    assert stats.counts == {"duplicate": 3}


def test_reorder_swaps_adjacent_pairs(server: FeedServer) -> None:
    """Packet i goes after packet i+1; a held last packet is flushed in place at EOF."""
    faults = Faults(reorder_at=frozenset({2, 3, 10, N_PACKETS - 1}))
    with Proxy(("127.0.0.1", server.port), [faults]) as proxy:
        got = fetch(proxy.port)
        stats = only(proxy)
    order = list(range(N_PACKETS))
    order[2], order[3] = 3, 2  # packet 3 releases the held 2, so it is not held itself
    order[10], order[11] = 11, 10
    assert got == b"".join(PACKETS[i] for i in order)
    assert stats.counts == {"reorder": 2}


def test_corrupt_flips_exactly_the_chosen_bytes(server: FeedServer) -> None:
    """Only the bytes at the chosen offsets differ, by the XOR mask."""
    offsets = (0, 17 * 3 + 13, len(BOOK) - 1)
    with Proxy(("127.0.0.1", server.port), [Faults(corrupt_at=offsets, corrupt_xor=0x01)]) as p:
        got = fetch(p.port)
        stats = only(p)
    assert len(got) == len(BOOK)
    assert [i for i in range(len(BOOK)) if got[i] != BOOK[i]] == list(offsets)
    assert all(got[i] == BOOK[i] ^ 0x01 for i in offsets)
    assert stats.counts == {"corrupt": len(offsets)}


def test_info_frame_passes_untouched_and_offsets_count_it(server: FeedServer) -> None:
    """After a hello the 16-byte info frame is not framed as a packet nor shifted."""
    faults = Faults(duplicate_at=frozenset({0}), corrupt_at=(16,), close_after=16 + 17 * 3)
    with Proxy(("127.0.0.1", server.port), [faults]) as proxy:
        with connect(proxy.port) as sock:
            sock.sendall(HELLO_REQUEST)
            assert read_exact(sock, 16) == INFO
            sock.sendall(STREAM_ALL_REQUEST)
            got = read_to_eof(sock)
        stats = only(proxy)
    bad = bytes([PACKETS[0][0] ^ 0xFF]) + PACKETS[0][1:]
    assert got == bad + PACKETS[0] + PACKETS[1]
    assert stats.info_frames == 1
    assert sorted(stats.applied) == ["close", "corrupt", "duplicate"]


def test_hello_to_a_base_server_frames_packets_from_the_start() -> None:
    """If the hello gets no info frame, the first bytes are packets and are framed as such."""
    feed = FeedServer(hello=False)
    try:
        with Proxy(("127.0.0.1", feed.port), [Faults(duplicate_at=frozenset({0}))]) as proxy:
            assert fetch(proxy.port, HELLO_REQUEST + STREAM_ALL_REQUEST) == PACKETS[0] + BOOK
            assert not only(proxy).info_frames
    finally:
        feed.close()


def test_swallow_resends_drops_resend_answers_only(server: FeedServer) -> None:
    """Resend connections get silence (after any info frame); stream-all connections do not."""
    with Proxy(("127.0.0.1", server.port), lambda i: Faults(swallow_resends=True)) as proxy:
        with connect(proxy.port, timeout=0.3) as sock:
            sock.sendall(resend_request(3) + resend_request(5))
            with pytest.raises(socket.timeout):
                sock.recv(100)
        with connect(proxy.port, timeout=0.3) as sock:
            sock.sendall(HELLO_REQUEST)
            assert read_exact(sock, 16) == INFO
            sock.sendall(range_request(1, 5))
            with pytest.raises(socket.timeout):
                sock.recv(100)
        assert fetch(proxy.port, HELLO_REQUEST + STREAM_ALL_REQUEST) == INFO + BOOK
        assert proxy.wait_idle()
        resend, ranged, stream = proxy.records
    assert [bytes(r) for r in server.received[:2]] == [
        resend_request(3) + resend_request(5),
        HELLO_REQUEST + range_request(1, 5),
    ]
    assert (resend.counts, resend.bytes_to_client) == ({"swallow": 2}, 0)
    assert (ranged.counts, ranged.bytes_to_client) == ({"swallow": 5}, 16)
    assert stream.applied == []


def test_script_applies_faults_to_the_right_connection(server: FeedServer) -> None:
    """The Nth connection gets script[N]; None entries and later connections pass through."""
    script = [None, Faults(close_after=20), Faults(duplicate_at=frozenset({1}))]
    with Proxy(("127.0.0.1", server.port), script) as proxy:
        got = [fetch(proxy.port) for _ in range(4)]
        assert proxy.wait_idle()
        outcomes = [s.outcome for s in proxy.records]
    assert got == [BOOK, BOOK[:20], PACKETS[0] + PACKETS[1] + BOOK[17:], BOOK]
    assert outcomes == ["eof", "close", "eof", "eof"]


def test_script_may_be_a_callable_of_the_index(server: FeedServer) -> None:
    """A callable script chooses faults from the connection index."""
    with Proxy(
        ("127.0.0.1", server.port), lambda i: Faults(close_after=17) if i % 2 else None
    ) as proxy:
        got = [fetch(proxy.port) for _ in range(4)]
    assert got == [BOOK, PACKETS[0], BOOK, PACKETS[0]]


def test_faults_compose(server: FeedServer) -> None:
    """Delay, throttle, duplicate, corrupt and close act together on one connection."""
    faults = Faults(
        latency=0.05, bandwidth=5_000, duplicate_at=frozenset({0}), corrupt_at=(1,), close_after=40
    )
    with Proxy(("127.0.0.1", server.port), [faults]) as proxy:
        got = fetch(proxy.port)
        stats = only(proxy)
    bad = PACKETS[0][:1] + bytes([PACKETS[0][1] ^ 0xFF]) + PACKETS[0][2:]
    assert got == (bad + PACKETS[0] + PACKETS[1])[:40]
    assert sorted(stats.applied) == ["close", "corrupt", "duplicate"]


def test_hang_never_answers_nor_connects_upstream(server: FeedServer) -> None:
    """A hung connection swallows the requests, answers nothing and never reaches the server."""
    with Proxy(("127.0.0.1", server.port), [Faults(hang=True)]) as proxy:
        with connect(proxy.port, timeout=0.3) as sock:
            sock.sendall(STREAM_ALL_REQUEST)
            with pytest.raises(socket.timeout):
                sock.recv(100)
        stats = only(proxy)
    assert server.received == []
    assert (stats.outcome, stats.bytes_up, stats.requests) == ("hang", 2, {1: 1})


def test_upstream_down_closes_the_client() -> None:
    """If the upstream refuses, the client is dropped rather than left waiting."""
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead_port = spare.getsockname()[1]
    with Proxy(("127.0.0.1", dead_port)) as proxy, connect(proxy.port) as sock:
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
        assert only(proxy).outcome == "upstream_error"


def _open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_shutdown_is_prompt_and_leaks_nothing(server: FeedServer) -> None:
    """Leaving the block with open connections mid-fault is quick, frees the port and the fds."""
    baseline = _open_fds()
    script = [Faults(hang=True), Faults(bandwidth=100.0), Faults(swallow_resends=True)]
    clients = []
    with Proxy(("127.0.0.1", server.port), script) as proxy:
        port = proxy.port
        for request in (STREAM_ALL_REQUEST, STREAM_ALL_REQUEST, resend_request(1)):
            sock = connect(port)
            sock.sendall(request)
            clients.append(sock)
        deadline = time.monotonic() + 5
        while len(proxy.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        started = time.monotonic()
    assert time.monotonic() - started < 30  # only a hang: the outcomes below are the proof
    assert [s.outcome for s in proxy.records] == ["shutdown"] * 3
    assert not any(t.name == "packetcore-proxy" for t in threading.enumerate())
    for sock in clients:
        sock.settimeout(2.0)
        with contextlib.suppress(ConnectionResetError):
            read_to_eof(sock)
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    deadline = time.monotonic() + 5
    while _open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_fds() <= baseline


def test_faults_reject_impossible_values() -> None:
    """Negative counts, offsets and rates are refused when the script is written."""
    for bad in (
        {"close_after": -1},
        {"latency": -0.1},
        {"loss": 1.5},
        {"split": 0},
        {"loss": 0.9, "burst": 2.0},
        {"bandwidth": 0.0},
        {"corrupt_xor": 0},
        {"duplicate_at": frozenset({-1})},
    ):
        with pytest.raises(ValueError):
            Faults(**bad)


def _shape(faults: Faults, chunks: list[bytes]) -> tuple[bytes, Shaper]:
    """Run the pure shaper over server chunks after a hello."""
    shaper = Shaper(faults)
    shaper.hello()
    out = b"".join(bytes(shaper.feed(chunk)) for chunk in chunks) + bytes(shaper.finish())
    return out, shaper


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 16 + len(BOOK)), max_size=12),
    duplicate=st.frozensets(st.integers(0, N_PACKETS - 1), max_size=5),
    reorder=st.frozensets(st.integers(0, N_PACKETS - 1), max_size=5),
    corrupt=st.lists(st.integers(0, 16 + len(BOOK)), max_size=3),
    limit=st.none() | st.integers(1, 16 + len(BOOK) + 100),
)
def test_shaping_does_not_depend_on_how_the_stream_is_split(
    cuts: list[int],
    duplicate: frozenset[int],
    reorder: frozenset[int],
    corrupt: list[int],
    limit: int | None,
) -> None:
    """Packet faults give the same bytes whatever the TCP segmentation of the answer."""
    faults = Faults(
        duplicate_at=duplicate, reorder_at=reorder, corrupt_at=tuple(corrupt), close_after=limit
    )
    stream = INFO + BOOK
    bounds = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    whole, _ = _shape(faults, [stream])
    split, shaper = _shape(faults, chunks)
    assert split == whole
    assert shaper.info_frames == 1
    full = 16 + len(BOOK) + PACKET * len(duplicate)
    assert len(split) == (full if limit is None else min(limit, full))
    if not any(k < 16 for k in corrupt):
        assert split[:16] == INFO[: len(split)]


# -- the per-connection trace, in front of a real server ------------------------------------


@pytest.fixture(scope="module")
def book_server() -> Iterator[Server]:
    """The reference book (sequences 1..14) from a packetcore server, nothing dropped."""
    with Server(host="127.0.0.1", port=0, drop=0.0) as served:
        yield served


def traced(record: ConnectionRecord) -> Trace:
    """The trace of a finished connection's record."""
    assert record.trace is not None
    return record.trace


def wire_sequences(data: bytes) -> list[int]:
    """The sequences of the whole 17-byte packets in ``data``, in order."""
    return [int.from_bytes(data[at + 13 : at + 17], "big") for at in range(0, len(data), PACKET)]


def test_a_traced_fetch_shows_its_requests_and_packets_in_time(book_server: Server) -> None:
    with Proxy(("127.0.0.1", book_server.port), trace=True) as proxy:
        started = proxy.clock()
        got = packetcore.fetch("127.0.0.1", proxy.port)
        assert proxy.wait_idle()
        records = proxy.records
        assert abs(proxy.origin + started - time.monotonic()) < 30  # a monotonic reading
    assert got.complete and got.packets.sequence.tolist() == list(range(1, 15))
    packets: list[int] = []
    for record in records:
        trace = traced(record)
        assert trace.closed is not None and started <= trace.opened <= trace.closed
        times = [r.at for r in trace.requests] + [at for at, _ in trace.packets]
        assert all(trace.opened <= at <= trace.closed for at in times + trace.info_frames)
        assert [r.at for r in trace.requests] == sorted(r.at for r in trace.requests)
        assert [at for at, _ in trace.packets] == sorted(at for at, _ in trace.packets)
        assert trace.requests_total == sum(record.requests.values()) == len(trace.requests)
        assert trace.packets_total == len(trace.packets)
        assert len(trace.info_frames) == record.info_frames
        if trace.packets:  # each packet after the request that asked for it
            assert trace.requests and trace.requests[0].at <= trace.packets[0][0]
        packets += [sequence for _, sequence in trace.packets]
    calls = [r.call_type for record in records for r in traced(record).requests]
    assert HELLO in calls and STREAM_ALL in calls
    assert sorted(set(packets)) == list(range(1, 15))
    json.dumps([traced(record).as_dict() for record in records])  # plain values only


def test_a_trace_lacks_what_the_faults_dropped(book_server: Server) -> None:
    plan = FaultPlan(Faults(loss=0.3), seed=2)
    with Proxy(("127.0.0.1", book_server.port), plan, trace=True) as proxy:
        data = fetch(proxy.port)
        record = only(proxy)
    trace = traced(record)
    assert 0 < record.counts["loss"] < 14
    assert [sequence for _, sequence in trace.packets] == wire_sequences(data)
    assert len(trace.packets) == 14 - record.counts["loss"]
    assert trace.requests == [TracedRequest(trace.requests[0].at, STREAM_ALL, 0, 0)]
    assert trace.as_dict()["packets_total"] == len(trace.packets)


def test_a_trace_frames_whole_packets_from_one_byte_writes(book_server: Server) -> None:
    faults = Faults(split=1, latency=0.01)
    with Proxy(("127.0.0.1", book_server.port), faults, trace=True) as proxy:
        with connect(proxy.port) as sock:
            sock.sendall(HELLO_REQUEST + resend_request(3) + bytes((9, 0)) + range_request(5, 3))
            sock.shutdown(socket.SHUT_WR)  # the server answers, then closes
            data = read_to_eof(sock)
        record = only(proxy)
    trace = traced(record)
    assert record.largest_write == 1 and record.writes == len(data)
    assert len(trace.info_frames) == 1
    assert [sequence for _, sequence in trace.packets] == [3, 5, 6, 7]
    assert [at for at, _ in trace.packets] == sorted(at for at, _ in trace.packets)
    assert trace.info_frames[0] <= trace.packets[0][0]
    # Unknown callTypes are traced as framed, the range with its start and count.
    assert [(r.call_type, r.start, r.count) for r in trace.requests] == [
        (HELLO, 0, 0),
        (RESEND, 3, 1),
        (9, 0, 0),
        (RESEND_RANGE, 5, 3),
    ]


def test_a_trace_keeps_the_first_packets_and_counts_them_all() -> None:
    many = encode(synthetic(12_000, 3))
    with (
        Server(synthetic(12_000, 3), host="127.0.0.1", port=0, drop=0.0) as served,
        Proxy(("127.0.0.1", served.port), trace=True) as proxy,
    ):
        assert fetch(proxy.port) == many
        trace = traced(only(proxy))
    assert trace.packets_total == 12_000 and len(trace.packets) == MAX_EVENTS
    assert [sequence for _, sequence in trace.packets] == list(range(1, MAX_EVENTS + 1))
    small = Trace(0.0, cap=2)
    for k in range(5):
        small.request(float(k), Request(RESEND, k + 1, 1))
    small.written(1.0, many[: 3 * PACKET + 5])
    small.written(2.0, many[3 * PACKET + 5 : 4 * PACKET])
    assert small.requests_total == 5 and len(small.requests) == 2
    assert small.packets == [(1.0, 1), (1.0, 2)] and small.packets_total == 4


def test_no_trace_unless_asked(book_server: Server) -> None:
    with Proxy(("127.0.0.1", book_server.port)) as proxy:
        fetch(proxy.port)
        assert only(proxy).trace is None
