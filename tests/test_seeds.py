"""The seeded random streams (packetcore.seeds): one key each, independent, and repeating.

The pinned values were drawn by the release before the streams had one table: a seeded
run drops the same packets and injects the same faults as it did then.
"""

from __future__ import annotations

import hashlib
import itertools
import socket

import numpy as np
import pytest
from packetcore.faults.model import FaultPlan, Faults
from packetcore.faults.proxy import Proxy
from packetcore.faults.shaper import Shaper
from packetcore.io.feeds import synthetic
from packetcore.protocol import stream_all_request, subscribe_request
from packetcore.seeds import Kind, Streams
from packetcore.server.live import BLOCK, LiveFeed
from packetcore.server.loss import LossModel
from packetcore.server.server import Server
from serverutil import exchange

from packetcore import decode, encode

pytestmark = pytest.mark.timeout(60)

SEED = 7
DRAWS = 4096
#: Faults with random draws whose outcome does not depend on how the stream is cut.
FAULTS = Faults(loss=0.3, burst=2, duplicate=0.1, corrupt=0.1)


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def uniforms(rng: np.random.Generator) -> np.ndarray:
    return rng.random(DRAWS)


def test_every_kind_has_a_key_of_its_own() -> None:
    assert len({int(kind) for kind in Kind}) == len(Kind)
    streams = Streams(SEED)
    keys = list(itertools.product(Kind, range(3)))
    draws = {key: uniforms(streams.for_(*key)) for key in keys}
    # 12 streams, 66 pairs: none repeats another, none follows another (|r| < 6 sigma).
    for a, b in itertools.combinations(keys, 2):
        assert not np.array_equal(draws[a], draws[b]), (a, b)
        r = np.corrcoef(draws[a], draws[b])[0, 1]
        assert abs(r) < 6 / np.sqrt(DRAWS), (a, b, r)
    # A stream starts afresh each time it is asked for; the root is default_rng(seed).
    assert np.array_equal(uniforms(streams.for_(Kind.FAULTS, 1)), draws[(Kind.FAULTS, 1)])
    assert np.array_equal(uniforms(Streams(SEED).root()), uniforms(np.random.default_rng(SEED)))
    with pytest.raises(ValueError):
        streams.for_(99, 0)  # type: ignore[arg-type]


def test_unseeded_streams_differ_from_run_to_run() -> None:
    assert Streams().entropy != Streams().entropy
    one, two = LossModel(seed=None), LossModel(seed=None)
    a, b = one.stream_rng(0), two.stream_rng(0)
    assert a is not None and b is not None
    assert not np.array_equal(uniforms(a), uniforms(b))


