"""``packetcore-fetch --events FILE``: every gap, repair round and pass of a fetch, as it happens.

The gaps a fetch must name are computed here independently of the fetch and of the
server's loss code: stream-all number N of a server seeded S drops each packet whose
16-bit draw from ``SeedSequence(S, spawn_key=(0, N))`` (PCG64) is below ``drop * 2**16``
(the table of streams in ``packetcore.seeds``; one chunk of draws for a feed of fewer
than 65,536 packets).  A gap is a run of sequences a stream left missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FlakyProxy
from packetcore.cli.events import EventsFile
from packetcore.cli.fetch import main as fetch_main
from packetcore.client.fetch import FetchError, fetch
from packetcore.faults.model import FaultPlan, Faults
from packetcore.faults.proxy import Proxy
from packetcore.io.feeds import book, synthetic
from packetcore.server.server import Server
from serverutil import ServeProcess

FEED = synthetic(30_000, seed=5)
DROP, SEED = 0.05, 21


def dropped_by(stream: int, size: int, drop: float, seed: int) -> npt.NDArray[np.int64]:
    """Return the sequences (1..size) stream-all number ``stream`` drops."""
    sequence = np.random.SeedSequence(seed, spawn_key=(0, stream))
    generator = np.random.PCG64(sequence)
    draws = generator.random_raw((size + 3) // 4).view(np.uint16)[:size]
    return np.flatnonzero(draws < round(drop * 65536)).astype(np.int64) + 1


def runs(sequences: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Return ascending ``sequences`` as inclusive runs ``(first, last)``."""
    if not len(sequences):
        return []
    breaks = np.flatnonzero(np.diff(sequences) > 1)
    firsts = sequences[np.concatenate(([0], breaks + 1))]
    lasts = sequences[np.concatenate((breaks, [len(sequences) - 1]))]
    return list(zip(firsts.tolist(), lasts.tolist(), strict=True))


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kind(said: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in said if e["event"] == name]


def test_the_events_name_every_gap_the_stream_left_and_its_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, output = tmp_path / "events.ndjson", tmp_path / "out.bin"
    with Server(FEED, host="127.0.0.1", port=0, drop=DROP, seed=SEED) as server:
        status = fetch_main(["--port", str(server.port), "--events", str(path), "-o", str(output)])
        quiet = fetch("127.0.0.1", server.port)  # stream-all number 1, no events
    err = capsys.readouterr().err
    assert status == 0, err
    dropped = dropped_by(0, len(FEED), DROP, SEED)
    expected = runs(dropped)
    assert len(expected) > 500, "the seeded loss left few gaps: the test proves little"

    said = read_events(path)
    gaps = kind(said, "gap")
    assert sorted((g["first"], g["last"]) for g in gaps) == expected  # each, and only them
    for gap in gaps:  # each asked for by ranges, and repaired after it was seen and asked
        assert gap["how"] == "range"
        assert gap["repaired"] is not None
        assert 0 <= gap["seen"] <= gap["asked"] <= gap["repaired"]
    assert [g["repaired"] for g in gaps] == sorted(g["repaired"] for g in gaps)

    rounds = kind(said, "round")
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1)) and rounds
    assert all(r["how"] == "range" and 1 <= r["ranges"] <= r["sequences"] for r in rounds)
    assert sum(r["sequences"] for r in rounds) >= len(dropped)  # all asked for, some again
    [stream] = kind(said, "pass")
    kept = np.setdiff1d(np.arange(1, len(FEED) + 1), dropped)
    assert (stream["pass"], stream["packets"], stream["highest"], stream["clean"]) == (
        1, len(kept), int(kept[-1]), True,
    )  # fmt: skip

    end = said[-1]
    assert end["event"] == "end" and end["complete"] and end["reason"] == "complete"
    assert (end["packets"], end["last"], end["mode"]) == (len(FEED), len(FEED), "extended")
    assert (end["gaps"], end["rounds"], end["passes"]) == (len(expected), len(rounds), 1)
    # The summary counts the same gaps and rounds.
    summary = err.strip().splitlines()[-1]
    rounds_said = f"{len(rounds)} repair round" + ("" if len(rounds) == 1 else "s")
    assert f", {len(expected)} gaps, 1 pass, {rounds_said}, " in summary, summary
    # Without events, the count is the same: the gaps of stream-all number 1.
    assert quiet.complete and quiet.gaps == len(runs(dropped_by(1, len(FEED), DROP, SEED)))


