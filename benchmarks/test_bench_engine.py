"""The compiled engine against its pure-Python twin and the obvious rivals, per operation.

Run ``make bench`` (or ``pytest benchmarks --benchmark-only --benchmark-group-by=group``):
one table per operation, every implementation side by side, then the speed-ups.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from packetcore.packets import Packets

from packetcore.engine import _engine, _pure

ENGINES = {"c": _engine, "py": _pure}

# The pure-Python twin takes seconds per call: a few rounds of one call each.
PURE_ROUNDS = 3

# The byte layout of a response packet, for numpy's own decoding.
WIRE_DTYPE = np.dtype(
    [
        ("symbol", "S4"),
        ("buysellindicator", "S1"),
        ("quantity", ">i4"),
        ("price", ">i4"),
        ("sequence", ">i4"),
    ]
)


def run(benchmark: Any, impl: str, fn: Callable[..., Any], *args: Any) -> Any:
    if impl == "py":
        return benchmark.pedantic(fn, args, rounds=PURE_ROUNDS, iterations=1, warmup_rounds=0)
    return benchmark(fn, *args)


def numpy_decode(buf: bytes) -> tuple[np.ndarray, ...]:
    """Decode with np.frombuffer, then copy each field into a native-endian array."""
    rows = np.frombuffer(buf, dtype=WIRE_DTYPE)
    return (
        np.ascontiguousarray(rows["symbol"]),
        np.ascontiguousarray(rows["buysellindicator"]),
        rows["quantity"].astype(np.int32),
        rows["price"].astype(np.int32),
        rows["sequence"].astype(np.int32),
    )


@pytest.mark.parametrize("impl", ["c", "py", "numpy"])
def test_decode(benchmark: Any, impl: str, wire: bytes, packets: Packets) -> None:
    benchmark.group = "decode"
    if impl == "numpy":
        out = run(benchmark, impl, numpy_decode, wire)
        assert np.array_equal(out[4], packets.sequence)
        return
    out = run(benchmark, impl, ENGINES[impl].decode, wire)
    assert out == packets


@pytest.mark.parametrize("impl", ["c", "py"])
def test_gaps(benchmark: Any, impl: str, arrivals: np.ndarray, packets: Packets) -> None:
    benchmark.group = "gaps"
    engine = ENGINES[impl]
    last = len(packets)

    def add_and_find_gaps() -> np.ndarray:
        tracker = engine.GapTracker(1, last)
        tracker.add(arrivals)
        return tracker.missing_ranges()

    ranges = run(benchmark, impl, add_and_find_gaps)
    assert ranges[:, 1].sum() == last - len(arrivals)


@pytest.mark.parametrize("impl", ["c", "py", "json", "orjson"])
def test_to_json(
    benchmark: Any, impl: str, packets: Packets, records: list[dict[str, Any]]
) -> None:
    benchmark.group = "to_json"
    if impl == "json":
        out = run(benchmark, impl, json.dumps, records)
    elif impl == "orjson":
        out = run(benchmark, impl, orjson.dumps, records)
    else:
        out = run(benchmark, impl, ENGINES[impl].to_json, packets)
    assert len(out) > 60 * len(packets)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_encode(benchmark: Any, impl: str, packets: Packets, wire: bytes) -> None:
    benchmark.group = "encode"
    assert run(benchmark, impl, ENGINES[impl].encode, packets) == wire


@pytest.mark.parametrize("impl", ["c", "py", "numpy"])
def test_gather(benchmark: Any, impl: str, wire: bytes, arrivals: np.ndarray) -> None:
    benchmark.group = "gather"
    keep = np.zeros(len(wire) // 17, dtype=bool)
    keep[arrivals - 1] = True
    if impl == "numpy":
        rows = np.frombuffer(wire, dtype="V17")
        out = run(benchmark, impl, lambda: np.compress(keep, rows).tobytes())
    else:
        out = run(benchmark, impl, ENGINES[impl].gather, wire, keep)
    assert len(out) == 17 * len(arrivals)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_store_add(benchmark: Any, impl: str, packets: Packets, arrivals: np.ndarray) -> None:
    benchmark.group = "store_add"
    engine = ENGINES[impl]
    kept = packets[arrivals - 1]  # in order, 25% lost

    def add() -> Any:
        store = engine.PacketStore(1, len(packets))
        store.add(kept)
        return store

    store = run(benchmark, impl, add)
    assert store.pending == len(arrivals)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_store_take(benchmark: Any, impl: str, packets: Packets, arrivals: np.ndarray) -> None:
    benchmark.group = "store_take"
    engine = ENGINES[impl]
    kept = packets[arrivals - 1]

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        store = engine.PacketStore(1, len(packets))
        store.add(kept)
        return (store,), {}

    def take_all(store: Any) -> Packets:
        return store.take(len(packets) + 1)

    rounds = PURE_ROUNDS if impl == "py" else 10
    out = benchmark.pedantic(take_all, setup=setup, rounds=rounds, iterations=1)
    assert len(out) == len(arrivals)
