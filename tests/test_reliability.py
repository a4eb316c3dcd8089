"""Reliability: packetcore-fetch and packetcore-serve under faults, bad input and load.

Every fault test runs a real :class:`~packetcore.server.server.Server` on loopback with a
:class:`~packetcore.faults.proxy.Proxy` in front of it and holds the fetch to one rule: it ends
with the complete, byte-correct ``output.json``, or it exits non-zero with a clear
message and the missing ranges and leaves ``output.json`` as it was.  Never a wrong
packet, never a hang past the configured timeouts (``pytest.mark.timeout``).

What a client cannot detect: the protocol has no checksum, so a corrupted low-order
quantity or price byte in a packet received only once yields a valid packet with a
wrong payload.  The client detects what the protocol does reveal (an invalid symbol,
side or sequence, a sequence outside the feed, two copies of a sequence that differ,
sequences out of order on one connection) and what a single copy can be judged by (a
symbol no other packet carries, a quantity or price far above the rest:
packetcore.client.judge), and settles every such doubt by asking the server again;
:func:`test_corrupt_payload_seen_once_is_undetectable` pins the limit down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packetcore.cli.fetch import EXIT_INCOMPLETE, EXIT_STRICT
from packetcore.cli.fetch import main as fetch_main
from packetcore.client.fetch import fetch
from packetcore.errors import ProtocolError
from packetcore.faults.model import Faults
from packetcore.faults.proxy import Proxy
from packetcore.io.feeds import book, synthetic
from packetcore.io.output import partial_path
from packetcore.protocol import (
    hello_request,
    resend_request,
    stream_all_request,
)
from packetcore.server.server import Server
from serverutil import ServeProcess, range_request

import packetcore
from packetcore import Packets, encode, to_json
from packetcore.engine import implementation

#: The feed of the fault tests: big enough for several TCP reads, small enough to be quick.
FEED = synthetic(3000, seed=5)
FEED_JSON = to_json(FEED)
#: What output.json holds before each fetch: a fetch that fails must leave it so.
PREVIOUS = b'["the previous output"]\n'
INFO = 16  # the info frame answering the hello comes first on the probe connection
PACKET = 17
#: The reference capture's 14 packets, each whole and valid.
_CAPTURED = (Path(__file__).parent / "data" / "orderbook.bin").read_bytes()
_VALID_PACKETS = [_CAPTURED[at : at + PACKET] for at in range(0, len(_CAPTURED), PACKET)]
#: The fetch's own timeouts in these tests; every wall bound below follows from them.
TIMEOUT = 0.5
RETRIES = 2
CLI_TIMING = [
    "--timeout", str(TIMEOUT), "--retries", str(RETRIES), "--backoff", "0.02",
    "--hello-timeout", "0.2", "--max-passes", "40",
]  # fmt: skip
#: Where packetcore is imported from, for the subprocesses.
PACKAGE_ROOT = str(Path(packetcore.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def lossy() -> Iterator[Server]:
    """FEED at the reference's 25 % loss, seeded."""
    with Server(FEED, host="127.0.0.1", port=0, drop=0.25, seed=3) as server:
        yield server


@pytest.fixture(scope="module")
def lossless() -> Iterator[Server]:
    """FEED with nothing dropped: stream packet i is sequence i + 1, offsets are exact."""
    with Server(FEED, host="127.0.0.1", port=0, drop=0.0) as server:
        yield server


def only(faults: Faults, *connections: int) -> object:
    """Return a proxy script giving ``faults`` to the given connections (all if none)."""

    def script(index: int) -> Faults | None:
        return faults if not connections or index in connections else None

    return script