def test_a_base_server_gives_a_line_per_pass_and_its_gaps() -> None:
    size, drop, seed = 2_000, 0.2, 4
    feed = synthetic(size, seed=6)
    said: list[dict[str, Any]] = []
    with Server(feed, host="127.0.0.1", port=0, drop=drop, seed=seed) as server:
        result = fetch("127.0.0.1", server.port, protocol="base", events=said.append)
    assert result.complete and result.mode == "base" and result.passes >= 2

    passes = kind(said, "pass")
    assert [p["pass"] for p in passes] == list(range(1, result.passes + 1))
    for done in passes:  # pass N is the server's stream-all number N - 1
        kept = np.setdiff1d(np.arange(1, size + 1), dropped_by(done["pass"] - 1, size, drop, seed))
        assert (done["packets"], done["highest"], done["clean"]) == (len(kept), int(kept[-1]), True)

    # The gaps after the first pass: the runs it dropped below its highest sequence.
    dropped = dropped_by(0, size, drop, seed)
    highest = passes[0]["highest"]
    expected = runs(dropped[dropped < highest])
    gaps = kind(said, "gap")
    first = [(g["first"], g["last"]) for g in gaps if g["seen"] < passes[1]["at"]]
    assert sorted(first) == expected and len(expected) > 100
    named = sorted((g["first"], g["last"]) for g in gaps)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(named))  # each found once
    # Every gap, found after any pass, is of packets the first pass dropped.
    assert {s for a, b in named for s in range(a, b + 1)} <= set(dropped.tolist())
    for gap in gaps:  # resent up to 127 (the reference's limit), left to passes above
        assert gap["how"] == ("resend" if gap["last"] <= 127 else "pass")
        assert gap["repaired"] is not None and gap["seen"] <= gap["asked"] <= gap["repaired"]
        if gap["how"] == "resend":  # repaired as the resends came, before the next pass
            assert gap["repaired"] < passes[1]["at"]
    resent = kind(said, "round")[0]
    assert (resent["round"], resent["how"]) == (1, "resend")
    assert resent["sequences"] == int((dropped <= 127).sum())
    assert resent["ranges"] == len(runs(dropped[dropped <= 127]))

    end = said[-1]
    assert end["event"] == "end" and end["complete"] and end["mode"] == "base"
    assert end["passes"] == result.passes and end["gaps"] == len(gaps) == result.gaps


@pytest.mark.parametrize(("size", "seed"), [(1_000, 1), (1_000, 6), (1_000, 4), (1_000, 29)])
def test_a_base_server_names_the_gap_right_under_the_first_pass_s_highest(
    size: int, seed: int
) -> None:
    # Each of these seeds drops the sequences right under the first pass's highest:
    # (999, 999) under 1000, (998, 999), (997, 998) under 999, a run under 998.  The
    # next pass fills them; they are gaps of the first pass all the same, named once,
    # with their repair.
    drop = 0.3
    said: list[dict[str, Any]] = []
    with Server(synthetic(size, seed=5), host="127.0.0.1", port=0, drop=drop, seed=seed) as server:
        result = fetch("127.0.0.1", server.port, protocol="base", events=said.append)
    assert result.complete
    dropped = dropped_by(0, size, drop, seed)
    passes = kind(said, "pass")
    highest = passes[0]["highest"]
    expected = runs(dropped[dropped < highest])
    assert expected[-1][1] == highest - 1, "no gap right under the highest: proves nothing"
    gaps = kind(said, "gap")
    first = sorted((g["first"], g["last"]) for g in gaps if g["seen"] < passes[1]["at"])
    assert first == expected
    named = sorted((g["first"], g["last"]) for g in gaps)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(named))  # each found once
    [under] = [g for g in gaps if (g["first"], g["last"]) == expected[-1]]
    assert under["repaired"] is not None and under["seen"] <= under["asked"] <= under["repaired"]
    assert result.gaps == len(gaps) == said[-1]["gaps"]


