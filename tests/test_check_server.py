"""check_server: every scenario passes against packetcore-serve, and each broken server
fails the scenario that names its flaw, with the right verdict and reason."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import pytest
from brokenservers import CORRUPTED, EARLY_BYTES, LEAP, BrokenServer
from fakes import FakeBaseServer
from packetcore.check.model import CheckRun, Level, ScenarioResult, Verdict
from packetcore.check.server import (
    NOT_OFFERED,
    SERVER_SCENARIOS,
    check_server,
    check_server_async,
)
from packetcore.errors import UserError
from serverutil import ServeProcess

# The check's own logic: the engine under it is tested elsewhere, on both builds.
pytestmark = pytest.mark.engine_neutral

LIMIT = 2.0
EXTENSION = {s.name for s in SERVER_SCENARIOS if s.extension}
REQUIRED = [s.name for s in SERVER_SCENARIOS if s.level is Level.REQUIRED]
EVERY = [s.name for s in SERVER_SCENARIOS]


def results(run: CheckRun) -> dict[str, ScenarioResult]:
    return {r.name: r for r in run.results}


def failures(run: CheckRun) -> dict[str, str]:
    return {r.name: f"{r.verdict}: {r.reason}" for r in run.results if not r.passed}


def test_the_battery_is_named_and_ordered() -> None:
    names = [s.name for s in SERVER_SCENARIOS]
    assert len(set(names)) == len(names)
    assert names[0] == "stream-all" and names[-1] == "still-serving"
    assert {"hello", "ranges", "subscribe"} == EXTENSION
    hardening = {s.name for s in SERVER_SCENARIOS if s.level is Level.HARDENING}
    assert hardening == {"slow-reader", "garbage", "many-connections"}
    assert all(s.description for s in SERVER_SCENARIOS)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="book-drop-0.25"),
        pytest.param(("--feed", "synthetic:300", "--seed", "5", "--drop", "0.25"), id="300"),
        pytest.param(("--feed", "synthetic:300", "--drop", "0.5", "--keep-last"), id="drop-0.5"),
        pytest.param(("--live", "1000", "--seed", "2"), id="live"),
    ],
)
def test_packetcore_serve_passes_every_scenario(args: tuple[str, ...]) -> None:
    seen: list[tuple[str, int, int]] = []
    reported: list[str] = []
    with ServeProcess(*args) as server:
        run = check_server(
            "127.0.0.1",
            server.port,
            seed=3,
            level=Level.HARDENING,
            time_limit=LIMIT,
            on_start=lambda label, i, total: seen.append((label, i, total)),
            on_result=lambda result: reported.append(result.name),
        )
        assert server.alive()
    assert failures(run) == {}
    assert run.passed and run.kind == "server" and run.target == f"127.0.0.1:{server.port}"
    assert [r.name for r in run.results] == EVERY == reported
    assert seen == [(name, i, len(EVERY)) for i, name in enumerate(EVERY, 1)]
    by_name = results(run)
    assert by_name["hello"].reason.startswith("info frame: version 1, sequences 1..")
    assert NOT_OFFERED not in {r.reason for r in run.results}
    for result in run.results:
        assert result.seed == 3 and result.time_limit == LIMIT and result.duration > 0
        assert result.feed_first == 1 and result.feed_last >= 1
    assert run.results[-1].feed_last >= 14
    # The first stream-all's map covers the feed as then known, missing runs included.
    stream = by_name["stream-all"]
    assert sum(run.count for run in stream.sequence_map) == stream.feed_last
    if "--live" in args:
        assert by_name["subscribe"].reason.startswith("live: ")
    else:
        assert "then end of file" in by_name["subscribe"].reason


def test_a_base_server_passes_and_the_extension_is_not_offered() -> None:
    with FakeBaseServer() as server:
        run = check_server("127.0.0.1", server.port, level=Level.HARDENING, time_limit=LIMIT)
    assert failures(run) == {}
    assert [r.name for r in run.results] == EVERY
    assert results(run)["slow-reader"].reason.endswith("in small reads")
    for name in EXTENSION:
        assert results(run)[name].reason == NOT_OFFERED
    assert results(run)["still-serving"].feed_last == 14


def check_broken(flaw: str, **options: object) -> CheckRun:
    with BrokenServer(flaw) as server:
        settings: dict[str, object] = {"time_limit": LIMIT, **options}
        return check_server("127.0.0.1", server.port, **settings)


def test_a_corrupted_resend_is_wrong_and_named() -> None:
    run = check_broken("corrupt-resend", only=["stream-all", "resend", "still-serving"])
    by_name = results(run)
    assert failures(run).keys() == {"resend"}
    resend = by_name["resend"]
    assert resend.verdict is Verdict.WRONG
    assert resend.reason.startswith(f"resend of {CORRUPTED} returned another record")
    assert "price" in resend.reason
    difference = resend.details["first_difference"]
    assert difference["sequence"] == CORRUPTED
    assert difference["got"]["price"] == difference["expected"]["price"] + 1


def test_a_stream_closed_mid_packet_is_wrong() -> None:
    run = check_broken("close-early")
    stream = results(run)["stream-all"]
    assert stream.verdict is Verdict.WRONG
    assert stream.reason == (
        f"stream-all ended mid-packet after {EARLY_BYTES} bytes "
        f"({EARLY_BYTES // 17} whole packets and {EARLY_BYTES % 17} bytes)"
    )
    assert not run.passed


def test_a_server_that_dies_mid_stream_crashed() -> None:
    run = check_broken("dies-mid-stream", only=["stream-all", "still-serving"])
    stream, still = run.results
    assert stream.verdict is Verdict.CRASHED and still.verdict is Verdict.CRASHED
    assert stream.reason == (
        f"stream-all ended mid-packet after {EARLY_BYTES} bytes "
        f"({EARLY_BYTES // 17} whole packets and {EARLY_BYTES % 17} bytes); "
        "then the server refused connections"
    )


@pytest.mark.parametrize(
    ("flaw", "packet"),
    [("short-packets", 2), ("shifted", 4)],
)
def test_a_mis_framed_stream_is_wrong(flaw: str, packet: int) -> None:
    run = check_broken(flaw, only=["stream-all"])
    stream = results(run)["stream-all"]
    assert stream.verdict is Verdict.WRONG
    assert stream.reason.startswith(f"stream-all: packet {packet} (from byte {(packet - 1) * 17})")
    assert "mis-framed or invalid" in stream.reason


def test_a_server_that_needs_whole_requests_hangs_on_split_ones() -> None:
    run = check_broken("whole-requests-only")
    assert failures(run).keys() == {"split-requests"}
    split = results(run)["split-requests"]
    assert split.verdict is Verdict.HUNG
    assert split.reason == (
        f"stream-all sent byte by byte: no end of file within {LIMIT:g} s (nothing at all)"
    )


def test_a_server_that_dies_on_an_unknown_calltype_crashed() -> None:
    run = check_broken("dies-on-unknown")
    assert [r.name for r in run.results] == REQUIRED  # no hardening unless asked
    by_name = results(run)
    for name in ("stream-all", "stream-again", "resend", "split-requests", "pipelined"):
        assert by_name[name].passed, by_name[name].reason
    unknown = by_name["unknown-calltype"]
    assert unknown.verdict is Verdict.CRASHED
    assert unknown.reason == "the server stopped accepting connections after callType 0"
    still = by_name["still-serving"]
    assert still.verdict is Verdict.CRASHED
    assert still.reason.startswith("stream-all at the end: connection refused, the server is gone")


def test_a_hello_answered_with_no_info_frame_is_wrong() -> None:
    run = check_broken("bad-hello")
    assert failures(run).keys() == {"hello"}
    assert results(run)["hello"].reason == "hello: bad info frame magic b'PKCX'"
    for name in ("ranges", "subscribe"):
        assert results(run)[name].reason == "not offered: no valid info frame"


@pytest.mark.parametrize(
    ("flaw", "verdict", "because"),
    [("silent", Verdict.NO_OUTPUT, "without writing a byte"),
     ("mute", Verdict.HUNG, "no end of file within 2 s (nothing at all)")],
)  # fmt: skip
def test_a_server_that_serves_no_feed_passes_nothing_that_needs_one(
    flaw: str, verdict: Verdict, because: str
) -> None:
    run = check_broken(flaw, level=Level.HARDENING)
    by_name = results(run)
    assert by_name["stream-all"].verdict is verdict and because in by_name["stream-all"].reason
    # Every scenario that judges answers against the feed fails, with the reason, and
    # at once: the feed is tried once, not once a scenario.
    for name, result in by_name.items():
        if name not in ("stream-all", "still-serving"):
            assert result.verdict is verdict, (name, result.reason)
            assert result.reason.startswith("the feed is unknown, nothing to judge against")
            assert result.duration < 1.0, name
    assert not run.passed


def test_a_stream_that_leaps_to_the_highest_sequence_costs_memory_for_what_came() -> None:
    # Sequence 1, then 2**31-1: two billion unseen, counted and mapped as one run, in a
    # check limited to 1 GiB of address space beyond what it started with.
    with BrokenServer("leap") as server:
        process = subprocess.run(
            [sys.executable, "-c", LIMITED, str(server.port)], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout)
    stream = {r["name"]: r for r in report["results"]}["stream-all"]
    assert stream["verdict"] == "pass"
    assert stream["reason"].endswith("(2,147,483,645 not carried this pass)")
    assert stream["sequence_map"] == [["received", 1, 1], ["missing", 2, LEAP - 2],
                                      ["received", LEAP, 1]]  # fmt: skip
    missing = {r["name"]: r for r in report["results"]}["resend-missing"]
    # The leaping server answers no resend: the check waits its limit, then says so.
    assert missing["verdict"] == "hung" and "nothing within" in missing["reason"]


LIMITED = """
import json, resource, sys
from packetcore.check.server import check_server
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/statm") as statm:
    size = int(statm.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), hard))
