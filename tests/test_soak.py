"""Soak and load: long reliability runs, ``make soak`` only (``pytest tests -m slow``).

Both print their figures (``pytest -s`` shows them; they are also in the assertion
messages) so docs/reliability.md can quote them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from packetcore.client.fetch import FetchError, fetch, fetch_async
from packetcore.faults.model import Faults
from packetcore.faults.proxy import Proxy
from packetcore.io.feeds import book, synthetic
from packetcore.server.server import Server
from serverutil import ServeProcess

from packetcore import to_json

pytestmark = pytest.mark.slow

SOAK_FETCHES = 300
SOAK_FEED = synthetic(10_000, seed=42)
SOAK_JSON = to_json(SOAK_FEED)
INFO = 16
#: Short fetch timeouts keep the faults that cost a timeout (hang, swallow) cheap.
SOAK_TIMING = {"timeout": 0.3, "retries": 2, "backoff": 0.01, "hello_timeout": 0.2}


def _random_faults(rng: random.Random, index: int) -> tuple[str, Faults]:
    """Return one fault from the list for connection ``index``, and its name.

    Corruption hits only what a client can check: a sequence byte (any change), or a
    symbol or side byte turned into a non-ASCII one.  A changed quantity or price, or
    a symbol or side changed into another valid one, in a packet received once is
    undetectable by this protocol (see test_reliability), so it cannot count against
    the fetch.  Offsets assume the first round of answers on the connection: after the
    info frame on the first connection (the probe), at 0 on the others.
    """
    kind = rng.choice(
        ["close", "reset", "delay", "throttle", "swallow", "duplicate", "reorder",
         "corrupt", "hang", "none"]
    )  # fmt: skip
    stream = INFO + 17 * 10_000
    if kind == "close":
        return kind, Faults(close_after=rng.randrange(stream))
    if kind == "reset":
        return kind, Faults(reset_after=rng.randrange(stream))
    if kind == "delay":
        return kind, Faults(latency=rng.uniform(0.0, 0.2))
    if kind == "throttle":
        return kind, Faults(bandwidth=rng.uniform(200_000, 2_000_000))
    if kind == "swallow":
        return kind, Faults(swallow_resends=True)
    if kind == "duplicate":
        return kind, Faults(duplicate_at=set(rng.sample(range(5000), 20)))
    if kind == "reorder":
        return kind, Faults(reorder_at=set(rng.sample(range(5000), 20)))
    if kind == "corrupt":
        head = INFO if index == 0 else 0
        if rng.random() < 0.5:
            fields, xor = (13, 14, 15, 16), rng.randint(1, 255)  # the sequence
        else:
            fields, xor = (0, 1, 2, 3, 4), rng.randint(1, 127) | 0x80  # symbol, side
        count = 5000 if index == 0 else 200
        offsets = [
            head + 17 * rng.randrange(count) + rng.choice(fields) for _ in range(rng.randint(1, 5))
        ]
        return kind, Faults(corrupt_at=tuple(offsets), corrupt_xor=xor)
    if kind == "hang":
        return kind, Faults(hang=True)
    return kind, Faults()


@pytest.fixture(scope="module")
def soak_server() -> Iterator[Server]:
    """The 10,000-packet feed at 50 % loss."""
    with Server(SOAK_FEED, host="127.0.0.1", port=0, drop=0.5, seed=7) as server:
        yield server


@pytest.mark.timeout(480)
def test_soak(soak_server: Server) -> None:
    rng = random.Random(2024)
    tally: Counter[str] = Counter()
    by_fault: Counter[tuple[str, str]] = Counter()
    started = time.monotonic()
    for _ in range(SOAK_FETCHES):
        # Each connection of a fetch draws its own fault: the stream, every recovery round.
        faults = {i: _random_faults(rng, i) for i in range(64)}
        first = faults[0][0]
        script = {i: fault for i, (_, fault) in faults.items()}
        with Proxy(("127.0.0.1", soak_server.port), script.get) as proxy:
            try:
                result = fetch(port=proxy.port, **SOAK_TIMING)  # type: ignore[arg-type]
            except FetchError:
                result = None  # nothing at all could be fetched: a clean failure
        if result is None:
            tally["failed cleanly"] += 1
            by_fault[(first, "failed cleanly")] += 1
            continue
        packets = result.packets
        # Even an incomplete fetch must hold only true packets.
        true = len(packets) == 0 or packets == SOAK_FEED[packets.sequence - 1]
        if result.complete and true and to_json(packets) == SOAK_JSON:
            outcome = "completed"
        elif not result.complete and true and result.reason:
            # Stopped short with a reason, every packet held true: the CLI exits 3 and
            # names the missing ranges (none when only the end was not established).
            outcome = "failed cleanly"
        else:
            outcome = "wrong"
        tally[outcome] += 1
        by_fault[(first, outcome)] += 1
    seconds = time.monotonic() - started
    figures = (
        f"soak: {SOAK_FETCHES} fetches of a 10,000-packet feed at 50 % loss with random "
        f"faults in {seconds:.0f} s: {tally['completed']} completed, "
        f"{tally['failed cleanly']} failed cleanly, {tally['wrong']} wrong"
    )
    print("\n" + figures)
    print("  by the stream connection's fault: " + ", ".join(
        f"{fault}/{outcome}: {count}" for (fault, outcome), count in sorted(by_fault.items())
    ))  # fmt: skip
    assert tally["wrong"] == 0, figures


LOAD_CLIENTS = 500


@pytest.mark.timeout(300)
def test_load_500_concurrent_clients() -> None:
    # One packetcore-serve (a subprocess, so its peak memory is its own) and 500 fetches
    # at once from one event loop: each streams the book and repairs its gaps.
    expected = to_json(book())

    async def run(port: int) -> list[bytes | BaseException]:
        tasks = [
            fetch_async(port=port, timeout=30.0, retries=5, backoff=0.1)
            for _ in range(LOAD_CLIENTS)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, BaseException) else to_json(r.packets) for r in results]

    with ServeProcess("--seed", "3", "--max-connections", "2048") as server:
        started = time.monotonic()
        outputs = asyncio.run(run(server.port))
        seconds = time.monotonic() - started
        peak = server.memory("VmHWM")
        alive = server.alive()
    correct = sum(1 for output in outputs if output == expected)
    errors = [output for output in outputs if isinstance(output, BaseException)]
    figures = (
        f"load: {LOAD_CLIENTS} concurrent fetches of the book, {correct} complete and correct, "
        f"in {seconds:.2f} s ({LOAD_CLIENTS / seconds:.0f} fetches/s); server peak RSS "
        f"(VmHWM) {peak / 2**20:.1f} MiB"
    )
    print("\n" + figures)
    assert alive, "the server died under load"
    assert not errors, f"{len(errors)} fetches failed, e.g. {errors[0]!r}; {figures}"
    assert correct == LOAD_CLIENTS, figures
