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
from packetcore.client.follow import run_follow
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


def follow(port: int) -> Packets:
    batches: list[Packets] = []
    options = FetchOptions(host="127.0.0.1", port=port, stop=UNTIL, timeout=1.0, retries=5)
    asyncio.run(asyncio.wait_for(run_follow(options, batches.append), 60))
    return Packets.concat(batches)


def test_a_follow_waits_for_a_server_started_again_to_publish_again() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(port)
    got: list[Packets] = []
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
    sequence = got[0].sequence
    assert sequence.tolist() == list(range(1, UNTIL + 1))
    # The same seed publishes the same packets: what came before the kill and after agree
    # with a follow of the new run alone.
    server = serve(port)
    try:
        again = follow(port)
    finally:
        server.kill()
        server.wait()
    assert np.array_equal(again.price, got[0].price)
    assert np.array_equal(again.symbol, got[0].symbol)
