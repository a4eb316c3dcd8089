"""The live server's clock frame, and what a follow measures with it.

A subscription with the clock flag starts with a 32-byte frame that says when each
sequence is published; a follow counts every packet's time from its publication to its
hand-on, and serves its figures as Prometheus metrics (``--metrics-port``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from packetcore.client.follow import FollowStats, run_follow
from packetcore.client.follow_metrics import METRICS, FollowCollector
from packetcore.client.session import FetchOptions
from packetcore.errors import ProtocolError
from packetcore.faults.model import Faults
from packetcore.faults.proxy import Proxy
from packetcore.faults.shaper import Shaper
from packetcore.net.metrics import MetricsServer
from packetcore.packets import Packets
from packetcore.protocol import (
    CLOCK_SIZE,
    FeedClock,
    FeedInfo,
    RequestFramer,
    ResponseFramer,
    decode_clock,
    decode_info,
    encode_clock,
    encode_info,
    hello_request,
    subscribe_request,
)
from packetcore.server.server import Server
from prometheus_client.parser import text_string_to_metric_families
from serverutil import connect, recv_exact

# Run once, on the compiled engine: the clock frame, the follow's latencies and metrics
# (no engine path).
pytestmark = pytest.mark.engine_neutral

CLOCK = FeedClock(first=1, final=2**31 - 1, epoch_ns=1_765_000_000_123_456_789, rate=200_000.0)


# The frame


def test_a_clock_frame_says_when_each_sequence_is_published() -> None:
    frame = encode_clock(CLOCK)
    assert len(frame) == CLOCK_SIZE and frame[:5] == b"PKCT\0"
    assert decode_clock(frame) == CLOCK
    published = CLOCK.published(np.array([1, 200_001], dtype=np.int32))
    assert published.tolist() == pytest.approx([1_765_000_000.123457, 1_765_000_001.123457])


@pytest.mark.parametrize(
    "clock",
    [FeedClock(0, 5, 0, 1.0), FeedClock(6, 5, 0, 1.0), FeedClock(1, 2**31, 0, 1.0),
     FeedClock(1, 5, 0, 0.0), FeedClock(1, 5, 0, float("nan")), FeedClock(1, 5, 0, 1.0, 0)],
)  # fmt: skip
def test_an_implausible_clock_frame_is_refused(clock: FeedClock) -> None:
    with pytest.raises(ProtocolError, match=r"implausible clock frame|version 0 is not"):
        decode_clock(encode_clock(clock))


def test_the_subscribe_flag_asks_for_the_clock_and_the_old_request_is_unchanged() -> None:
    assert subscribe_request(7) == b"\x05\x00\x00\x00\x00\x07"  # as every follow sent it
    assert subscribe_request(7, clock=True) == b"\x05\x01\x00\x00\x00\x07"
    (plain,) = RequestFramer().feed(subscribe_request(7))
    (flagged,) = RequestFramer().feed(subscribe_request(7, clock=True))
    assert (plain.start, plain.flags, flagged.start, flagged.flags) == (7, 0, 7, 1)


def _packets(first: int, count: int) -> bytes:
    from packetcore import encode

    sequence = np.arange(first, first + count, dtype=np.int32)
    return encode(Packets([b"AAPL"] * count, [b"B"] * count, sequence, sequence, sequence))


@pytest.mark.parametrize("clock", [True, False])
def test_the_framer_cuts_the_clock_frame_wherever_the_stream_is_split(clock: bool) -> None:
    info = FeedInfo(1, 9)
    stream = encode_info(info) + (encode_clock(CLOCK) if clock else b"") + _packets(1, 4)
    for cut in range(1, len(stream)):
        for size in (1, cut):
            framer = ResponseFramer()
            framer.expect()
            framer.expect_clock()
            items = []
            chunks = [stream[:cut]] + [stream[i : i + size] for i in range(cut, len(stream), size)]
            for chunk in chunks:
                items += framer.feed(chunk)
            frames = [item for item in items if not isinstance(item, memoryview)]
            body = b"".join(bytes(item) for item in items if isinstance(item, memoryview))
            assert frames == ([info, CLOCK] if clock else [info])
            assert body == _packets(1, 4)


def test_a_clock_frame_is_taken_only_before_the_first_packet() -> None:
    framer = ResponseFramer()
    framer.expect_clock()
    stream = _packets(1, 1) + encode_clock(CLOCK)  # not a frame once packets came
    items = framer.feed(stream)
    assert b"".join(bytes(item) for item in items) == stream


def test_the_fault_shaper_passes_the_clock_frame_untouched() -> None:
    # Corruption works on whole packets: a 32-byte frame taken for packets would shift
    # every packet after it.
    from packetcore.protocol import Request

    shaper = Shaper(Faults(corrupt=1.0), np.random.default_rng(1))
    shaper.request(Request(3))
    shaper.hello()
    shaper.request(Request(5, 1, flags=1))
    stream = encode_info(FeedInfo(1, 9)) + encode_clock(CLOCK) + _packets(1, 3)
    out = b"".join(bytes(shaper.feed(stream[i : i + 7])) for i in range(0, len(stream), 7))
    out += bytes(shaper.finish())
    assert out[: 16 + CLOCK_SIZE] == stream[: 16 + CLOCK_SIZE]
    assert len(out) == len(stream) and out[16 + CLOCK_SIZE :] != stream[16 + CLOCK_SIZE :]
    assert (shaper.info_frames, shaper.clock_frames) == (1, 1)


# The server


def live(rate: float, until: int | None = None, drop: float = 0.0) -> Server:
    return Server(None, host="127.0.0.1", port=0, live=rate, until=until, drop=drop, seed=3)


def published_edge(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hello_request())
        return decode_info(recv_exact(sock, 16)).last


def test_a_live_server_sends_its_clock_to_a_subscription_that_asks() -> None:
    with live(10_000.0) as server:
        start = published_edge(server.port) + 1
        with connect(server) as sock:
            sock.sendall(subscribe_request(start, clock=True))
            clock = decode_clock(recv_exact(sock, CLOCK_SIZE))
            first = recv_exact(sock, 17)
            arrived = time.time()
        with connect(server) as sock:
            sock.sendall(subscribe_request(start))
            plain = recv_exact(sock, 17)  # no frame: the stream is packets only, as it was
    assert (clock.first, clock.final, clock.rate) == (1, 2**31 - 1, 10_000.0)
    sequence = int.from_bytes(first[13:17], "big")
    assert sequence == start and int.from_bytes(plain[13:17], "big") >= start
    # Sent once published, and not long after (the publisher wakes every 2 ms).
    lateness = arrived - float(clock.published(np.array([sequence]))[0])
    assert -0.001 <= lateness < 0.5


def test_a_finished_feed_has_no_clock() -> None:
    with Server(None, host="127.0.0.1", port=0, drop=0.0) as server, connect(server) as sock:
        sock.sendall(subscribe_request(1, clock=True))
        assert recv_exact(sock, 17)[:4] != b"PKCT"


# The follow


def follow_with_metrics(port: int, start: int, until: int) -> tuple[FollowStats, dict[str, float]]:
    """Follow from ``start`` to ``until`` with metrics served; scrape them at the end."""
    running: list[FollowStats] = []
    metrics = MetricsServer("127.0.0.1", 0, FollowCollector(lambda: running[-1])).start()
    try:
        options = FetchOptions(host="127.0.0.1", port=port, start=start, stop=until, timeout=2.0)
        stats = asyncio.run(
            asyncio.wait_for(run_follow(options, lambda batch: None, stats=running.append), 60)
        )
        return stats, scrape(metrics.port)
    finally:
        metrics.stop()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_the_metrics_equal_what_the_follow_handed_on_and_the_server_counted() -> None:
    with live(40_000.0, drop=0.05) as server:
        start = published_edge(server.port) + 1
        until = start + 8_000
        stats, samples = follow_with_metrics(server.port, start, until)
        resent = server.stats.packets_resent
    handed = until - start + 1
    assert stats.packets == handed and stats.gaps > 0
    assert samples["packetcore_follow_packets_total"] == handed
    assert samples["packetcore_follow_delivered_sequence"] == until
    assert samples["packetcore_follow_gaps_total"] == stats.gaps
    assert samples["packetcore_follow_gaps_repaired_total"] == stats.gaps_repaired == stats.gaps
    assert samples["packetcore_follow_gaps_open"] == 0
    assert samples["packetcore_follow_packets_repaired_total"] == stats.repaired
    asked = sum(v for k, v in samples.items() if k.startswith("packetcore_follow_repair_requests"))
    assert asked == sum(stats.requests.values()) >= stats.gaps
    if not (stats.duplicates or stats.reconnects or stats.repair_reconnects):
        # Every packet the server resent was one the follow repaired with.
        assert stats.repaired == resent
    for name in ("repair_latency", "publication_latency"):
        count = samples[f"packetcore_follow_{name}_seconds_count"]
        assert samples[f"packetcore_follow_{name}_seconds_bucket{{le=+Inf}}"] == count
    assert samples["packetcore_follow_publication_latency_seconds_count"] == handed
    assert samples["packetcore_follow_repair_latency_seconds_count"] == stats.gaps
    # Every family the collector serves is listed in METRICS, and the other way round.
    served = {k.split("{")[0].removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
              for k in samples}  # fmt: skip
    listed = {name for name, _, _ in METRICS}
    assert served == listed


def test_the_publication_latency_counts_a_known_delay_every_packet_took() -> None:
    delay = 0.05
    with (
        live(20_000.0) as server,
        Proxy(("127.0.0.1", server.port), Faults(latency=delay)) as proxy,
    ):
        start = published_edge(server.port) + 2_000  # published 0.1 s after the follow starts
        stats, samples = follow_with_metrics(proxy.port, start, start + 2_000)
    latency = stats.publication
    assert latency.count == 2_001 and stats.clock is not None
    # Each packet was held back `delay` on the way, and nothing else took long.
    assert delay <= latency.percentile(0) and latency.percentile(50) < delay + 0.03
    assert samples["packetcore_follow_publication_latency_seconds_bucket{le=0.05}"] == 0
    assert samples["packetcore_follow_publication_latency_seconds_bucket{le=0.5}"] == 2_001
    quoted = f"publication to hand-on p50 {latency.percentile(50) * 1e3:.1f} ms"
    assert quoted in stats.summary()


def test_without_a_clock_there_is_no_publication_latency() -> None:
    with Server(None, host="127.0.0.1", port=0, drop=0.0) as server:
        stats, samples = follow_with_metrics(server.port, 1, 14)
    assert stats.packets == 14 and stats.clock is None and stats.publication.count == 0
    assert "packetcore_follow_publication_latency_seconds_count" not in samples
    assert "packetcore_follow_lag_seconds" not in samples
    assert "publication" not in stats.summary()


def test_the_follow_serves_its_metrics_while_it_runs(tmp_path: Path) -> None:
    with live(2_000.0, until=4_000) as server:
        command = [
            sys.executable,
            "-m",
            "packetcore",
            "fetch",
            "--follow",
            "--port",
            str(server.port),
            "--metrics-port",
            "0",
            "-o",
            "out.bin",
            "--until",
            "3000",
        ]
        with subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "packetcore-fetch: metrics on port" in line, line
            port = int(line.split("metrics on port ")[1].split(":")[0])
            samples = scrape(port)  # served from the start: zeros before it connects
            deadline = time.monotonic() + 20
            while not samples["packetcore_follow_packets_total"] > 0:
                assert time.monotonic() < deadline, samples
                time.sleep(0.05)
                samples = scrape(port)
            proc.terminate()  # one request to stop: a follow's normal end
            rest = proc.stderr.read()
    assert proc.returncode == 0, rest
    assert samples["packetcore_follow_published_sequence"] >= 1
    assert 0 <= samples["packetcore_follow_lag_seconds"] < 5


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--metrics-port", "0"], "--metrics-port and --metrics-host apply to --follow"),
     (["--follow", "--metrics-host", "127.0.0.1"], "--metrics-host needs --metrics-port")],
)  # fmt: skip
def test_metrics_options_out_of_place_are_one_line(
    tmp_path: Path, args: list[str], words: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "packetcore", "fetch", "--port", "1", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and words in done.stderr and done.stderr.count("\n") == 1


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "packetcore", "fetch", "--follow", "--port", "1",
             "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot serve metrics on 127.0.0.1 port {port}" in done.stderr
    assert done.stderr.count("\n") == 1


# A clock that cannot be trusted


@pytest.mark.parametrize(
    ("clock", "why"),
    [(FeedClock(1, 5, 0, 0.0), "implausible clock frame"),
     (FeedClock(1, 5, 0, float("nan")), "implausible clock frame"),
     (FeedClock(6, 5, 0, 1.0), "implausible clock frame"),
     (FeedClock(1, 5, 0, 1.0, 9), "clock frame version 9 is not understood")],
)  # fmt: skip
def test_a_clock_frame_that_cannot_be_trusted_is_passed_over(clock: FeedClock, why: str) -> None:
    # Its 32 bytes skipped, the packets after it whole: the follow goes on without a clock.
    framer = ResponseFramer()
    framer.expect()
    framer.expect_clock()
    stream = encode_info(FeedInfo(1, 9)) + encode_clock(clock) + _packets(1, 4)
    items = []
    for at in range(0, len(stream), 9):
        items += framer.feed(stream[at : at + 9])
    assert [item for item in items if not isinstance(item, memoryview)] == [FeedInfo(1, 9)]
    assert b"".join(bytes(i) for i in items if isinstance(i, memoryview)) == _packets(1, 4)
    assert framer.clock_refused is not None and why in framer.clock_refused


def test_a_server_clock_ahead_of_ours_is_said_and_counts_as_zero() -> None:
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("packetcore.follow")
    logger.addHandler(handler)  # its own handler: whatever other tests did to propagation
    try:
        with live(20_000.0) as server:
            feed = server.live
            assert feed is not None and feed.epoch_ns is not None
            feed.epoch_ns += 3_600 * 10**9  # its clock an hour ahead of this machine's
            start = published_edge(server.port) + 1
            stats, _ = follow_with_metrics(server.port, start, start + 1_000)
    finally:
        logger.removeHandler(handler)
    assert stats.publication.count == 1_001 and stats.publication.max == 0.0
    warned = [message for message in said if "ahead of this machine" in message]
    assert len(warned) == 1
    ahead = re.search(r"clock is ([\d.]+) s ahead", warned[0])
    assert ahead is not None and float(ahead.group(1)) == pytest.approx(3600, abs=1)


def test_a_feed_followed_long_after_its_start_is_timed_truly() -> None:
    # Percentiles up to 2**42 microseconds (51 days), not capped at an hour.
    from packetcore.client.latency import Latencies

    latencies = Latencies()
    latencies.add_many(np.full(10, 86_400.0 * 3))  # three days late
    assert latencies.percentile(50) == pytest.approx(86_400.0 * 3, rel=1e-3)