def test_a_live_server_with_faults_draws_its_drop_mask_apart_from_the_faults() -> None:
    # As packetcore-serve --live RATE --seed S --drop 0.5 --jitter MS builds it: one seed
    # for the loss model and the fault plan.  Connection 0 subscribes (subscription 0).
    faults = FAULTS.replace(jitter=0.001)
    plan = FaultPlan(faults, seed=SEED)
    server = Server(host="127.0.0.1", port=0, live=1000.0, drop=0.5, seed=SEED, faults=plan)
    assert isinstance(server.index, LiveFeed)
    mask_rng, fault_rng = server.loss.subscription_rng(0), server.faults.rng(0)  # type: ignore[union-attr]
    assert mask_rng is not None
    keep = LossModel.keep_mask(mask_rng, BLOCK, server.loss.drop)
    # The fault draws of connection 0 as its delivery makes them: the shaper seeds its
    # streams first, then every chunk's jitter is drawn from the same generator.
    Shaper(faults, fault_rng)
    jitter = fault_rng.uniform(-faults.jitter, faults.jitter, DRAWS // 4)
    # Both drew from SeedSequence(S, spawn_key=(2, 0)): the jitter's sign was the keep
    # flag of every fourth packet from the 36th on (agreement 1.0, correlation 0.87).
    flags = keep[35::4][: len(jitter)]
    agreement = float(np.mean((jitter > 0) == flags))
    assert abs(agreement - 0.5) < 6 * 0.5 / np.sqrt(len(jitter)), agreement
    r = np.corrcoef(flags.astype(float), jitter)[0, 1]
    assert abs(r) < 6 / np.sqrt(len(jitter)), r
    # And the raw words are not one sequence, shifted or not.
    mask_words = server.loss.subscription_rng(0).bit_generator.random_raw(64)  # type: ignore[union-attr]
    fault_words = server.faults.rng(0).bit_generator.random_raw(64)  # type: ignore[union-attr]
    assert not set(mask_words.tolist()) & set(fault_words.tolist())


def test_a_live_subscriber_under_faults_gets_exactly_those_two_streams() -> None:
    # End to end: what subscription 0 on connection 0 receives is its drop mask, then
    # connection 0's faults over what the mask kept; each from the stream checked above.
    count, faults = 9000, Faults(loss=0.3)
    plan = FaultPlan(faults, seed=SEED)
    with Server(
        host="127.0.0.1", port=0, live=60_000.0, until=count, drop=0.5, seed=SEED, faults=plan
    ) as server:
        received = decode(exchange(server, subscribe_request(1))).sequence
        wire = bytes(server.index.rows(0, count))
    rng = LossModel(0.5, seed=SEED).subscription_rng(0)
    assert rng is not None
    keep = LossModel.keep_mask(rng, count, 0.5)
    rows = np.frombuffer(wire, dtype=np.uint8).reshape(count, -1)[keep]
    shaper = Shaper(faults, FaultPlan(faults, seed=SEED).rng(0))
    shaped = bytes(shaper.feed(rows.tobytes())) + bytes(shaper.finish())
    assert received.tolist() == decode(shaped).sequence.tolist()
    assert 0.45 < len(rows) / count < 0.55 and 0.25 < shaper.own["loss"] / len(rows) < 0.35


def test_seeded_drops_repeat_as_before() -> None:
    loss = LossModel(0.25, 0.3, seed=SEED)
    stream0, stream3, resends2 = loss.stream_rng(0), loss.stream_rng(3), loss.resend_rng(2)
    assert stream0 is not None and stream3 is not None and resends2 is not None
    assert stream0.bit_generator.random_raw(2).tolist() == [
        7233101070458666047, 2820918838249670645,
    ]  # fmt: skip
    assert stream3.bit_generator.random_raw(2).tolist() == [
        17399280157855551184, 12459577719489236851,
    ]  # fmt: skip
    assert resends2.bit_generator.random_raw(2).tolist() == [
        8834056210639959753, 2604645062250368442,
    ]  # fmt: skip
    # Subscriptions have their own kind now (they shared the faults' before): seeded all
    # the same, run after run.
    sub, again = loss.subscription_rng(1), LossModel(0.25, seed=SEED).subscription_rng(1)
    assert sub is not None and again is not None
    assert np.array_equal(uniforms(sub), uniforms(again))


def test_seeded_feeds_repeat_as_before() -> None:
    assert sha(encode(synthetic(5000, seed=3))) == (
        "16438bdc156db8fdd2e3ebdb4b5115db2434bd5d44d9eb10c9554ab7e9efb6d0"
    )
    assert sha(LiveFeed(1000.0, seed=SEED).rows(0, 70_000)) == (
        "f7bf52e5e078d783ede3f51f8e0b15b55fa2666085d3b1ed81173ba7c79fd5be"
    )


SHAPED = "8dc67fd4e5847b1d3167b98fcc0c61ff97d39209f0b02e4fb5e8db5d6c5c7ac4"


def test_seeded_faults_repeat_as_before() -> None:
    plan = FaultPlan(FAULTS, seed=SEED)
    assert plan.rng(5).bit_generator.random_raw(2).tolist() == [
        14107786642558701079, 13028270859809649363,
    ]  # fmt: skip
    rng = plan.rng(0)
    shaper = Shaper(FAULTS, rng)
    wire = encode(synthetic(5000, seed=3))
    assert sha(bytes(shaper.feed(wire)) + bytes(shaper.finish())) == SHAPED
    assert shaper.own == {"loss": 1565, "duplicate": 351, "corrupt": 387}
    assert rng.uniform(-1, 1, 2).tolist() == [0.6923692986569479, 0.7208380522789073]


def test_a_seeded_proxy_does_to_connection_0_what_it_did_before() -> None:
    with (
        Server(synthetic(5000, seed=3), host="127.0.0.1", port=0, drop=0.0) as server,
        Proxy(("127.0.0.1", server.port), FaultPlan(FAULTS, seed=SEED), port=0) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock,
    ):
        sock.sendall(stream_all_request())
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    assert sha(b"".join(chunks)) == SHAPED
