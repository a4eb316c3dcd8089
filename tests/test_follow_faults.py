"""Following through faults: lost repair answers, corrupted sequences, repair traffic.

Each test runs the product's own server (and proxy, for faults on the way), seeded, on
loopback, with feeds small enough to take a second or two.
"""

from __future__ import annotations

import asyncio

import pytest
from packetcore.engine import encode
from packetcore.feeds import synthetic
from packetcore.following import FollowStats, follow
from packetcore.packets import Packets
from packetcore.server import Server

import packetcore

TIMEOUT = 30.0


def collect(port: int, **options: object) -> tuple[Packets, FollowStats]:
    """Follow to the end (or ``until``) and return every batch joined, and the stats."""

    async def run() -> tuple[Packets, FollowStats]:
        batches: list[Packets] = []
        settings = {"timeout": 2.0, **options}
        async with follow("127.0.0.1", port, **settings) as feed:
            async for batch in feed:
                batches.append(batch)
            return Packets.concat(batches), feed.stats

    return asyncio.run(asyncio.wait_for(run(), TIMEOUT))


@pytest.mark.parametrize("seed", range(1, 13))
def test_a_finite_feed_whose_last_repair_answers_are_lost_is_followed_to_its_end(
    seed: int,
) -> None:
    # Half the packets dropped on the subscription and half the resends: the answers
    # for the feed's last packets are lost too, and the tail must be asked for again
    # (it was asked once and then never again: the follow waited for ever).
    feed = synthetic(20, seed=1)
    with Server(feed, host="127.0.0.1", port=0, live=1000, drop=0.5, drop_resends=0.5,
                seed=seed) as server:  # fmt: skip
        # Retries enough that half the resends dropped never fail it in a row.
        packets, stats = collect(server.port, retries=30, backoff=0.0)
    assert encode(packets) == encode(feed)
    assert stats.reason == "the feed ended"


def test_a_tail_never_answered_fails_after_the_retries_in_one_line() -> None:
    feed = synthetic(20, seed=1)
    server = Server(feed, host="127.0.0.1", port=0, live=1000, drop=0.5, drop_resends=1.0,
                    seed=2)  # fmt: skip
    with server, pytest.raises(packetcore.FetchError, match="did not answer sequence"):
        collect(server.port, retries=2, backoff=0.0)
