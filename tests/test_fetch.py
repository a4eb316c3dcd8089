"""packetcore-fetch against real servers on loopback: the packetcore server and fakes."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import socket
import struct
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeBaseServer, FlakyProxy
from packetcore.cli.fetch import EXIT_INCOMPLETE, EXIT_STRICT
from packetcore.cli.fetch import main as fetch_main
from packetcore.client.base_mode import chance_unseen
from packetcore.client.fetch import FetchError, fetch, fetch_async
from packetcore.client.ranges import asked_for_again, coalesce, format_ranges, merge
from packetcore.client.session import FetchOptions, Link, Session
from packetcore.io.feeds import book, synthetic
from packetcore.protocol import (
    HELLO,
    RESEND_RANGE,
    STREAM_ALL,
    FeedInfo,
    RequestFramer,
    encode_info,
    range_requests,
)
from packetcore.server.server import Server
from serverutil import RawServer

from packetcore import Decoder, Packets, encode, to_json

# Short waits keep the failure paths fast; nothing here waits on a timer to succeed
# except the tests of timeouts themselves.
FAST = {"timeout": 0.5, "backoff": 0.02}
BIG = synthetic(100_000, seed=7)


@pytest.fixture(scope="module")
def big_server() -> Iterator[Server]:
    with Server(BIG, host="127.0.0.1", port=0, drop=0.5, seed=11) as server:
        yield server


def _free_port() -> int:
    # Bound and closed: nothing listens there for the moment.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(port: int, *args: str) -> int:
    return fetch_main(["--port", str(port), "--backoff", "0.02", *args])


# -- complete and byte-correct, both protocol modes ---------------------------------------


@pytest.mark.parametrize("protocol", ["auto", "extended", "base"])
def test_book(protocol: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "output.json"
    with Server(host="127.0.0.1", port=0, seed=1) as server:
        assert _cli(server.port, "--protocol", protocol, "-o", str(output)) == 0
    assert output.read_bytes() == to_json(book())
    # The records are the reference book's own, read here from its file, not by packetcore.
    reference = json.loads(
        resources.files("packetcore").joinpath("data/orderbook.json").read_text()
    )
    assert json.loads(output.read_bytes()) == sorted(reference, key=lambda r: r["packetSequence"])
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("14 packets (")
    assert str(output) in summary
    if protocol == "base":
        assert "base protocol; last sequence 14 inferred" in summary
    else:
        assert "extended protocol" in summary and "inferred" not in summary


@pytest.mark.parametrize("protocol", ["extended", "base"])
def test_100k_at_half_loss(protocol: str, big_server: Server, tmp_path: Path) -> None:
    output = tmp_path / "output.json"
    assert _cli(big_server.port, "--protocol", protocol, "-q", "-o", str(output)) == 0
    assert output.read_bytes() == to_json(BIG)


def test_100k_result_counts(big_server: Server) -> None:
    result = fetch(port=big_server.port)
    assert result.complete and result.mode == "extended" and not result.last_inferred
    assert result.packets == BIG
    assert (result.first, result.last) == (1, 100_000)
    assert result.passes == 1
    # About half the feed came by range requests; repeats asked for are not duplicates.
    assert 45_000 < result.recovered < 55_000
    assert result.duplicates == result.conflicts == result.invalid == 0
    assert result.received >= len(BIG)


def test_async_api_with_an_async_server() -> None:
    async def main() -> Packets:
        async with Server(host="127.0.0.1", port=0, seed=2) as server:
            result = await fetch_async(port=server.port)
            return result.packets

    assert asyncio.run(main()) == book()


def test_progress_is_reported(big_server: Server) -> None:
    seen: list[tuple[int, int | None]] = []
    fetch(port=big_server.port, progress=lambda held, total: seen.append((held, total)))
    assert seen[-1] == (100_000, 100_000)
    assert [held for held, _ in seen] == sorted(held for held, _ in seen)


# -- the last packet ------------------------------------------------------------------------


def test_extended_last_packet_dropped_by_every_stream() -> None:
    # drop=1: the stream-all brings nothing, the hello's last sequence is all there is.
    with Server(host="127.0.0.1", port=0, drop=1.0, seed=3) as server:
        result = fetch(port=server.port)
    assert result.complete and result.packets == book() and result.recovered == 14


def test_base_last_packet_dropped_by_the_first_passes() -> None:
    with FakeBaseServer(drop=0.25, drop_last_passes=4, seed=5) as server:
        result = fetch(port=server.port, **FAST)
    assert result.complete and result.mode == "base" and result.last_inferred
    assert result.packets == book()
    assert result.passes > 4
    assert result.chance_unseen is not None and result.chance_unseen < 1e-6
    assert server.bad_resends == []
    # Never a resend above the highest sequence seen, nor above 127.
    assert all(arg <= 14 for call, arg in server.requests if call == 2)


# -- the fake base server: recovery and split packets ---------------------------------------


def test_base_recovery_with_split_packets_and_no_answer_above_127() -> None:
    feed = synthetic(300, seed=3)
    with FakeBaseServer(feed, drop=0.3, pause=0.0, seed=9) as server:
        result = fetch(port=server.port, **FAST)
    assert result.complete and result.packets == feed and result.mode == "base"
    assert result.recovered > 0
    resent = [arg for call, arg in server.requests if call == 2]
    assert resent and max(resent) <= 127
    assert server.bad_resends == []
    assert (3, 0) in server.requests  # the hello was sent, and ignored
    assert server.pieces_written >= 3 * len(feed)


def test_packets_split_with_pauses_decode_whole() -> None:
    with FakeBaseServer(pieces=(1, 3, 2, 6, 5), pause=0.001, seed=4) as server:
        result = fetch(port=server.port, **FAST)
    assert result.complete and result.packets == book()
    assert result.invalid == 0


def test_a_server_that_never_answers_a_resend_is_left_to_passes() -> None:
    with FakeBaseServer(answer_resends=False, pause=0.0, seed=6) as server:
        result = fetch(port=server.port, timeout=0.2, backoff=0.02)
    assert result.complete and result.packets == book() and result.recovered == 0


def test_extended_server_that_never_answers_a_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ranges bring nothing: the fetch falls back to stream-all passes and completes.
    output = tmp_path / "output.json"
    output.write_bytes(b"previous\n")
    with FakeBaseServer(answer_hello=True, answer_ranges=False, pause=0.0, seed=1) as server:
        code = _cli(server.port, "-o", str(output), "--timeout", "0.3", "--retries", "2")
        ranges_asked = sum(1 for call, _ in server.requests if call == 4)
    err = capsys.readouterr().err
    assert code == 0, err
    assert output.read_bytes() == to_json(book())
    assert ranges_asked >= 1 and server.passes > 1
    assert "Traceback" not in err


def test_late_hello_answer_switches_to_the_extension() -> None:
    with FakeBaseServer(answer_hello=True, hello_delay=0.3, pause=0.0, seed=2) as server:
        result = fetch(port=server.port, hello_timeout=0.05, **FAST)
    assert result.mode == "extended" and result.complete and result.packets == book()
    assert server.passes == 1


# -- dropped resends, dying servers, no server ------------------------------------------------


def test_dropped_resends_extended() -> None:
    with Server(BIG, host="127.0.0.1", port=0, drop=0.5, drop_resends=0.5, seed=8) as server:
        result = fetch(port=server.port)
    assert result.complete and result.packets == BIG
    assert result.resend_rounds > 3


def test_dropped_resends_base() -> None:
    feed = synthetic(100, seed=1)
    with Server(feed, host="127.0.0.1", port=0, drop=0.3, drop_resends=0.5, seed=8) as server:
        result = fetch(port=server.port, protocol="base", timeout=0.2)
    assert result.complete and result.packets == feed


@pytest.mark.parametrize("protocol", ["extended", "base"])
def test_server_dies_mid_stream_then_returns(protocol: str) -> None:
    feed = synthetic(20_000, seed=2)
    with (
        Server(feed, host="127.0.0.1", port=0, drop=0.25, seed=4) as server,
        FlakyProxy(server.port, cut_after=17 * 5000 + 16 + 5, down_for=0.3) as proxy,
    ):
        result = fetch(port=proxy.port, protocol=protocol, timeout=2.0, backoff=0.05)
        assert proxy.cut == 1
    assert result.complete and result.packets == feed


def test_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    with pytest.raises(FetchError, match="refused"):
        fetch(port=port, retries=2, backoff=0.01)
    assert _cli(port, "--retries", "1") == 1
    err = capsys.readouterr().err
    assert "packetcore-fetch: error: cannot connect to 127.0.0.1:" in err
    assert "Traceback" not in err


def test_extended_against_a_base_server_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeBaseServer() as server:
        assert _cli(server.port, "--protocol", "extended", "--timeout", "0.2") == 1
    assert "did not answer the extension hello" in capsys.readouterr().err


# -- CLI: stdout, exit codes, conflicts, invalid packets ---------------------------------------


def test_output_to_stdout(capfdbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    with Server(host="127.0.0.1", port=0, seed=1) as server:
        assert _cli(server.port, "-o", "-") == 0
    captured = capfdbinary.readouterr()
    assert captured.out == to_json(book())
    assert b"-> stdout" in captured.err


@pytest.mark.parametrize(
    "args",
    [
        ["--protocol", "x"], ["--confidence", "2"], ["--timeout", "0"], ["--port", "x"],
        # --backoff 1e308 slept for ever; --confidence 0.5 truncated base fetches.
        ["--backoff", "1e308"], ["--backoff", "6"], ["--confidence", "0.5"],
        ["--deadline", "0"], ["--deadline", "nan"], ["--from", "0"], ["--to", "2147483648"],
        ["--format", "xml"],
    ],
)  # fmt: skip
def test_bad_options_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fetch_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_an_empty_slice_is_a_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch_main(["--from", "9", "--to", "3"]) == 2
    err = capsys.readouterr().err
    assert "9..3 is empty" in err and "Traceback" not in err


def test_a_tiny_timeout_says_timed_out(capsys: pytest.CaptureFixture[str]) -> None:
    # On 3.11 TimeoutError is an OSError: it used to read "cannot connect ...: TimeoutError".
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # a backlog that soon fills: connecting hangs
        port = listener.getsockname()[1]
        assert _cli(port, "--timeout", "0.000001", "--retries", "0", "-o", "-") == 1
    err = capsys.readouterr().err
    assert "TimeoutError" not in err and "Traceback" not in err


def test_unwritable_output_fails_before_fetching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()  # never contacted: the output check comes first
    assert _cli(port, "-o", str(tmp_path / "no" / "output.json")) == 1
    assert "cannot write the output" in capsys.readouterr().err


def test_conflicts_reported_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "output.json"
    with FakeBaseServer(conflict=True, pause=0.0, seed=3) as server:
        assert _cli(server.port, "-o", str(output), "--timeout", "0.5") == 0
        assert output.read_bytes() == to_json(book())
        assert "conflicts" in capsys.readouterr().err
        output.unlink()
        assert _cli(server.port, "-o", str(output), "--strict") == EXIT_STRICT
    assert not output.exists()
    assert "--strict" in capsys.readouterr().err


def test_invalid_packets_reported_never_written(caplog: pytest.LogCaptureFixture) -> None:
    with FakeBaseServer(invalid=True, pause=0.0, seed=3) as server:
        result = fetch(port=server.port, **FAST)
    assert result.complete and result.packets == book()
    assert result.invalid == 1 and result.invalid_offsets[0][1] == 0
    assert "invalid packet(s) at byte offset(s) 0" in caplog.text


def test_incomplete_base_fetch_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "output.json"
    with FakeBaseServer(drop=0.5, pause=0.0, seed=1) as server:
        code = _cli(server.port, "-o", str(output), "--max-passes", "2", "--timeout", "0.3")
    assert code == EXIT_INCOMPLETE
    assert not output.exists()
    assert (tmp_path / "output.json.partial").exists()
    # Either the gaps or the end of the feed are still open after the two passes.
    assert "after 2 passes" in capsys.readouterr().err


# -- pieces -------------------------------------------------------------------------------------


def test_chance_unseen() -> None:
    # Known values, worked by hand as fractions: with a uniform prior on the drop rate p,
    # d drops in n chances leave p ~ Beta(d + 1, n - d + 1), and k more passes all miss a
    # packet with chance E[p**k] = B(d + 1 + k, n - d + 1) / B(d + 1, n - d + 1).
    assert chance_unseen(0, 0, 0) == 1.0  # no pass yet: it is certainly unseen
    assert chance_unseen(0, 0, 1) == pytest.approx(1 / 2)  # E[p] of Uniform(0, 1)
    assert chance_unseen(25, 100, 1) == pytest.approx(13 / 51)  # 26/102
    assert chance_unseen(1, 2, 3) == pytest.approx(1 / 5)  # 2/4 * 3/5 * 4/6
    # The book after 12 passes with 3 of 14 dropped: (4 * ... * 15) / (16 * ... * 27)
    # = 15!**2 / (3! * 27!) = 7/267444, the 2.6e-05 the command prints.
    assert chance_unseen(3, 14, 12) == pytest.approx(7 / 267444)
    # Many chances: the prior no longer matters, the plain estimate (d/n)**k is reached.
    assert chance_unseen(500_000, 1_000_000, 20) == pytest.approx(0.5**20, rel=1e-3)


def test_coalesced_range_requests_match_the_protocol() -> None:
    ranges = np.array([[1, 2], [5, 1], [100, 3], [300, 1]], dtype=np.int64)
    assert coalesce(ranges, 64).tolist() == [[1, 5], [100, 3], [300, 1]]
    assert coalesce(ranges, 100).tolist() == [[1, 102], [300, 1]]
    assert coalesce(ranges, 0).tolist() == ranges.tolist()
    # The client's framing of many ranges at once is the protocol's framing of each.
    framed = b"".join(struct.pack(">BBII", 4, 0, s, c) for s, c in ranges.tolist())
    assert range_requests(ranges) == framed
    assert format_ranges(((1, 3), (7, 7), (9, 12)), 2) == "1-3, 7, ... (1 more ranges)"


def test_merge_sorts_and_joins_touching_ranges() -> None:
    rows = np.array([[10, 2], [1, 3], [4, 1], [20, 5], [22, 1], [30, 1]], dtype=np.int64)
    assert merge(rows).tolist() == [[1, 4], [10, 2], [20, 5], [30, 1]]
    assert merge(np.zeros((0, 2), dtype=np.int64)).tolist() == []


@pytest.mark.parametrize("step", [1, 2, 5, 16, 17, 33])
def test_info_frames_are_found_at_any_split(step: int) -> None:
    feed = synthetic(40, seed=1)
    wire = encode(feed)
    # packets 1..10, info, packets 11..40, info: as a range round ends.
    info = encode_info(FeedInfo(1, 40))
    stream = wire[: 17 * 10] + info + wire[17 * 10 :] + info
    out: list[Packets] = []
    session = Session(FetchOptions(), out.append)
    link = Link(session, 1, recovering=True)
    link.framer.expect()
    link.framer.expect()
    for at in range(0, len(stream), step):
        link.data_received(stream[at : at + step])
    assert link.infos == [FeedInfo(1, 40)] * 2 and link.framer.due == 0
    asyncio.run(session.flush(41))
    assert Packets.concat(out) == feed and link.decoder.pending == 0


def test_a_packet_named_pkci_is_not_an_info_frame() -> None:
    packet = Packets([b"PKCI"], [b"B"], [1], [2], [1])
    out: list[Packets] = []
    session = Session(FetchOptions(), out.append)
    link = Link(session, 1, recovering=False)
    link.framer.expect()
    stream = encode(packet) + encode_info(FeedInfo(1, 1))
    for byte in range(len(stream)):
        link.data_received(stream[byte : byte + 1])
    asyncio.run(session.flush(2))
    assert Packets.concat(out) == packet and link.infos == [FeedInfo(1, 1)]


def test_decoder_is_one_per_connection() -> None:
    # A sanity check of the engine behaviour the client relies on.
    decoder = Decoder()
    wire = encode(book())
    assert len(decoder.feed(wire[:20])) == 1 and decoder.pending == 3


# -- a server announcing a feed it cannot have ----------------------------------------------


class _BoastingServer:
    """A tiny extended server: the book's 14 packets, but an info frame naming ``last``.

    Answers the hello with ``PKCI``, version 1, first 1 and ``last`` as given (any
    uint32, checked by nobody), stream-all with the 14 packets, range requests with
    those of the 14 in range, and ignores resends.
    """

    def __init__(self, last: int) -> None:
        self.info = encode_info(FeedInfo(1, last))  # any uint32: encode_info checks nothing
        self.wire = encode(book())
        self.raw = RawServer(self._serve)
        self.port = self.raw.port

    def __enter__(self) -> _BoastingServer:
        self.raw.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.__exit__()

    def _serve(self, conn: socket.socket) -> None:
        framer = RequestFramer()
        while data := conn.recv(4096):
            for request in framer.feed(data):
                if request.call_type == RESEND_RANGE:
                    lo = max(request.start, 1) - 1
                    hi = min(request.start + request.count - 1, 14)
                    conn.sendall(self.wire[17 * lo : 17 * max(hi, lo)])
                elif request.call_type == HELLO:
                    conn.sendall(self.info)
                elif request.call_type == STREAM_ALL:
                    conn.sendall(self.wire)
                    return


def _no_asyncio_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "Fatal error" not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.timeout(20)
@pytest.mark.parametrize("protocol", ["auto", "extended"])
def test_info_frame_beyond_int32_fails_cleanly(
    protocol: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # last = 2**31 is a legal uint32 on the wire but no int32 packet sequence: the fetch
    # stops with a clear error, not an asyncio traceback and a baffling "incomplete".
    with _BoastingServer(2**31) as server:
        # A hang (retrying for ever) is caught by the timeout above.
        with pytest.raises(FetchError, match="bad answer to the extension hello"):
            fetch(port=server.port, protocol=protocol, **FAST)
        output = tmp_path / "output.json"
        assert _cli(server.port, "--protocol", protocol, "-o", str(output)) == 1
    err = capsys.readouterr().err
    assert "packetcore-fetch: error:" in err and "extension hello" in err
    assert "Traceback" not in err and not output.exists()
    _no_asyncio_traceback(caplog)


@pytest.mark.timeout(60)
def test_huge_announced_feed_fails_cleanly_in_bounded_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A plausible but huge last with only 14 packets behind it: the range requests
    # bring nothing, and the fetch reports the gap.  Memory must follow the gaps, not
    # the announced length: both engines' trackers grow with the sequences seen.
    last = 2**30
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with _BoastingServer(last) as server:
        started = time.monotonic()
        result = fetch(port=server.port, retries=2, **FAST)
        assert time.monotonic() - started < 30
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    # About 1 MiB is measured on either engine; a bitmap of the boast would be 128 MiB.
    assert grown < 64 * 1024, f"peak RSS grew by {grown // 1024} MiB"
    assert not result.complete and result.mode == "extended" and result.last == last
    assert result.packets == book() and result.missing == ((15, last),)
    assert "range requests with no packet" in result.reason
    _no_asyncio_traceback(caplog)


def test_any_failure_handling_data_drops_the_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever goes wrong while received data is handled stays out of asyncio: the
    # connection is dropped and the error kept; here the probe's, so the fetch fails.
    def refuse(self: Session, info: FeedInfo) -> None:
        raise RuntimeError("cannot take this feed")

    monkeypatch.setattr(Session, "note_info", refuse)
    with (
        Server(host="127.0.0.1", port=0, seed=1) as server,
        pytest.raises(FetchError, match="cannot take this feed"),
    ):
        fetch(port=server.port, **FAST)
    _no_asyncio_traceback(caplog)


def test_asked_for_again_counts_from_the_ranges() -> None:
    missing = np.array([[3, 2], [10, 1], [2**30, 5]], dtype=np.int64)
    asked = asked_for_again(missing, 1, 2**31 - 1)  # no array as long as the feed
    batch = Packets.from_records(
        [
            {"symbol": "AAAA", "buysellindicator": "B", "quantity": 1, "price": 1,
             "packetSequence": s}
            for s in (1, 2, 3, 4, 5, 9, 10, 11, 2**30, 2**30 + 5)
        ]
    )  # fmt: skip
    # Held when asked: 1, 2, 5, 9, 11, 2**30 + 5; missing then: 3, 4, 10, 2**30.
    assert asked(batch) == 6
    assert asked_for_again(np.zeros((0, 2), dtype=np.int64), 1, 14)(batch) == 8


def test_the_chance_is_one_number_in_summary_and_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It read 3e-05 in the summary and 2.6e-05 in the error of the same run.
    output = tmp_path / "output.json"
    with FakeBaseServer(drop=0.0, drop_last_passes=0, pause=0.0, seed=1) as server:
        code = _cli(server.port, "-o", str(output), "--max-passes", "2", "--timeout", "0.3")
    assert code == EXIT_INCOMPLETE
    err = capsys.readouterr().err
    summary = re.search(r"P\(later packet unseen\) ([0-9.e+-]+)\]", err)
    error = re.search(r"exists unseen is ([0-9.e+-]+),", err)
    assert summary and error, err
    assert summary.group(1) == error.group(1)


def test_the_prefix_waits_for_the_repair_round() -> None:
    # The stream brought 1..10 but 4, and a corrupted copy of 5.  The repair round asks
    # for 4..10 again (coalesced); once it delivers 4, the prefix must not run on to 5
    # before the round's own copy of 5 has been compared: then it is a conflict.
    from packetcore.client.extended import _behind

    feed = synthetic(10, seed=2)
    wire = encode(feed)
    bad = bytearray(wire[17 * 4 : 17 * 5])
    bad[12] ^= 0x40  # packet 5's price
    out: list[Packets] = []
    session = Session(FetchOptions(), out.append)
    stream = Link(session, 1, recovering=False)
    stream.data_received(wire[: 17 * 3] + bytes(bad) + wire[17 * 5 :])
    session.advance()
    assert Packets.concat(out).sequence.tolist() == [1, 2, 3]
    repair = Link(session, 2, recovering=True)
    repair.ask(b"", restart=True)
    with session.limited(_behind(repair, np.array([[4, 7]], dtype=np.int64))):
        repair.data_received(wire[17 * 3 : 17 * 4])  # packet 4 alone
        session.advance()
        assert Packets.concat(out).sequence.tolist() == [1, 2, 3, 4]
        repair.data_received(wire[17 * 4 : 17 * 5])  # the true 5: a conflict, held back
        session.advance()
    assert 5 in session.doubts and session.store.conflicts == 1
    assert Packets.concat(out).sequence.tolist() == [1, 2, 3, 4]


def test_a_strategys_bound_on_the_prefix_lasts_its_block_and_the_output_can_hold_it() -> None:
    # Strategies bound the session's prefix through Session.limited, never by writing
    # its fields; the bound before the block is back after it, nested or not.  While
    # the output is behind (flowing() false) nothing is passed on, unless the end of a
    # follow asks for everything contiguous (advance(behind=True)).
    out: list[Packets] = []
    flowing = [True]
    session = Session(FetchOptions(), out.append, flowing=lambda: flowing[0])
    stream = Link(session, 1, recovering=False)

    def written() -> list[int]:
        return Packets.concat(out).sequence.tolist() if out else []

    with session.limited(lambda: 2):
        with session.limited(lambda: 1):
            stream.data_received(encode(synthetic(4, seed=1)))
            session.advance()
            assert written() == [1]
        session.advance()
        assert written() == [1, 2]
    flowing[0] = False
    session.advance()
    assert written() == [1, 2] and not session.flowing()
    session.advance(behind=True)
    assert written() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "options",
    [{"port": "3000"}, {"start": 3.7}, {"start": True}, {"timeout": "1"}, {"retries": 1.5},
     {"host": 127}],
)  # fmt: skip
def test_options_of_the_wrong_type_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="must be"):
        FetchOptions(**options)  # type: ignore[arg-type]


def test_a_slice_outside_the_feed_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with Server(host="127.0.0.1", port=0, seed=1) as server:
        assert _cli(server.port, "--from", "100", "-o", "-") == 1
    err = capsys.readouterr().err
    assert "the slice 100..end starts past the feed's last sequence, 14" in err
    assert "bad answer" not in err and err.count("starts past") == 1  # said once


# -- issue 16: repair traffic, slices and their reports, the event loop ----------------------


@pytest.mark.timeout(60)
def test_repair_traffic_follows_what_is_missing() -> None:
    # At 25 % loss a gap is every few packets: joining every gap across the runs between
    # them asked for the whole feed again (4x what was missing).  The server counts what
    # it resent.
    feed = synthetic(100_000, seed=8)
    with Server(feed, host="127.0.0.1", port=0, drop=0.25, seed=12) as server:
        result = fetch(port=server.port, **FAST)
        resent = server.stats.packets_resent
    assert result.complete and result.packets == feed
    assert result.recovered > 20_000
    assert result.recovered <= resent <= 1.2 * result.recovered


def test_a_slice_of_a_finished_feed_is_no_snapshot_and_recovers_nothing_at_drop_0() -> None:
    feed = synthetic(1000, seed=4)
    with Server(feed, host="127.0.0.1", port=0, drop=0.0) as server:
        result = fetch(port=server.port, stop=10, **FAST)
        middle = fetch(port=server.port, start=5, stop=999, **FAST)
    assert result.complete and result.count == 10 and result.last == 10
    assert not result.snapshot and "meanwhile" not in result.summary()
    assert result.recovered == 0 and "(0 recovered by resend" in result.summary()
    assert middle.complete and middle.count == 995 and middle.recovered == 0
    assert middle.resend_rounds == 0 and not middle.snapshot


def test_a_lossy_slice_counts_only_its_repairs_as_recovered() -> None:
    # A slice is fetched by range requests, which drop_resends (not drop) thins out.
    with Server(BIG, host="127.0.0.1", port=0, drop=0.0, drop_resends=0.5, seed=3) as server:
        result = fetch(port=server.port, start=1001, stop=3000, **FAST)
    assert result.complete and result.packets == BIG[1000:3000]
    # Half the slice came with its first round, the rest by asking again.
    assert 500 < result.recovered < 1500 and result.resend_rounds >= 1


@pytest.mark.parametrize("protocol", ["base", "extended", "auto"])
def test_a_slice_past_the_end_of_the_feed_is_one_clear_error(
    protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A slice past the end of the default server's feed (the 14-packet book).
    with Server(host="127.0.0.1", port=0, drop=0.25, seed=2) as server:
        with pytest.raises(FetchError, match=r"the slice 100..200 starts past .*, 14\b"):
            fetch(port=server.port, protocol=protocol, deadline=30, start=100, stop=200, **FAST)
        assert _cli(server.port, "--protocol", protocol, "--from", "100", "--to", "200",
                    "--timeout", "0.5", "-o", "-") == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "starts past the feed's last sequence, 14" in err
    assert "must be in" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_fetch_inside_a_running_event_loop_points_at_fetch_async() -> None:
    async def inside() -> None:
        with pytest.raises(RuntimeError, match=r"await packetcore\.fetch_async"):
            fetch(port=_free_port(), **FAST)

    asyncio.run(inside())


def test_recovery_keeps_the_first_reason_it_stopped_short() -> None:
    from packetcore.client.outcome import Outcome

    outcome = Outcome("extended")
    outcome.stop("stopped short", unless_stopped=True)
    assert outcome.reason == "stopped short"
    outcome.stop("later", unless_stopped=True)
    assert outcome.reason == "stopped short"
    outcome.stop("the deadline of 1 s passed")
    assert outcome.reason == "the deadline of 1 s passed"
    outcome.count_pass()
    outcome.count_round()
    outcome.switch("base")
    outcome.known_end()
    assert (outcome.passes, outcome.resend_rounds, outcome.mode) == (1, 1, "base")
    assert outcome.chance is None and not outcome.end_inferred


def test_invalid_packets_are_warned_of_ten_times_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A long run through a corrupting network rejects packets all along: hundreds of
    # warning lines said nothing the summary's count does not.
    session = Session(FetchOptions(), lambda batch: None)
    with caplog.at_level("DEBUG", logger="packetcore.fetch"):
        for n in range(25):
            session.note_invalid(1, np.array([17 * n], dtype=np.int64))
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 11 and "counted in the summary" in warnings[-1].getMessage()
    assert sum(r.levelname == "DEBUG" for r in caplog.records) == 15
    assert session.invalid == 25


def test_copies_for_a_vote_end_with_the_answers_not_the_timeout() -> None:
    # A copy asked for of a sequence the feed lacks (a corrupted one) brings nothing: the
    # vote waited a whole --timeout for it, each round.  The hello after the requests
    # says when every answer is in.
    from packetcore.client import extended

    with Server(host="127.0.0.1", port=0, drop=0.0) as server:
        session = Session(FetchOptions(port=server.port, timeout=120.0), lambda batch: None)

        async def vote() -> list[Packets]:
            try:
                return await asyncio.wait_for(extended.copies(session, [3, 10**6]), 20)
            finally:
                session.close_all()

        batches = asyncio.run(vote())
    assert Packets.concat(batches).sequence.tolist() == [3]


def test_packets_in_doubt_are_bounded_by_a_share_of_the_feed_not_a_count() -> None:
    # 100,000 doubts was the end of any fetch: a 5M-packet feed through a network that
    # swaps 1 packet in 100 always failed.  A stream a quarter out of order still does.
    session = Session(FetchOptions(), lambda batch: None)
    with pytest.raises(FetchError, match="out of sequence order"):
        session.doubt(np.arange(1, 150_001, dtype=np.int32))
    long = Session(FetchOptions(), lambda batch: None)
    long.add(synthetic(1_000_000, seed=3), recovered=False)
    long.doubt(np.arange(1, 150_001, dtype=np.int32))
    assert len(long.doubts) == 150_000
    with pytest.raises(FetchError, match="out of sequence order"):
        long.doubt(np.arange(150_001, 260_001, dtype=np.int32))
