"""packetcore-fetch against real servers on loopback: the packetcore server and fakes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeBaseServer, FlakyProxy
from packetcore.base_mode import chance_unseen
from packetcore.cli.fetch import EXIT_INCOMPLETE, EXIT_STRICT
from packetcore.cli.fetch import main as fetch_main
from packetcore.client import FetchError, _coalesce, fetch, fetch_async, format_ranges
from packetcore.feeds import book, synthetic
from packetcore.protocol import FeedInfo, encode_info, range_request
from packetcore.recovery import FetchOptions, Link, Session
from packetcore.server import Server

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
    assert json.loads(output.read_bytes()) == book().to_records()
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
    output = tmp_path / "output.json"
    output.write_bytes(b"previous\n")
    with FakeBaseServer(answer_hello=True, answer_ranges=False, pause=0.0, seed=1) as server:
        code = _cli(server.port, "-o", str(output), "--timeout", "0.3", "--retries", "2")
        ranges_asked = sum(1 for call, _ in server.requests if call == 4)
    assert code == EXIT_INCOMPLETE
    assert output.read_bytes() == b"previous\n"
    partial = json.loads((tmp_path / "output.json.partial").read_bytes())
    assert 0 < len(partial) < 14
    got = Packets.from_records(partial)
    assert np.all(np.diff(got.sequence) > 0)
    assert got == book()[got.sequence - 1]
    err = capsys.readouterr().err
    assert "incomplete:" in err and "missing:" in err and "Traceback" not in err
    assert ranges_asked >= 3  # the first round and two retries


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


def test_output_to_stdout(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    with Server(host="127.0.0.1", port=0, seed=1) as server:
        assert _cli(server.port, "-o", "-") == 0
    captured = capsysbinary.readouterr()
    assert captured.out == to_json(book())
    assert b"-> stdout" in captured.err


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--protocol", "x"], ["--confidence", "2"], ["--timeout", "0"], ["--port", "x"]):
        with pytest.raises(SystemExit) as exc:
            fetch_main(args)
        assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


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
    assert "--max-passes" in capsys.readouterr().err


# -- pieces -------------------------------------------------------------------------------------


def test_chance_unseen() -> None:
    assert chance_unseen(0, 0, 0) == 1.0
    # The uniform prior makes it larger than the plain estimate (d/n)^k.
    for drops, chances, passes in [(25, 100, 1), (250, 1000, 10), (3, 14, 12)]:
        value = chance_unseen(drops, chances, passes)
        assert value > (drops / chances) ** passes
        assert value == pytest.approx(
            np.prod([(drops + 1 + j) / (chances + 2 + j) for j in range(passes)])
        )
    assert chance_unseen(500_000, 1_000_000, 20) == pytest.approx(0.5**20, rel=1e-3)


def test_coalesced_range_requests_match_the_protocol() -> None:
    ranges = np.array([[1, 2], [5, 1], [100, 3], [300, 1]], dtype=np.int64)
    assert _coalesce(ranges, 64).tolist() == [[1, 5], [100, 3], [300, 1]]
    assert _coalesce(ranges, 100).tolist() == [[1, 102], [300, 1]]
    assert _coalesce(ranges, 0).tolist() == ranges.tolist()
    from packetcore.client import _RANGE_DTYPE, RESEND_RANGE

    requests = np.zeros(len(ranges), dtype=_RANGE_DTYPE)
    requests["call"] = RESEND_RANGE
    requests["start"], requests["count"] = ranges[:, 0], ranges[:, 1]
    assert requests.tobytes() == b"".join(range_request(s, c) for s, c in ranges.tolist())
    assert format_ranges(((1, 3), (7, 7), (9, 12)), 2) == "1-3, 7, ... (1 more ranges)"


@pytest.mark.parametrize("step", [1, 2, 5, 16, 17, 33])
def test_info_frames_are_found_at_any_split(step: int) -> None:
    feed = synthetic(40, seed=1)
    wire = encode(feed)
    # packets 1..10, info, packets 11..40, info: as a range round ends.
    info = encode_info(FeedInfo(1, 40))
    stream = wire[: 17 * 10] + info + wire[17 * 10 :] + info
    session = Session(FetchOptions())
    link = Link(session, 1, recovering=True)
    link.expect_info = 2
    for at in range(0, len(stream), step):
        link.data_received(stream[at : at + step])
    assert link.infos == [FeedInfo(1, 40)] * 2 and link.expect_info == 0
    assert session.store.to_packets() == feed and link.decoder.pending == 0


def test_a_packet_named_pkci_is_not_an_info_frame() -> None:
    packet = Packets([b"PKCI"], [b"B"], [1], [2], [1])
    session = Session(FetchOptions())
    link = Link(session, 1, recovering=False)
    link.expect_info = 1
    stream = encode(packet) + encode_info(FeedInfo(1, 1))
    for byte in range(len(stream)):
        link.data_received(stream[byte : byte + 1])
    assert session.store.to_packets() == packet and link.infos == [FeedInfo(1, 1)]


def test_decoder_is_one_per_connection() -> None:
    # A sanity check of the engine behaviour the client relies on.
    decoder = Decoder()
    wire = encode(book())
    assert len(decoder.feed(wire[:20])) == 1 and decoder.pending == 3