def test_a_base_fetch_counts_the_gaps_an_extended_one_does() -> None:
    # docs/architecture.md's example: the first stream of synthetic:100000 at loss 0.25,
    # seed 7, leaves 18680 gaps, the last right under its highest, 100000.
    size, drop, seed = 100_000, 0.25, 7
    expected = len(runs(dropped_by(0, size, drop, seed)))
    counts = []
    for protocol in ("extended", "base"):
        with Server(synthetic(size), host="127.0.0.1", port=0, drop=drop, seed=seed) as server:
            result = fetch("127.0.0.1", server.port, protocol=protocol)
        assert result.complete and result.mode == protocol
        counts.append(result.gaps)
    assert counts == [expected, expected] == [18680, 18680]


@pytest.mark.parametrize(("corrupted", "gap"), [(14, (14, 14)), (13, (13, 13))])
def test_a_corrupted_highest_of_the_first_pass_makes_no_gap_beyond_the_end(
    corrupted: int, gap: tuple[int, int]
) -> None:
    # A packet of the first pass reads 126 instead of ``corrupted``: the highest it
    # shows, under which it leaves the run up to 125 missing.  The feed (the book) ends
    # at 14: beyond it, the run is no gap, neither told nor counted (with 14 corrupted,
    # the first pass's last packet, the run 14..125 is the gap 14..14).
    packet = 17
    faults = Faults(corrupt_at=(packet * (corrupted - 1) + 16,), corrupt_xor=corrupted ^ 126)
    said: list[dict[str, Any]] = []

    def script(index: int) -> Faults | None:
        return faults if index == 0 else None

    with (
        Server(host="127.0.0.1", port=0, drop=0.0) as server,
        Proxy(("127.0.0.1", server.port), script) as proxy,
    ):
        result = fetch(port=proxy.port, protocol="base", backoff=0.02, max_passes=6,
                       events=said.append)  # fmt: skip
        assert proxy.records[0].counts.get("corrupt")
    assert result.complete and result.packets == book() and result.corrupt == 1
    assert kind(said, "pass")[0]["highest"] == 126
    [told] = kind(said, "gap")
    assert (told["first"], told["last"]) == gap and told["repaired"] is not None
    assert result.gaps == 1 == said[-1]["gaps"]


def test_the_events_go_to_stderr_with_a_dash(tmp_path: Path) -> None:
    with Server(synthetic(5_000, seed=1), host="127.0.0.1", port=0, drop=0.1, seed=2) as server:
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", "fetch", "--port", str(server.port),
             "--events", "-", "-o", "out.bin"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    said = [json.loads(line) for line in lines if line.startswith("{")]
    gaps = kind(said, "gap")
    assert gaps and said[-1]["event"] == "end" and said[-1]["gaps"] == len(gaps)
    # Every event is written before the summary, the last line.
    assert lines[-1].startswith("5000 packets (") and f", {len(gaps)} gaps, " in lines[-1]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--events", "out.bin", "-o", "out.bin"], "--events out.bin is where the output goes"),
     (["--events", "./out.bin.partial", "-o", "out.bin"], "--events ./out.bin.partial is where"),
     (["--events", "link", "-o", "out.bin"], "--events link is where the output goes"),
     (["--events", "/dev/stdout", "-o", "-"], "--events /dev/stdout is stdout")],
)  # fmt: skip
def test_an_events_file_on_the_output_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
    args: list[str], words: str,
) -> None:  # fmt: skip
    # With capfd, stdout (fd 1) is a file: /dev/stdout is that file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to("out.bin")  # the output, not there yet
    assert fetch_main(["--port", "1", *args]) == 2
    err = capfd.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "link").exists()