run = check_server("127.0.0.1", int(sys.argv[1]), time_limit=2.0,
                   only=["stream-all", "stream-again", "resend-missing", "still-serving"])
print(json.dumps(run.as_dict()))
"""


@pytest.mark.parametrize(
    ("flaw", "because"),
    [("garbage", "stream-all: packet 1 (from byte 0) is mis-framed or invalid"),
     ("endless", "stream-all: more than 2,000,000 packets without end of file")],
)  # fmt: skip
def test_a_stream_that_never_ends_is_wrong_and_read_no_further(flaw: str, because: str) -> None:
    with BrokenServer(flaw) as server:
        run = check_server("127.0.0.1", server.port, only=["stream-all"], time_limit=20.0)
    (stream,) = run.results
    assert stream.verdict is Verdict.WRONG and stream.reason.startswith(because), stream.reason
    assert stream.duration < 15.0  # judged as it came, not at the time limit


def test_nothing_listening_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(UserError, match=rf"^nothing is listening on 127\.0\.0\.1:{port} "):
            check_server("127.0.0.1", port, time_limit=LIMIT)


def test_names_and_limits_are_checked_before_connecting() -> None:
    with pytest.raises(UserError, match="no server scenario named 'nonsense'") as caught:
        check_server("127.0.0.1", 1, only=["nonsense"])
    assert caught.value.exit_code == 2
    with pytest.raises(UserError, match="time limit must be above 0"):
        check_server("127.0.0.1", 1, time_limit=0)
    with pytest.raises(UserError, match=r"port 70000 is not in 1\.\.65535") as caught:
        check_server("127.0.0.1", 70000)
    assert caught.value.exit_code == 2
    with pytest.raises(UserError, match="--seed must be 0 or more"):
        check_server("127.0.0.1", 1, seed=-5)


def test_a_seed_decides_what_is_asked() -> None:
    picked = ["stream-all", "resend", "pipelined"]

    def asked(port: int, seed: int) -> list[object]:
        run = asyncio.run(check_server_async("127.0.0.1", port, seed=seed, only=picked))
        assert run.passed, failures(run)
        return [results(run)[name].details["asked"] for name in ("resend", "pipelined")]

    with ServeProcess("--drop", "0") as server:
        first = asked(server.port, 11)
        assert asked(server.port, 11) == first
        assert asked(server.port, 12) != first


def test_only_and_skip_and_hardening_when_named() -> None:
    with FakeBaseServer() as server:
        run = check_server(
            "127.0.0.1",
            server.port,
            only=["stream-all", "garbage", "still-serving"],
            skip=["still-serving"],
            time_limit=LIMIT,
        )
    assert [r.name for r in run.results] == ["stream-all", "garbage"]
    assert results(run)["garbage"].level is Level.HARDENING and run.passed


def test_answers_the_server_loses_are_hangs() -> None:
    # --loss drops packets of every answer, resends included: a resend owed is never
    # written, and the check says which one it waited for.
    with ServeProcess("--loss", "0.5", "--seed", "1") as server:
        run = check_server("127.0.0.1", server.port, only=["resend"], time_limit=LIMIT)
    resend = results(run)["resend"]
    assert resend.verdict is Verdict.HUNG
    assert resend.reason.startswith("resend of ")
    assert resend.reason.endswith(f": nothing within {LIMIT:g} s")
