"""``packetcore-fetch --follow --events FILE``: every gap, reconnect and slow-down, as it happens.

The gaps a follow must name are computed here independently of the follow and of the
server's loss code: a tracing proxy between them records every packet each
subscription carried, and what a subscription skipped is a gap.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from packetcore.faults.proxy import Proxy
from serverutil import ServeProcess

UNTIL = 8_000


def follow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "packetcore", "fetch", "--follow", *args], cwd=cwd,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_events_name_every_gap_the_subscription_left_and_its_repair(tmp_path: Path) -> None:
    with (
        ServeProcess("--live", "20000", "--drop", "0.05", "--seed", "9") as server,
        Proxy(("127.0.0.1", server.port), trace=True) as proxy,
    ):
        done = follow("--port", str(proxy.port), "--until", str(UNTIL), "--events",
                      "events.ndjson", "-o", "out.bin", cwd=tmp_path)  # fmt: skip
        traces = [r.trace for r in proxy.records if r.trace is not None]
    assert done.returncode == 0, done.stderr
    # What the subscriptions (callType 5) carried; below the highest of it, the rest is
    # what they skipped: the gaps the follow saw.
    carried: set[int] = set()
    for trace in traces:
        if any(r.call_type == 5 for r in trace.requests):
            # The first packets are traced (a follow slow to hang up at UNTIL lets more
            # through): every one, or a run past UNTIL, so nothing up to it goes untold.
            sequences = [sequence for _, sequence in trace.packets]
            assert trace.packets_total == len(sequences) or max(sequences) > UNTIL
            carried.update(sequences)
    top = min(max(carried), UNTIL)
    skipped = set(range(1, top + 1)) - carried
    assert skipped, "the server's --drop left no gap: the test proves nothing"

    said = events(tmp_path / "events.ndjson")
    gaps = [e for e in said if e["event"] == "gap"]
    named = {s for g in gaps for s in range(g["first"], g["last"] + 1)}
    assert skipped <= named  # every gap the subscription left is named
    assert all(1 <= g["first"] <= g["last"] <= UNTIL for g in gaps)
    for gap in gaps:  # each repaired, after it was seen and asked for
        assert gap["how"] in ("range", "tail", "reconnect")
        assert gap["repaired"] is not None
        assert gap["seen"] <= (gap["asked"] if gap["asked"] is not None else gap["seen"])
        assert gap["seen"] <= gap["repaired"]
    assert [g["repaired"] for g in gaps] == sorted(g["repaired"] for g in gaps)
    end = said[-1]
    assert end["event"] == "end" and end["reason"] == "until reached"
    assert (end["packets"], end["last"], end["gaps"]) == (UNTIL, UNTIL, len(gaps))
    # The summary counts the same gaps.
    assert re.search(rf"\b{len(gaps)} gaps\b", done.stderr), done.stderr


def test_the_events_go_to_stderr_with_a_dash(tmp_path: Path) -> None:
    with ServeProcess("--live", "20000", "--drop", "0.05", "--seed", "9") as server:
        done = follow("--port", str(server.port), "--until", "2000", "--events", "-", "-o",
                      "out.bin", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["event"] == "end" and lines[-1]["packets"] == 2000


@pytest.mark.parametrize(
    ("args", "words", "status"),
    [(["--events", "out.bin"], "--events out.bin is where the output goes", 2),
     (["--events", "./out.bin.partial"], "--events ./out.bin.partial is where the output", 2),
     (["--events", "link"], "--events link is where the output goes", 2),
     (["--events", "fifo"], "cannot write the events file fifo: a FIFO that nobody reads", 1),
     (["--events", "none/e.ndjson"], "cannot write the events file none/e.ndjson", 1)],
)  # fmt: skip
def test_an_events_file_that_cannot_be_is_one_line(
    tmp_path: Path, args: list[str], words: str, status: int
) -> None:
    (tmp_path / "link").symlink_to("out.bin")  # the output, not there yet
    os.mkfifo(tmp_path / "fifo")
    done = follow("--port", "1", "-o", "out.bin", *args, cwd=tmp_path)
    assert done.returncode == status and words in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "link").exists()


def test_a_full_disk_ends_the_follow_with_what_it_handed_on(tmp_path: Path) -> None:
    with ServeProcess("--live", "20000", "--drop", "0.05", "--seed", "9") as server:
        done = follow("--port", str(server.port), "--until", "4000", "--events", "/dev/full",
                      "-o", "out.ndjson", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "cannot write the events file /dev/full: No space left on device" in done.stderr
    assert "Traceback" not in done.stderr


def test_events_to_the_file_stdout_is_are_refused_with_dash_o(tmp_path: Path) -> None:
    with open(tmp_path / "records.ndjson", "w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port", "1",
             "--events", "/dev/stdout", "-o", "-"],
            cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2 and "--events /dev/stdout is stdout" in done.stderr


def test_a_lone_gap_reaches_the_file_while_the_follow_runs(tmp_path: Path) -> None:
    # Events are flushed at least every 0.25 s, not only when the next one comes.
    with ServeProcess("--live", "5000", "--drop", "0", "--drop-sequences", "500") as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port",
             str(server.port), "--deadline", "60", "--events", "events.ndjson", "-o", "o.bin"],
            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            path = tmp_path / "events.ndjson"
            while not (path.exists() and '"first":500' in path.read_text()):
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        finally:
            process.terminate()
            _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    said = events(tmp_path / "events.ndjson")
    assert [(e["first"], e["last"]) for e in said if e["event"] == "gap"] == [(500, 500)]
    assert said[-1]["event"] == "end" and said[-1]["reason"] == "stopped by SIGTERM"


def test_an_events_callback_that_raises_ends_the_follow_saying_so() -> None:
    from packetcore.client.follow import run_follow
    from packetcore.client.session import FetchOptions
    from packetcore.errors import FetchError

    def boom(event: dict[str, Any]) -> None:
        raise RuntimeError("callback boom")

    with ServeProcess("--live", "20000", "--drop", "0.05", "--seed", "9") as server:
        options = FetchOptions(port=server.port, stop=5000)
        with pytest.raises(FetchError, match=r"the events callback raised RuntimeError"):
            asyncio.run(run_follow(options, lambda batch: None, events=boom))


def test_an_events_reader_that_stalls_ends_the_follow_in_one_line(tmp_path: Path) -> None:
    # The follow waits for a lagging events file (backpressure), but not for one whose
    # reader opened it and took nothing: the pipe fills, then the backlog (500 events
    # here), then nothing is written for a second.
    os.mkfifo(tmp_path / "events.fifo")
    reader = os.open(tmp_path / "events.fifo", os.O_RDONLY | os.O_NONBLOCK)
    script = (
        "import sys\n"
        "from packetcore.cli.events import EventsFile\n"
        "EventsFile.BACKLOG, EventsFile.STALL_SECONDS, EventsFile.LINES = 500, 1.0, 64\n"
        "from packetcore.cli.fetch import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    try:
        with ServeProcess("--live", "20000", "--drop", "0.1", "--seed", "9") as server:
            began = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-c", script, "--follow", "--port", str(server.port),
                 "--deadline", "60", "--events", "events.fifo", "-o", "out.bin"],
                cwd=tmp_path, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            took = time.monotonic() - began
    finally:
        os.close(reader)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert (
        "cannot write the events file events.fifo: 500 events waiting, and nothing "
        "written for 1 s (its reader stalled); "
    ) in done.stderr
    assert took < 40, took  # long before the deadline