def test_an_events_file_that_cannot_be_written_fails_the_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.json"
    output.write_text("before\n")
    with Server(host="127.0.0.1", port=0, seed=1) as server:
        status = fetch_main(
            ["--port", str(server.port), "--events", "/dev/full", "-o", str(output)]
        )
    err = capsys.readouterr().err
    assert status == 1 and "cannot write the events file /dev/full: No space left" in err, err
    assert output.read_text() == "before\n" and "Traceback" not in err


@pytest.mark.parametrize("raising", ["gap", "round", "pass", "end"])
def test_an_events_callback_that_raises_ends_the_fetch_saying_so(raising: str) -> None:
    seen: list[str] = []

    def boom(event: dict[str, Any]) -> None:
        seen.append(event["event"])
        if event["event"] == raising:
            raise RuntimeError("callback boom")

    with (
        Server(synthetic(5_000, seed=1), host="127.0.0.1", port=0, drop=0.1, seed=2) as server,
        pytest.raises(FetchError, match=r"the events callback raised RuntimeError"),
    ):
        fetch("127.0.0.1", server.port, events=boom)
    assert seen[-1] == raising  # nothing told after it


@pytest.mark.parametrize("protocol", ["extended", "base"])
def test_a_stream_cut_short_is_told(protocol: str) -> None:
    # The proxy resets the first connection (the first stream) 5,000 packets in, and
    # refuses connections for 0.3 s, as a server that died and came back would.
    feed = synthetic(20_000, seed=2)
    said: list[dict[str, Any]] = []
    with (
        Server(feed, host="127.0.0.1", port=0, drop=0.25, seed=4) as server,
        FlakyProxy(server.port, cut_after=17 * 5000 + 16 + 5, down_for=0.3) as proxy,
    ):
        result = fetch(port=proxy.port, protocol=protocol, timeout=2.0, backoff=0.05,
                       events=said.append)  # fmt: skip
        assert proxy.cut == 1
    assert result.complete
    cut = kind(said, "pass")[0]
    assert not cut["clean"] and cut["highest"] < 10_000
    reconnects = kind(said, "reconnect")
    if protocol == "base":  # the next pass is on a new connection
        assert [(r["connection"], r["why"]) for r in reconnects] == [("stream", "lost")]
        assert reconnects[0]["at"] >= cut["at"]
    else:  # the rest of the feed comes by ranges: the stream is not replaced (the
        # repair connection is, if the proxy's death took it too)
        assert {r["connection"] for r in reconnects} <= {"repair"}
        assert len(kind(said, "pass")) == 1
        tail = max(kind(said, "gap"), key=lambda g: g["last"])
        assert (tail["first"], tail["last"]) == (cut["highest"] + 1, 20_000)
    assert all(g["repaired"] is not None for g in kind(said, "gap"))
    assert said[-1]["event"] == "end" and said[-1]["reconnects"] == len(reconnects)


def test_a_fetch_that_fails_ends_its_events_saying_why() -> None:
    with socket.socket() as sock:  # bound and closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    said: list[dict[str, Any]] = []
    with pytest.raises(FetchError, match="cannot connect"):
        fetch("127.0.0.1", port, retries=0, events=said.append)
    [end] = said
    assert end["event"] == "end" and not end["complete"] and end["packets"] == 0
    assert end["reason"].startswith(f"cannot connect to 127.0.0.1:{port}")


