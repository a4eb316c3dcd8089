"""A live server killed and started again on its port, while a follow runs.

The server started again publishes from its first sequence once more (its clock starts
with it): the follow waits for it to publish again what was missing, rather than count
the wait as unanswered repairs, and hands on the same packets as a follow of one run.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from packetcore.client.follow import FollowStats, run_follow
from packetcore.client.session import FetchOptions
from packetcore.packets import Packets

# Run once, on the compiled engine: the follow's waiting on a restarted server: no engine path.
pytestmark = pytest.mark.engine_neutral

RATE, UNTIL = 20_000, 30_000


def serve(port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "packetcore", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--live", str(RATE), "--drop", "0.05", "--seed", "4", "-q"]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    assert "listening" in server.stderr.readline()
    threading.Thread(target=server.stderr.read, daemon=True).start()
    return server


def follow(port: int) -> tuple[Packets, FollowStats]:
    batches: list[Packets] = []
    options = FetchOptions(host="127.0.0.1", port=port, stop=UNTIL, timeout=1.0, retries=5)
    stats = asyncio.run(asyncio.wait_for(run_follow(options, batches.append), 60))
    return Packets.concat(batches), stats


def test_a_follow_waits_for_a_server_started_again_to_publish_again() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(port)
    got: list[tuple[Packets, FollowStats]] = []
    follower = threading.Thread(target=lambda: got.append(follow(port)))
    try:
        follower.start()
        time.sleep(0.6)  # about 12,000 published
        server.kill()
        server.wait()
        time.sleep(0.3)
        server = serve(port)  # publishes from sequence 1 again
        follower.join(60)
    finally:
        server.kill()
        server.wait()
    assert got, "the follow failed (its error is above)"
    packets, stats = got[0]
    assert packets.sequence.tolist() == list(range(1, UNTIL + 1))
    # Timed by the clock of the server that published them: the restarted server's new
    # clock once it published them again (by the first one's, p50 was the restart's
    # delay and more).
    assert stats.publication.count == UNTIL
    assert stats.publication.percentile(50) < 0.2
    # The same seed publishes the same packets: what came before the kill and after agree
    # with a follow of the new run alone.
    server = serve(port)
    try:
        again, _ = follow(port)
    finally:
        server.kill()
        server.wait()
    assert np.array_equal(again.price, packets.price)
    assert np.array_equal(again.symbol, packets.symbol)
