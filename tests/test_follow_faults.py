"""Following through faults: lost repair answers, corrupted sequences, repair traffic.

Each test runs the product's own server (and proxy, for faults on the way), seeded, on
loopback, with feeds small enough to take a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from packetcore.client.follow import FollowStats
from packetcore.faults.model import FaultPlan, Faults
from packetcore.faults.proxy import Proxy
from packetcore.io.feeds import synthetic
from packetcore.packets import Packets
from packetcore.server.server import Server
from serverutil import collect

import packetcore
from packetcore.engine import encode

TIMEOUT = 30.0


@pytest.mark.parametrize("seed", [*range(1, 13), 13, 14, 32, 44, 60])
def test_a_finite_feed_whose_last_repair_answers_are_lost_is_followed_to_its_end(
    seed: int,
) -> None:
    # Half the packets dropped on the subscription and half the resends: the answers
    # for the feed's last packets are lost too, and the tail must be asked for again
    # (it was asked once and then never again: the follow waited for ever).
    feed = synthetic(20, seed=1)
    with Server(feed, host="127.0.0.1", port=0, live=1000, drop=0.5, drop_resends=0.5,
                seed=seed) as server:  # fmt: skip
        # With the default retries: a sequence whose answers are lost round after round
        # is asked for in more copies each round, so half the resends dropped cannot
        # fail it (seeds 13, 14, 32, 44 and 60 did, at 7 asks in a row).
        packets, stats = collect(server.port, backoff=0.0)
    assert encode(packets) == encode(feed)
    assert stats.reason == "the feed ended"


def test_a_tail_never_answered_fails_after_the_retries_in_one_line() -> None:
    feed = synthetic(20, seed=1)
    server = Server(feed, host="127.0.0.1", port=0, live=1000, drop=0.5, drop_resends=1.0,
                    seed=2)  # fmt: skip
    with server, pytest.raises(packetcore.FetchError, match="did not answer sequence"):
        collect(server.port, retries=2, backoff=0.0)


def _moved(got: Packets, truth: bytes) -> list[tuple[int, int]]:
    """Return ``(sequence, true sequence)`` for records carrying another packet's payload.

    A corrupted sequence field differs from the true one in one byte: the record handed
    on at X is then the packet Y, one byte of X apart.
    """
    rows = np.frombuffer(encode(got), dtype=np.uint8).reshape(-1, 17)
    real = np.frombuffer(truth, dtype=np.uint8).reshape(-1, 17)
    wrong = np.flatnonzero((rows != real[: len(rows)]).any(axis=1))
    moved = []
    for i in wrong.tolist():
        sequence = i + 1
        for shift in (0, 8, 16, 24):
            for flip in range(1, 256):
                other = sequence ^ (flip << shift)
                if 1 <= other <= len(real) and bytes(rows[i, :13]) == bytes(real[other - 1, :13]):
                    moved.append((sequence, other))
    return moved


@dataclass
class Run:
    """A follow through the proxy, and what the server and the proxy counted."""

    packets: Packets
    stats: FollowStats
    truth: bytes  #: the feed's true bytes, as many packets as followed
    resent: int  #: packets the server resent
    dropped: int  #: packets its loss simulation dropped
    corrupted: int  #: packets the proxy corrupted
    connections: int  #: connections the proxy accepted


def _through_proxy(count: int, faults: FaultPlan) -> Run:
    """Follow ``count`` packets of a live feed (5 % dropped) through a proxy with ``faults``."""
    with (
        Server(None, host="127.0.0.1", port=0, live=100_000, drop=0.05, seed=44) as server,
        Proxy(("127.0.0.1", server.port), faults) as proxy,
    ):
        packets, stats = collect(proxy.port, until=count)
        return Run(
            packets,
            stats,
            bytes(server.index.rows(0, count)),
            server.stats.packets_resent,
            server.stats.packets_dropped,
            proxy.stats.faults.get("corrupt", 0),
            proxy.stats.connections,
        )


def test_a_corrupted_sequence_never_replaces_the_real_packet() -> None:
    # One packet in 500 has a byte changed on the way, a quarter of them in the sequence
    # field: such a packet stands at another sequence.  The follow kept the first copy of
    # a sequence and handed it on; now a packet out of order on its connection, or in
    # copies that differ, is asked for again and settled by vote before it is handed on.
    run = _through_proxy(100_000, FaultPlan(Faults(corrupt=0.002), seed=5))
    assert run.corrupted > 100
    assert run.packets.sequence.tolist() == list(range(1, 100_001))
    assert _moved(run.packets, run.truth) == []
    assert run.stats.reason == "until reached"
    # The summary says what the records rest on: corruptions the decoder caught, copies
    # that differed, and the packets no second copy confirmed (most of a follow's).
    stats = run.stats
    assert 0 < stats.invalid < run.corrupted
    assert stats.conflicts > 0
    assert 90_000 < stats.single_copy < 100_000
    summary = stats.summary()
    for part in ("on one copy only", f"{stats.conflicts} conflicts", f"{stats.invalid} invalid"):
        assert part in summary, summary
    # The subscription, the repair connection, and one for the copies, kept open.
    assert run.connections <= 4 + run.stats.reconnects


@pytest.mark.parametrize("duplicate", [0.0, 0.02])
def test_repair_traffic_follows_what_is_missing(duplicate: float) -> None:
    # Each packet a subscription lost is resent about once: a sequence corrupted far ahead
    # opened a gap of packets not yet published, asked for again at every hello (a
    # follow of 300,000 packets made the server resend 250,000, 17 times what was
    # missing), and held the repair latency up to seconds.  A packet duplicated on the
    # way (an exact repeat of the one before it) costs no copy.
    plan = FaultPlan(Faults(corrupt=0.002, duplicate=duplicate), seed=5)
    run = _through_proxy(100_000, plan)
    assert len(run.packets) == 100_000
    missing = run.dropped + run.corrupted  # each corrupted one is missing or doubted, at most
    assert run.dropped > 3000  # (some beyond the end: the subscription runs on a little)
    assert run.resent <= 1.2 * missing + 500, (run.resent, run.dropped, run.corrupted)
    assert run.stats.repair_max_ms < 1000 * TIMEOUT / 10  # no gap waits on packets to come


def test_a_slow_feed_without_loss_costs_no_resend() -> None:
    # Ten packets a second: the subscription is quiet between them.  Its last packet
    # waits for the next to confirm its sequence; the hello saying it was published
    # confirms it too, rather than having it asked for again as a tail loss.
    feed = synthetic(12, seed=1)
    with Server(feed, host="127.0.0.1", port=0, live=10, drop=0.0, seed=1) as server:
        packets, stats = collect(server.port)
        resent = server.stats.packets_resent
    assert encode(packets) == encode(feed)
    assert resent == 0 and stats.repaired == 0
    assert stats.reason == "the feed ended"


def test_a_follow_from_beyond_what_is_published_says_it_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # From a sequence the feed reaches in a while: one line says so, and the packets
    # come when they are published.
    with Server(host="127.0.0.1", port=0, live=2000, drop=0.0) as server:
        start = server.published + 400
        with caplog.at_level("INFO", logger="packetcore.follow"):
            packets, _ = collect(server.port, start=start, until=start + 9)
    assert packets.sequence.tolist() == list(range(start, start + 10))
    waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert len(waits) == 1 and f"waiting for sequence {start}" in waits[0], waits