@pytest.mark.engine_neutral
def test_a_large_fetch_waits_for_its_events_file_rather_than_failing(tmp_path: Path) -> None:
    # Some 375,000 gaps: more events than the backlog holds, come faster than they are
    # written.  A file on a working disk takes them all, however slowly: the fetch
    # waits for it, and completes.
    size = 2_000_000
    with ServeProcess("--feed", f"synthetic:{size}", "--drop", "0.25", "--seed", "8") as server:
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", "fetch", "--port", str(server.port),
             "--events", "big.ndjson", "-o", "big.bin"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "big.bin").stat().st_size == 17 * size
    gaps, end = 0, None
    with open(tmp_path / "big.ndjson") as lines:
        for line in lines:
            if line.startswith('{"event":"gap"'):
                gaps += 1
            else:
                end = json.loads(line)
    assert end is not None and end["event"] == "end" and end["complete"], end
    assert end["gaps"] == gaps > EventsFile.BACKLOG
    assert f", {gaps} gaps, " in done.stderr.splitlines()[-1]


def _events_to_a_fifo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: int, every: float
) -> tuple[int, float, bytes]:
    """Fetch with --events into a FIFO whose reader takes ``read`` bytes every ``every`` s.

    With a backlog of 2,000 events, 256 lines a write, and a stall of 1 s.  Return the
    status, the seconds it took and what the reader got (the rest too, once the fetch
    ended).
    """
    monkeypatch.setattr(EventsFile, "BACKLOG", 2_000)
    monkeypatch.setattr(EventsFile, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(EventsFile, "LINES", 256)
    fifo, output = tmp_path / "events.fifo", tmp_path / "out.bin"
    output.write_bytes(b"before")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    got = bytearray()
    stop = threading.Event()

    def drain() -> None:
        while not stop.wait(every):
            with contextlib.suppress(BlockingIOError):
                got.extend(os.read(reader, read))

    thread = threading.Thread(target=drain, daemon=True)
    if read:
        thread.start()
    try:
        with Server(FEED, host="127.0.0.1", port=0, drop=0.25, seed=SEED) as server:
            began = time.monotonic()
            status = fetch_main(
                ["--port", str(server.port), "--events", str(fifo), "-o", str(output)]
            )
            took = time.monotonic() - began
    finally:
        stop.set()
        if read:
            thread.join(5)
            with contextlib.suppress(BlockingIOError):  # to the end: the writer closed it
                while chunk := os.read(reader, 1 << 16):
                    got.extend(chunk)
        os.close(reader)  # a writer still stuck in a write gets EPIPE, and returns
    return status, took, bytes(got)


@pytest.mark.engine_neutral
def test_a_slow_events_reader_holds_the_fetch_back_without_failing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    waits: list[bool] = []
    wait_for_room = EventsFile._wait_for_room

    def counted(self: EventsFile) -> bool:
        waits.append(wait_for_room(self))
        return waits[-1]

    monkeypatch.setattr(EventsFile, "_wait_for_room", counted)
    # 16 KiB every 20 ms: some 800 KB/s, slower than the gaps come, never stalled.
    status, _took, got = _events_to_a_fifo(tmp_path, monkeypatch, 1 << 14, 0.02)
    err = capsys.readouterr().err
    assert status == 0, err
    assert waits and all(waits)  # the backlog filled, and the fetch waited
    said = [json.loads(line) for line in got.decode().splitlines()]
    assert said[-1]["event"] == "end" and said[-1]["complete"]
    assert said[-1]["gaps"] == len(kind(said, "gap"))


@pytest.mark.engine_neutral
def test_an_events_reader_that_stalls_fails_the_fetch_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reader opens the FIFO and never reads: the pipe fills, then the backlog,
    # then nothing is written for a second.
    status, took, _got = _events_to_a_fifo(tmp_path, monkeypatch, 0, 0.0)
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert (
        f"cannot write the events file {tmp_path / 'events.fifo'}: 2,000 events waiting, "
        "and nothing written for 1 s (its reader stalled)"
    ) in err
    assert took < 15, took  # the stall, and the output given up: not for ever
    assert (tmp_path / "out.bin").read_bytes() == b"before"


@pytest.fixture(scope="module")
def large() -> Iterator[ServeProcess]:
    """A server of 5,000,000 packets at loss 0.25: a fetch of some seconds, with events."""
    with ServeProcess("--feed", "synthetic:5000000", "--drop", "0.25", "--seed", "8") as server:
        yield server


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.engine_neutral
def test_a_fetch_stopped_by_a_signal_ends_its_events(
    tmp_path: Path, large: ServeProcess, signum: signal.Signals
) -> None:
    # The output is left as it was (130 / 143); the events end, saying why.
    (tmp_path / "out.bin").write_bytes(b"previous\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "packetcore", "fetch", "--port", str(large.port),
         "--events", "events.ndjson", "-o", "out.bin"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        path, deadline = tmp_path / "events.ndjson", time.monotonic() + 60
        while not (path.exists() and '"event":"gap"' in path.read_text()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signum)
        _out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, err
    said_err = f"packetcore-fetch: error: interrupted by {signum.name}; out.bin left as it was"
    assert err.strip() == said_err
    assert (tmp_path / "out.bin").read_bytes() == b"previous\n"
    said = read_events(path)
    end = said[-1]
    assert end["event"] == "end" and end["reason"] == f"stopped by {signum.name}"
    assert not end["complete"] and end["gaps"] >= len(kind(said, "gap")) > 0
    assert kind(said[:-1], "end") == []


@pytest.mark.engine_neutral
def test_the_end_counts_what_stdout_took_before_its_reader_left(
    tmp_path: Path, large: ServeProcess
) -> None:
    # The reader takes 100,000 bytes and leaves (`| head -c 100000`): the end counts
    # the packets written to stdout, as the last line does, not those the fetch had
    # handed to the output by then.
    process = subprocess.Popen(
        [sys.executable, "-m", "packetcore", "fetch", "--port", str(large.port),
         "--events", "events.ndjson", "-o", "-", "--format", "bin"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stderr is not None
        got = process.stdout.buffer.read(100_000)
        process.stdout.close()
        err = process.stderr.read()
        process.wait(60)
    finally:
        process.kill()
    assert process.returncode == 0 and len(got) == 100_000, err
    match = re.search(r"(\d+) packet\(s\) written to stdout, then the reader closed it", err)
    assert match is not None, err
    end = read_events(tmp_path / "events.ndjson")[-1]
    assert end["event"] == "end" and not end["complete"]
    assert end["packets"] == int(match.group(1)) < 5_000_000


@pytest.mark.engine_neutral
def test_a_cancelled_fetch_ends_its_events_saying_so(large: ServeProcess) -> None:
    from packetcore.client.fetch import fetch_async

    said: list[dict[str, Any]] = []

    async def main() -> None:
        task = asyncio.ensure_future(fetch_async(port=large.port, events=said.append))
        while not kind(said, "gap"):
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    end = said[-1]
    assert end["event"] == "end" and end["reason"] == "cancelled" and not end["complete"]


def test_a_pass_the_ranges_overtook_is_told() -> None:
    # The stream-all connection drops 11 packets, then stalls, open, after its last
    # packet: the range repairs them and the fetch is complete before the stream's end
    # comes.  The pass is cut, and told all the same (CI once saw it missing).
    def stall_the_stream(number: int) -> Faults | None:
        if number:
            return None
        return Faults(drop_sequences=frozenset(range(100, 111)), stall_after=16 + 17 * 4989)

    said: list[dict[str, Any]] = []
    plan = FaultPlan(script=stall_the_stream)
    with Server(synthetic(5_000, seed=1), host="127.0.0.1", port=0, drop=0.0,
                faults=plan) as server:  # fmt: skip
        result = fetch("127.0.0.1", server.port, timeout=5.0, events=said.append)
    assert result.complete and result.passes == 1
    passes = kind(said, "pass")
    assert [(p["pass"], p["packets"], p["highest"], p["clean"]) for p in passes] == [
        (1, 4989, 5000, False)
    ]
    assert said[-1]["event"] == "end" and said[-1]["passes"] == 1