def fetch_cli(
    port: int, output: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run packetcore-fetch against ``port`` into ``output``; return (exit status, stderr)."""
    output.write_bytes(PREVIOUS)
    status = fetch_main(["--port", str(port), "-o", str(output), *CLI_TIMING, *args])
    return status, capsys.readouterr().err


def assert_outcome(status: int, err: str, output: Path, expected: int) -> None:
    """Hold a fetch to its expected exit status and to what that status promises.

    0: output.json is the feed, byte for byte.  Otherwise a clean, explained failure that
    leaves output.json as it was; on EXIT_INCOMPLETE the packets saved beside it are
    the feed's own.
    """
    assert status == expected, err
    if status == 0:
        assert output.read_bytes() == FEED_JSON
        return
    assert output.read_bytes() == PREVIOUS, "a failed fetch touched output.json"
    assert "packetcore-fetch: error:" in err
    if status == EXIT_INCOMPLETE:
        assert "incomplete:" in err and "left untouched" in err
        assert_partial_is_correct(partial_path(output))


def assert_partial_is_correct(partial: Path) -> None:
    """Check that an incomplete fetch saved its packets and that each is the feed's own."""
    assert partial.exists(), f"an incomplete fetch saved no {partial.name}"
    saved = packetcore.Packets.from_records(json.loads(partial.read_bytes()))
    if len(saved):
        assert saved == FEED[saved.sequence - 1]


def missing_listed(err: str) -> bool:
    """Whether the failure message names missing sequences as ranges."""
    return re.search(r"packet\(s\) missing: \d+", err) is not None


# -- fault injection: one test per fault ------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("protocol", ["auto", "base"])
@pytest.mark.parametrize("packets", [0, 1, 100, 2999])
def test_close_mid_packet(
    protocol: str, packets: int, lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stream connection ends 5 bytes into a packet; the fetch recovers the rest.
    head = INFO if protocol == "auto" else 0
    with Proxy(
        ("127.0.0.1", lossy.port), only(Faults(close_after=head + 17 * packets + 5), 0)
    ) as proxy:
        status, err = fetch_cli(proxy.port, tmp_path / "out.json", capsys, "--protocol", protocol)
    assert status == 0, err
    assert (tmp_path / "out.json").read_bytes() == FEED_JSON


@pytest.mark.timeout(20)
@pytest.mark.parametrize("protocol", ["auto", "base"])
@pytest.mark.parametrize("after", [0, 3, INFO + 17 * 40 + 9])
def test_reset(
    protocol: str, after: int, lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Proxy(("127.0.0.1", lossy.port), only(Faults(reset_after=after), 0, 1)) as proxy:
        status, err = fetch_cli(proxy.port, tmp_path / "out.json", capsys, "--protocol", protocol)
    assert status == 0, err
    assert (tmp_path / "out.json").read_bytes() == FEED_JSON


@pytest.mark.timeout(20)
def test_reset_every_connection_fails_cleanly(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stream is cut after 500 packets; every recovery connection 10 bytes in.
    output = tmp_path / "out.json"

    def script(index: int) -> Faults:
        return Faults(reset_after=INFO + 17 * 500 if index == 0 else 10)

    with Proxy(("127.0.0.1", lossy.port), script) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    assert_outcome(status, err, output, EXIT_INCOMPLETE)
    assert missing_listed(err)


@pytest.mark.timeout(20)
def test_delay_below_the_timeout(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 0.3 s latency on every connection, under the 0.5 s silence allowed.  The probe
    # waits longer for the hello so the extension is still found.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(latency=0.3))) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, "--hello-timeout", "1")
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON
    assert "extended protocol" in err


@pytest.mark.timeout(30)
def test_delay_past_the_timeout_fails_cleanly(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every answer comes 2 s late: longer than the 0.5 s timeout, so nothing is ever due
    # in time.  Whatever did arrive, the fetch must end by itself within its retries.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(latency=2.0))) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, "--protocol", "extended")
    # The hello's answer comes too late: no extended server, which --protocol extended
    # requires.
    assert_outcome(status, err, output, 1)
    assert "did not answer the extension hello" in err  # by itself: a hang hits the timeout


@pytest.mark.timeout(30)
def test_throttle(lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 20 kB/s on the stream (about 2.5 s for it): slow but never silent, so it completes.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(bandwidth=20_000), 0)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON


@pytest.mark.timeout(20)
def test_swallow_resends_fails_cleanly(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every range request goes unanswered: the fetch gives up after its retries and says
    # which sequences it lacks.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(swallow_resends=True))) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    assert_outcome(status, err, output, EXIT_INCOMPLETE)
    assert missing_listed(err)
    assert "unanswered" in err  # it gave up by itself: a hang hits the timeout above


@pytest.mark.timeout(20)
def test_swallow_resends_base_mode(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Base mode leaves what resends do not bring to further passes.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(swallow_resends=True))) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, "--protocol", "base")
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON


@pytest.mark.timeout(20)
@pytest.mark.parametrize("protocol", ["auto", "base"])
def test_duplicate(
    protocol: str, lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.json"
    faults = Faults(duplicate_at={0, 1, 2, 500, 1000, 2000})
    with Proxy(("127.0.0.1", lossy.port), only(faults, 0, 1, 2)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, "--protocol", protocol, "--strict")
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON


@pytest.mark.timeout(20)
@pytest.mark.parametrize("protocol", ["auto", "base"])
def test_reorder(
    protocol: str, lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.json"
    faults = Faults(reorder_at={0, 7, 500, 1001, 2000})
    with Proxy(("127.0.0.1", lossy.port), only(faults, 0, 1, 2)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, "--protocol", protocol, "--strict")
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON


@pytest.mark.timeout(20)
def test_hang(lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A peer that accepts and never answers: the fetch ends within its timeouts, exit != 0.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(hang=True))) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    # Nothing ever arrives, so there is nothing to save: a plain error, not "incomplete".
    assert_outcome(status, err, output, 1)
    assert "went silent" in err  # by itself, within its retries: a hang hits the timeout


@pytest.mark.timeout(20)
def test_hang_after_the_stream(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stream gets through; every recovery connection hangs.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), lambda i: Faults(hang=True) if i else None) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    assert_outcome(status, err, output, EXIT_INCOMPLETE)
    assert missing_listed(err)


# -- corrupt a byte ------------------------------------------------------------------------
# Offsets are into the probe connection: the 16-byte info frame, then packet i (sequence
# i + 1) at INFO + 17 * i; within a packet: symbol 0-3, side 4, quantity 5-8, price
# 9-12, sequence 13-16.


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("where", "xor"),
    [
        (0, 0xFF),  # symbol: no longer printable ASCII -> invalid
        (4, 0xFF),  # side: not B or S -> invalid
        (13, 0xFF),  # sequence's high byte: negative -> invalid
        (15, 0xFF),  # sequence: 10 becomes 65290, beyond the feed's last -> out of range
        (16, 0xFF),  # sequence's low byte: 10 becomes 245, a sequence the feed has
        (16, 0x01),  # 10 becomes 11, the next packet's sequence
    ],
    ids=["symbol", "side", "seq-high", "seq-out-of-range", "seq-in-range", "seq-next"],
)
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
@pytest.mark.parametrize("protocol", ["auto", "base"])
def test_corrupt_detectable(
    where: int,
    xor: int,
    strict: bool,
    protocol: str,
    lossless: Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "out.json"
    head = INFO if protocol == "auto" else 0
    faults = Faults(corrupt_at=(head + 17 * 9 + where,), corrupt_xor=xor)
    extra = ("--protocol", protocol, "--strict") if strict else ("--protocol", protocol)
    bad_requests = lossless.stats.bad_requests  # the fixture is shared: count the change
    with Proxy(("127.0.0.1", lossless.port), only(faults, 0)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, *extra)
        assert proxy.records[0].counts.get("corrupt")
    # Lenient: every doubt is settled by asking again, and the right packet is written.
    # Strict: a packet that was invalid, conflicting or judged corrupt refuses the fetch:
    # in extended mode a sequence beyond the announced last (65290) is one; in base mode
    # no last is announced, but one pass ending on 65290 while every other ended on 3000
    # is weighed as a corruption, left out, and so refused too.
    expected = EXIT_STRICT if strict else 0
    assert_outcome(status, err, output, expected)
    if protocol == "base":
        # The reference exchange crashes on a resend of a sequence it lacks: a corrupted
        # sequence must never lead a base-mode fetch to ask for one.
        assert lossless.stats.bad_requests == bad_requests


@pytest.mark.timeout(20)
@pytest.mark.parametrize("drop", [0.0, 0.25])
def test_corrupt_sequence_never_resent_in_base_mode(drop: float) -> None:
    # Packet 10's sequence reads 122 on the first pass of the 14-packet book: a packet
    # that decodes as valid, but comes out of order (11 follows it), so it is in doubt.
    # Neither 122 nor the gap 15..121 below it may be resent (each a crash of the
    # reference exchange); 10 may, being below the trusted 14.  Whatever the fetch then
    # concludes about 122, every packet it keeps is the book's own.
    faults = Faults(corrupt_at=(PACKET * 9 + 16,), corrupt_xor=10 ^ 122)
    with Server(host="127.0.0.1", port=0, drop=drop, seed=4) as server:
        with Proxy(("127.0.0.1", server.port), only(faults, 0)) as proxy:
            result = fetch(
                port=proxy.port, protocol="base", timeout=TIMEOUT, retries=RETRIES,
                backoff=0.02, max_passes=40,
            )  # fmt: skip
            assert proxy.records[0].counts.get("corrupt")
        assert server.stats.bad_requests == 0
    assert 122 not in result.packets.sequence.tolist()
    assert result.packets == book()[result.packets.sequence - 1]
    assert result.complete or result.reason


@pytest.mark.timeout(20)
def test_corrupt_last_sequence_never_resent_in_base_mode() -> None:
    # The last packet of the first pass reads 126 instead of 14: nothing follows it, so
    # nothing shows it out of order.  Until a second pass ends on it, the fetch must not
    # take it as proof that 15..125 exist (each resend of them crashes the reference).
    faults = Faults(corrupt_at=(PACKET * 13 + 16,), corrupt_xor=14 ^ 126)
    with Server(host="127.0.0.1", port=0, drop=0.0) as server:
        with Proxy(("127.0.0.1", server.port), only(faults, 0)) as proxy:
            result = fetch(
                port=proxy.port, protocol="base", timeout=TIMEOUT, retries=RETRIES,
                backoff=0.02, max_passes=6,
            )  # fmt: skip
            assert proxy.records[0].counts.get("corrupt")
        assert server.stats.bad_requests == 0
    # One pass ended on 126, every other on 14: the bogus end is judged a corruption.
    assert result.complete and result.packets == book() and result.corrupt == 1


@pytest.mark.timeout(20)
def test_corrupt_payload_seen_once_is_undetectable(lossless: Server) -> None:
    # The protocol carries no checksum: a flipped low quantity byte in the one copy of a
    # packet the fetch receives is a valid packet with a wrong quantity, and nothing
    # tells the client.  This pins the limit down so it is never claimed otherwise.
    faults = Faults(corrupt_at=(INFO + 17 * 9 + 8,), corrupt_xor=0x01)
    with Proxy(("127.0.0.1", lossless.port), only(faults, 0)) as proxy:
        result = fetch(port=proxy.port, timeout=TIMEOUT, retries=RETRIES)
    assert result.complete and result.conflicts == 0 and result.invalid == 0
    assert result.packets.quantity[9] == FEED.quantity[9] ^ 1  # wrong, and undetected


@pytest.mark.timeout(20)
def test_corrupt_payload_seen_twice_is_settled(
    lossless: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The corrupted copy arrives first, a true copy later: a conflict.  The fetch asks the
    # server once more and keeps the value two copies agree on; --strict refuses.
    output = tmp_path / "out.json"
    at = INFO + 17 * 9 + 8
    faults = Faults(corrupt_at=(at,), corrupt_xor=0x01, duplicate_at={9})
    # The duplicate is sent after the packet: corrupt the first copy only.
    with Proxy(("127.0.0.1", lossless.port), only(faults, 0)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON
    assert "1 conflicts" in err
    with Proxy(("127.0.0.1", lossless.port), only(faults, 0)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys, "--strict")
    assert status == EXIT_STRICT and output.read_bytes() == PREVIOUS


# -- bad input: the server under arbitrary request bytes -------------------------------------

_VALID_REQUESTS = [
    stream_all_request(),
    hello_request(),
    resend_request(3),
    resend_request(14),
    resend_request(200),
    range_request(1, 14),
    range_request(0, 0xFFFFFFFF),
    range_request(0xFFFFFFFF, 0xFFFFFFFF),
]
#: A request stream: arbitrary bytes mixed with real requests, so both get exercised.
_REQUEST_BYTES = st.lists(
    st.one_of(st.binary(max_size=24), st.sampled_from(_VALID_REQUESTS)), max_size=8
).map(b"".join)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Server]:
    """The book at the reference's loss, with a short idle timeout."""
    with Server(host="127.0.0.1", port=0, seed=5, idle_timeout=2.0) as server:
        yield server


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _converse(port: int, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` one by one with Nagle off, half-close, return all that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = bytearray()
        with contextlib.suppress(OSError):  # the server may close on a bad callType
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(1 << 16):
                received += data
        return bytes(received)


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    conversations=st.lists(
        st.tuples(_REQUEST_BYTES, st.lists(st.integers(0, 200), max_size=6)),
        min_size=1,
        max_size=6,
    )
)
def test_server_survives_arbitrary_requests(
    fuzzed: Server, conversations: list[tuple[bytes, list[int]]]
) -> None:
    # Every conversation runs at once on its own connection, split at arbitrary bytes.
    answers: list[bytes] = [b""] * len(conversations)

    def talk(index: int, data: bytes, cuts: list[int]) -> None:
        answers[index] = _converse(fuzzed.port, _splits(data, cuts))

    threads = [
        threading.Thread(target=talk, args=(i, data, cuts))
        for i, (data, cuts) in enumerate(conversations)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answer in answers:
        _assert_whole_answers(answer)
    result = fetch(port=fuzzed.port, timeout=2.0)
    assert result.complete and to_json(result.packets) == to_json(book())


def _assert_whole_answers(answer: bytes) -> None:
    """Check that ``answer`` is info frames and whole, true packets of the book only."""
    records = set(_VALID_PACKETS)  # the reference capture's, not packetcore's encoding
    info = b"PKCI\0\0\0\x01\0\0\0\x01\0\0\0\x0e"  # version 1, sequences 1..14
    at = 0
    while at < len(answer):
        if answer.startswith(info, at):
            at += INFO
            continue
        assert answer[at : at + PACKET] in records, f"bad answer bytes at offset {at}"
        at += PACKET


def _bad_field(packet: bytes) -> str | None:
    """Name the first invalid field of a packet as PROTOCOL.md defines them, or None.

    Written from the protocol, not the engine: a symbol is 1-4 printable ASCII bytes
    padded with NULs at the end, the side is B or S, the sequence an int32 from 1.
    """
    name = packet[:4].rstrip(b"\0")
    if not name or any(not 0x20 <= byte < 0x7F for byte in name):
        return "symbol"
    if packet[4:5] not in (b"B", b"S"):
        return "buysellindicator"
    if int.from_bytes(packet[13:17], "big", signed=True) < 1:
        return "packetSequence"
    return None


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.one_of(st.binary(max_size=60), st.sampled_from(_VALID_PACKETS)), max_size=12)
)
def test_decoder_arbitrary_bytes(engine: ModuleType, chunks: list[bytes]) -> None:
    # Lenient: never raises, and the chunks decode exactly as their concatenation does.
    decoder = engine.Decoder()
    batches = [decoder.feed(chunk) for chunk in chunks]
    data = b"".join(chunks)
    whole = len(data) - len(data) % PACKET
    assert decoder.pending == len(data) - whole
    assert Packets.concat(batches) == engine.decode(data[:whole])
    # Strict: it raises exactly when a whole packet is invalid, at the first such packet,
    # with the documented ProtocolError, and the failed feed consumes nothing.
    expected = next(
        ((at, field) for at in range(0, whole, PACKET) if (field := _bad_field(data[at:]))),
        None,
    )
    strict = engine.Decoder(strict=True)
    raised = None
    for chunk in chunks:
        pending = strict.pending
        try:
            strict.feed(chunk)
        except ProtocolError as exc:
            raised = (exc.offset, exc.field)
            assert strict.pending == pending
            break
    assert raised == expected
    # One-shot decoding refuses a partial packet with the documented ValueError.
    if len(data) % PACKET:
        with pytest.raises(ValueError, match="whole number"):
            engine.decode(data)


# -- hostile clients -------------------------------------------------------------------------

HOSTILE_FEED = 10_000_000
HOSTILE_IDLE = 4.0
#: How much a server may grow while hostile clients hold connections: generous, a few
#: megabytes are expected (one stream chunk is 1.1 MB); a leak grows by hundreds.
HOSTILE_GROWTH = 64 << 20


def _range_ok(port: int, expected: bytes) -> bool:
    """Ask for packets 1..1000 by range; return whether they came back byte-exact."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello_request() + range_request(1, 1000))
        want = INFO + len(expected)
        data = bytearray()
        while len(data) < want and (chunk := sock.recv(1 << 16)):
            data += chunk
    return bytes(data[INFO:]) == expected


# Once, on the compiled engine (engine_neutral): at --drop 0 the server's engine only
# encodes the feed as it starts (3.7 s of 10,000,000 packets on the twin); the clients
# meet its connections, the same Python on both.
@pytest.mark.engine_neutral
@pytest.mark.timeout(90)
def test_hostile_clients_memory_bounded_and_others_served() -> None:
    feed = synthetic(HOSTILE_FEED, seed=9)
    expected = encode(feed[:1000])
    del feed
    args = ["--feed", f"synthetic:{HOSTILE_FEED}", "--seed", "9", "--drop", "0"]
    with ServeProcess(*args, "--idle-timeout", str(HOSTILE_IDLE)) as server:
        assert _range_ok(server.port, expected)
        baseline = server.memory()
        sockets: list[socket.socket] = []

        def connect(buffer: int | None = None) -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if buffer is not None:  # a small window: the server's writes block sooner
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            sockets.append(sock)
            return sock

        try:
            silent = connect()  # connects and sends nothing
            for _ in range(4):  # ask for the 10,000,000-packet stream, never read
                connect(4096).sendall(stream_all_request())
            pipeliner = connect(4096)  # 100,000 resends, answers never read
            pipeliner.settimeout(2.0)
            with contextlib.suppress(TimeoutError, socket.timeout):
                pipeliner.sendall(resend_request(7) * 100_000)
            # One byte a second: the hello, then half a request, then nothing more.
            trickle = connect()
            for byte in (b"\x03", b"\x00", b"\x02"):
                trickle.sendall(byte)
                assert _range_ok(server.port, expected), "a client went unserved"
                time.sleep(1.0)  # the hostile pace itself, not a wait for an event
            assert trickle.recv(INFO)[:4] == b"PKCI"  # the hello was framed and answered
            grown = server.memory() - baseline
            assert grown < HOSTILE_GROWTH, f"the server grew by {grown >> 20} MiB"
            # The idle timeout then closes the silent client (EOF, no answer).
            started = time.monotonic()
            assert silent.recv(1) == b""
            assert time.monotonic() - started < HOSTILE_IDLE + 30  # only a hang
            assert _range_ok(server.port, expected)
            assert server.alive()
        finally:
            for sock in sockets:
                sock.close()
    print(
        f"\nhostile clients: server RSS {baseline >> 20} MiB serving {HOSTILE_FEED} packets, "
        f"+{grown >> 20} MiB with 7 hostile connections"
    )


# -- output safety: SIGKILL while writing --------------------------------------------------

#: Big enough that a kill lands while the output is written.  The twin fetches and
#: writes some three times slower: a third of the feed takes it as long (its seven
#: fetches of 300,000 took 7 to 11 s).
KILL_FEED = synthetic(300_000 if implementation == "cython" else 100_000, seed=2)


@pytest.mark.timeout(90)
def _written(paths: Iterable[Path]) -> bool:
    """Return whether any of ``paths`` holds bytes (one may vanish as it is looked at)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > 0:
                return True
    return False


def test_sigkill_never_tears_the_output(tmp_path: Path) -> None:
    output = tmp_path / "output.json"
    document = to_json(KILL_FEED)
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    rng = random.Random(20)
    with Server(KILL_FEED, host="127.0.0.1", port=0, drop=0.25, seed=1) as server:
        command = [
            sys.executable, "-m", "packetcore", "fetch", "--port", str(server.port),
            "-o", str(output), "-q",
        ]  # fmt: skip
        # One full run measures how long a fetch takes, and checks the file it writes.
        output.write_bytes(PREVIOUS)
        started = time.monotonic()
        subprocess.run(command, env=env, check=True, timeout=60)
        duration = time.monotonic() - started
        assert output.read_bytes() == document
        outcomes = {"previous": 0, "new": 0}
        mid_write = 0
        for attempt in range(6):
            output.write_bytes(PREVIOUS)
            for stray in tmp_path.glob(".output.json.*"):
                stray.unlink()
            proc = subprocess.Popen(command, env=env)
            if attempt % 2:
                # Aim at the write itself: kill once the temporary file holds bytes (it
                # is made before the fetch connects, and grows as packets come).
                # (Another process's file: there is no event to await, so poll.)
                deadline = time.monotonic() + 4 * duration + 5
                while proc.poll() is None and time.monotonic() < deadline:
                    if _written(tmp_path.glob(".output.json.*")):
                        proc.send_signal(signal.SIGKILL)
                        mid_write += 1
                        break
                    time.sleep(0.0005)
            else:
                try:
                    proc.wait(rng.uniform(0.5, 1.2) * duration)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            proc.wait()
            content = output.read_bytes()
            assert content in (PREVIOUS, document), "output.json is torn"
            # A killed writer may leave its temporary file; never anything else.
            strays = {p.name for p in tmp_path.iterdir()} - {output.name}
            assert all(name.startswith(".output.json.") for name in strays), strays
            outcomes["previous" if content == PREVIOUS else "new"] += 1
    print(f"\nSIGKILL during the fetch: {outcomes}, {mid_write} while writing the output")
    assert mid_write >= 1, "no kill landed while the output was being written"


@pytest.mark.timeout(20)
def test_hung_probe_is_not_taken_for_a_base_server(
    lossy: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first connection (the hello probe) hangs: silence, but no evidence of a base
    # server.  The next connection asks for the extension again and gets it.
    output = tmp_path / "out.json"
    with Proxy(("127.0.0.1", lossy.port), only(Faults(hang=True), 0)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
    assert status == 0, err
    assert output.read_bytes() == FEED_JSON
    assert "[extended protocol]" in err


# -- issue 16: what a single copy is judged by; a dead upstream ------------------------------


@pytest.mark.timeout(20)
def test_corrupt_symbol_or_high_byte_seen_once_is_asked_again(
    lossless: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Packet 1000's symbol loses a bit of its first letter (still printable: a valid
    # packet, but a symbol no other packet of the feed carries), packet 2000's quantity
    # gains one in its high byte (16 million more than any other): each arrives once.
    # Both are doubted, asked for again and voted on: the output is the feed.
    output = tmp_path / "out.json"
    faults = Faults(corrupt_at=(INFO + 17 * 999, INFO + 17 * 1999 + 5), corrupt_xor=0x01)
    with Proxy(("127.0.0.1", lossless.port), only(faults, 0)) as proxy:
        status, err = fetch_cli(proxy.port, output, capsys)
        assert proxy.records[0].counts.get("corrupt") == 2
    assert_outcome(status, err, output, 0)
    # The two asked for again rest on two copies; every other packet came once.
    assert f"{len(FEED) - 2} on one copy only" in err


@pytest.mark.timeout(20)
def test_single_copy_counts_what_no_second_copy_confirmed(lossless: Server) -> None:
    once = fetch(port=lossless.port, timeout=TIMEOUT, retries=RETRIES)
    faults = Faults(duplicate_at=set(range(100)))
    with Proxy(("127.0.0.1", lossless.port), only(faults, 0)) as proxy:
        twice = fetch(port=proxy.port, timeout=TIMEOUT, retries=RETRIES)
    assert once.complete and once.single_copy == len(FEED)
    assert twice.complete and twice.packets == FEED and twice.single_copy == len(FEED) - 100


@pytest.mark.timeout(30)
@pytest.mark.parametrize("protocol", ["auto", "base", "extended"])
def test_a_server_that_closes_without_answering_is_named(protocol: str) -> None:
    # A proxy whose upstream is gone accepts each connection and closes it at once.  The
    # fetch says so after --retries such connections (not 100 passes later).
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        dead = hole.getsockname()[1]
        with Proxy(("127.0.0.1", dead)) as proxy:
            with pytest.raises(packetcore.FetchError, match="closed the connection without"):
                fetch(port=proxy.port, protocol=protocol, timeout=TIMEOUT, retries=RETRIES,
                      backoff=0.02)  # fmt: skip
            connections = proxy.stats.connections
    assert connections <= RETRIES + 2


@contextlib.contextmanager
def _resetting_server() -> Iterator[tuple[int, list[int]]]:
    """A server that takes each connection's first bytes and resets it (RST), answering
    nothing; yields its port and the count of connections it reset."""
    reset: list[int] = [0]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(1)  # the hello (or stream-all) arrived: leave the rest unread
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            reset[0] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], reset
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("protocol", ["auto", "base", "extended"])
def test_a_server_that_resets_without_answering_is_named_as_one_that_closes(
    protocol: str,
) -> None:
    # The proxy above resets, rather than closes, when the hello is still unread: the
    # fetch said "ended early (Connection reset by peer)" then.  Both are one failure.
    with (
        _resetting_server() as (port, reset),
        pytest.raises(packetcore.FetchError, match="closed the connection without"),
    ):
        fetch(port=port, protocol=protocol, timeout=TIMEOUT, retries=RETRIES, backoff=0.02)
    assert 1 <= reset[0] <= RETRIES + 2
