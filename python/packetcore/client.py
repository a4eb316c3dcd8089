"""Fetch a whole feed from any server of the protocol: ``fetch`` and ``fetch_async``.

A fetch first asks for the extension (a hello, see PROTOCOL.md).  An extended server
answers with the feed's first and last sequence: one stream-all pass, then the gaps
are asked for as pipelined range requests on one connection, round after round, until
none is left.  A server that stays silent is a base server: see
:mod:`packetcore.base_mode`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from .base_mode import recover_base, trusted_highest
from .packets import Packets
from .protocol import (
    BASE_RESEND_MAX,
    RANGE_REQUEST_SIZE,
    RESEND_RANGE,
    hello_request,
    resend_request,
    stream_all_request,
)
from .recovery import (
    FetchError,
    FetchOptions,
    Link,
    Progress,
    Protocol,
    Session,
    backoff_delay,
)

__all__ = ["FetchError", "FetchOptions", "FetchResult", "fetch", "fetch_async"]

log = logging.getLogger("packetcore.fetch")

Mode = Literal["base", "extended"]

# Range requests [4][0][start:uint32][count:uint32] for many gaps at once, built by numpy;
# byte for byte what protocol.range_request builds for each.
_RANGE_DTYPE = np.dtype([("call", "u1"), ("zero", "u1"), ("start", ">u4"), ("count", ">u4")])
assert _RANGE_DTYPE.itemsize == RANGE_REQUEST_SIZE

# Gaps split into range requests only where more than this many held packets lie
# between them; shorter runs of held packets are asked for again.  A packetcore
# server spends on one range request about what sending 60 packets costs, so at 25 %
# loss one range covering everything missing is three to five times faster than
# 190,000 exact ones.  The repeats are not counted as duplicates.
_REASK_GAP = 64


@dataclass(frozen=True)
class FetchResult:
    """What a fetch got: the packets in sequence order, and how it got them.

    ``complete`` says whether ``packets`` holds every sequence from ``first`` to
    ``last``; if not, ``missing`` lists the gaps as inclusive ``(first, last)`` pairs
    and ``reason`` says why the fetch stopped.  ``received`` counts every valid packet
    decoded, duplicates included; ``recovered`` the packets that resends brought.
    """

    packets: Packets
    complete: bool
    mode: Mode
    first: int
    last: int | None
    last_inferred: bool
    received: int
    recovered: int
    duplicates: int
    conflicts: int
    invalid: int
    out_of_range: int
    passes: int
    resend_rounds: int
    seconds: float
    missing: tuple[tuple[int, int], ...] = ()
    chance_unseen: float | None = None
    reason: str = ""
    conflicting: Packets = field(default_factory=Packets.empty)
    invalid_offsets: tuple[tuple[int, int], ...] = ()

    @property
    def missing_count(self) -> int:
        """Return how many sequences are missing."""
        return sum(last - first + 1 for first, last in self.missing)

    def summary(self, output: str | None = None) -> str:
        """Return the one-line account of the fetch."""
        passes = f"{self.passes} pass" + ("" if self.passes == 1 else "es")
        parts = [
            f"{len(self.packets)} packets ({self.recovered} recovered by resend)",
            f"{self.duplicates} duplicates",
            f"{self.conflicts} conflicts",
        ]
        if self.invalid:
            parts.append(f"{self.invalid} invalid")
        parts += [passes, f"{self.seconds:.2f} s"]
        line = ", ".join(parts)
        if output is not None:
            line += f" -> {output}"
        line += f" [{self.mode} protocol"
        if self.last_inferred and self.last is not None:
            line += f"; last sequence {self.last} inferred"
            if self.chance_unseen is not None:
                line += f", P(later packet unseen) {self.chance_unseen:.1g}"
        return line + "]"


def format_ranges(ranges: tuple[tuple[int, int], ...], limit: int | None = None) -> str:
    """Return ``(first, last)`` ranges as ``1-3, 7, 9-12`` (at most ``limit`` of them)."""
    shown = ranges if limit is None else ranges[:limit]
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in shown)
    if len(shown) < len(ranges):
        text += f", ... ({len(ranges) - len(shown)} more ranges)"
    return text


async def fetch_async(
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    protocol: Protocol = "auto",
    hello_timeout: float = 0.2,
    timeout: float = 5.0,
    retries: int = 5,
    backoff: float = 0.1,
    confidence: float = 1e-6,
    max_passes: int = 100,
    progress: Progress | None = None,
) -> FetchResult:
    """Fetch the feed from ``host:port`` and recover every missing packet.

    ``protocol`` is ``auto`` (probe for the extension, waiting ``hello_timeout``
    seconds), ``base`` or ``extended``.  ``timeout`` is how long a connection may stay
    silent while an answer is due; connecting and unanswered requests are retried
    ``retries`` times, pausing ``backoff`` seconds doubled each time.  Against a base
    server, passes go on until the chance a later packet exists unseen is below
    ``confidence``, or ``max_passes`` were made.  ``progress`` is called with
    ``(packets held, packets expected or None)`` as packets arrive.

    Raise :class:`FetchError` if no packet could be fetched at all (no server, or
    ``protocol="extended"`` against one without the extension); any other shortfall
    is reported by an incomplete :class:`FetchResult`.
    """
    options = FetchOptions(
        host=host,
        port=port,
        protocol=protocol,
        hello_timeout=hello_timeout,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        confidence=confidence,
        max_passes=max_passes,
    )
    session = Session(options, progress)
    started = time.perf_counter()
    try:
        return await _fetch(session, started)
    finally:
        session.close_all()


def fetch(
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    protocol: Protocol = "auto",
    hello_timeout: float = 0.2,
    timeout: float = 5.0,
    retries: int = 5,
    backoff: float = 0.1,
    confidence: float = 1e-6,
    max_passes: int = 100,
    progress: Progress | None = None,
) -> FetchResult:
    """Fetch the feed from ``host:port`` (see :func:`fetch_async`), in a new event loop."""
    return asyncio.run(
        fetch_async(
            host,
            port,
            protocol=protocol,
            hello_timeout=hello_timeout,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            confidence=confidence,
            max_passes=max_passes,
            progress=progress,
        )
    )


async def _fetch(session: Session, started: float) -> FetchResult:
    options = session.options
    link: Link | None = None
    if options.protocol != "base":
        link = await _probe(session)
    if session.info is not None:
        assert link is not None
        passes, rounds, reason = await _recover_extended(session, link)
        settled = await _settle(session, "extended")
        return _result(session, started, "extended", passes, rounds, reason, settled=settled)
    outcome = await recover_base(session, link)
    if outcome.switched:
        # The server answered the hello late: it is an extended server after all.
        log.info("the server answered the hello late: switching to the extension")
        _, rounds, reason = await _recover_extended(session, None)
        settled = await _settle(session, "extended")
        return _result(
            session, started, "extended", outcome.passes, rounds, reason, settled=settled
        )
    settled = await _settle(session, "base")
    return _result(
        session,
        started,
        "base",
        outcome.passes,
        outcome.resend_rounds,
        outcome.reason,
        chance=outcome.chance,
        settled=settled,
    )


# One packet's payload, as the store keeps it: symbol, side, quantity, price.
_Row = tuple[bytes, bytes, int, int]


@dataclass
class _Settled:
    """Packets in doubt, asked for again: the payload copies agreed on, and the rest."""

    rows: dict[int, _Row] = field(default_factory=dict)
    unsettled: list[int] = field(default_factory=list)


def _rows(packets: Packets) -> list[tuple[int, _Row]]:
    """Return ``(sequence, payload)`` for each packet."""
    payloads = zip(
        packets.symbol.tolist(),
        packets.buysellindicator.tolist(),
        packets.quantity.tolist(),
        packets.price.tolist(),
        strict=True,
    )
    return list(zip(packets.sequence.tolist(), payloads, strict=True))


def _agreed(votes: dict[_Row, int]) -> _Row | None:
    """Return the payload at least two copies agree on, more than on any other."""
    ranked = sorted(votes.values(), reverse=True)
    if ranked[0] < 2 or (len(ranked) > 1 and ranked[1] == ranked[0]):
        return None
    return max(votes, key=votes.__getitem__)


async def _settle(session: Session, mode: Mode) -> _Settled:
    """Ask again for every held packet in doubt; keep the payload two copies agree on.

    A packet is in doubt when two copies of its sequence differed (a conflict) or it
    came out of order (see ``Link._check_order``): one copy may carry a corrupted byte,
    and the first arrival is not more likely right than a later one.  Copies are
    fetched on fresh connections until ``retries + 1`` attempts in a row bring none (or
    ``max_passes`` attempts were made); sequences still undecided are left out of the
    output and reported missing.
    """
    store = session.store
    conflicting = store.conflicting()
    doubts = {s for s in session.doubts | set(conflicting.sequence.tolist()) if s in store.tracker}
    if not doubts:
        return _Settled()
    held = store.to_packets()
    index = np.searchsorted(held.sequence, np.fromiter(sorted(doubts), dtype=np.int64))
    votes: dict[int, dict[_Row, int]] = {}
    for sequence, row in _rows(held[index]) + _rows(conflicting):
        tally = votes.setdefault(sequence, {})
        tally[row] = tally.get(row, 0) + 1
    settled = _Settled()
    options = session.options
    fruitless = 0
    for _ in range(options.max_passes):
        wanted = sorted(s for s, tally in votes.items() if _agreed(tally) is None)
        if not wanted or fruitless > options.retries:
            break
        if fruitless:
            await asyncio.sleep(backoff_delay(fruitless, options.backoff))
        log.info("asking again for %d packet(s) in doubt", len(wanted))
        copies = await _copies(session, mode, wanted)
        fruitless = 0 if copies else fruitless + 1
        for sequence, row in copies:
            votes[sequence][row] = votes[sequence].get(row, 0) + 1
    for sequence, tally in sorted(votes.items()):
        agreed = _agreed(tally)
        if agreed is None:
            settled.unsettled.append(sequence)
            log.warning("packet %d: in doubt, and no two copies agree; left out", sequence)
        else:
            settled.rows[sequence] = agreed
    return settled


async def _copies(session: Session, mode: Mode, wanted: list[int]) -> list[tuple[int, _Row]]:
    """Return fresh copies of the packets ``wanted``, each request on a new connection."""
    batches: list[Packets] = []
    if mode == "extended":
        # A range request for a sequence the feed lacks just brings nothing.
        requests = np.zeros(len(wanted), dtype=_RANGE_DTYPE)
        requests["call"] = RESEND_RANGE
        requests["start"] = wanted
        requests["count"] = 1
        await _ask(session, batches, requests.tobytes(), len(wanted))
    else:
        # A doubted sequence may be a corrupted one the feed lacks, and the reference
        # exchange crashes on a resend of such: only those at or below the highest
        # sequence held and trusted (so they exist: a feed has every sequence from its
        # first to its last) and below 128 are resent.  A stream-all pass brings a copy
        # of each of the others that exists, unless its loss simulation drops it.
        bound = min(BASE_RESEND_MAX, trusted_highest(session))
        named = [s for s in wanted if s <= bound]
        if named:
            request = b"".join(resend_request(sequence) for sequence in named)
            await _ask(session, batches, request, len(named))
        if len(named) < len(wanted):
            await _ask(session, batches, stream_all_request(), None)
    wanted_set = set(wanted)
    return [(s, row) for batch in batches for s, row in _rows(batch) if s in wanted_set]


async def _ask(session: Session, batches: list[Packets], request: bytes, due: int | None) -> None:
    """Send ``request`` on a new connection; collect ``due`` packets or, if None, all."""
    try:
        link = await session.open_link(sink=batches.append)
    except FetchError as exc:
        log.info("cannot ask again: %s", exc)
        return
    link.send(request)
    if due is None:
        await link.wait_closed(session.options.timeout)
    else:
        await link.wait(lambda: link.packets >= due, session.options.timeout)
    link.close()


async def _probe(session: Session) -> Link | None:
    """Send the hello; return the connection to stream on (``None``: open a new one)."""
    options = session.options
    link = await session.open_link()
    link.expect_info = 1
    link.send(hello_request())
    wait = options.hello_timeout if options.protocol == "auto" else options.timeout
    state = await link.wait(lambda: bool(link.infos), wait)
    if link.broken:
        # The server answered the hello, but not with an info frame the fetch can use
        # (e.g. a last sequence beyond int32): an extended server gone wrong, not a base
        # server, so no fallback to the base protocol.
        link.close()
        raise FetchError(
            f"{options.host}:{options.port}: bad answer to the extension hello: {link.error}"
        )
    if link.infos:
        info = link.infos[0]
        log.debug("extended server: feed %d..%d", info.first, info.last)
        return link
    if options.protocol == "extended":
        link.close()
        if link.error is not None:
            raise FetchError(f"{options.host}:{options.port}: {link.error}")
        raise FetchError(
            f"{options.host}:{options.port} did not answer the extension hello within "
            f"{options.timeout:g} s: a base-protocol server? (try --protocol auto or base)"
        )
    if state == "lost":
        log.debug("the server hung up on the hello: base protocol")
        return None
    log.debug("no answer to the hello within %g s: base protocol", wait)
    # Carry on on this connection; its first bytes may yet be a late answer.
    link.expect_info = 0
    link.late_info = True
    return link


async def _recover_extended(session: Session, link: Link | None) -> tuple[int, int, str]:
    """Stream all once on ``link`` (if given), then range-request the gaps.

    Return (passes, request rounds, why it stopped short or "").
    """
    options = session.options
    passes = 0
    if link is not None:
        link.send(stream_all_request())
        state = await link.wait_closed(options.timeout)
        passes = 1
        link.close()
        if state != "done":
            log.info("the stream-all pass ended early (%s); recovering the rest", state)
    tracker = session.store.tracker
    rounds = failures = 0
    reason = ""
    link = None
    while not tracker.complete:
        if link is None:
            try:
                link = await session.open_link(recovering=True)
            except FetchError as exc:
                reason = str(exc)
                break
        missing = tracker.missing_ranges()
        ranges = _coalesce(missing, _REASK_GAP)
        held = len(session.store)
        requests = np.zeros(len(ranges), dtype=_RANGE_DTYPE)
        requests["call"] = RESEND_RANGE
        requests["start"] = ranges[:, 0]
        requests["count"] = ranges[:, 1]
        # A hello closes the round: its info frame comes after every packet asked for.
        link.asked = _asked_for_again(missing, tracker.first, tracker.last or tracker.first)
        link.expect_info += 1
        due = len(link.infos) + 1
        current = link
        current.last_sequence = 0  # a new round starts again from low sequences
        current.send(requests.tobytes() + hello_request())
        rounds += 1
        state = await current.wait(_infos_reach(current, due), options.timeout)
        gained = len(session.store) - held
        log.debug(
            "round %d: %d range request(s), %d packet(s) recovered, %s",
            rounds, len(ranges), gained, state,
        )  # fmt: skip
        if state != "done":
            link.abort()
            link = None
        if gained:
            failures = 0
            continue
        failures += 1
        if state == "done":
            reason = "the server answers range requests with no packet"
        elif state == "idle":
            reason = f"range requests unanswered within {options.timeout:g} s"
        else:
            reason = f"the connection was lost ({current.error or 'closed'})"
        if failures > options.retries:
            reason += f" ({failures} times in a row)"
            break
        delay = backoff_delay(failures, options.backoff)
        log.info("%s; retrying in %.2f s", reason, delay)
        await asyncio.sleep(delay)
    if link is not None:
        link.close()
    return passes, rounds, "" if tracker.complete else reason


def _apply(
    packets: Packets, missing: npt.NDArray[np.int64], settled: _Settled
) -> tuple[Packets, npt.NDArray[np.int64]]:
    """Put the agreed payloads in ``packets``; drop the unsettled, adding them to ``missing``."""
    sequence = packets.sequence
    symbol, side = packets.symbol.copy(), packets.buysellindicator.copy()
    quantity, price = packets.quantity.copy(), packets.price.copy()
    for number, (symbol_at, side_at, quantity_at, price_at) in settled.rows.items():
        at = int(np.searchsorted(sequence, number))
        symbol[at], side[at], quantity[at], price[at] = symbol_at, side_at, quantity_at, price_at
    keep = ~np.isin(sequence, settled.unsettled)
    fixed = Packets._from_columns(
        symbol[keep], side[keep], quantity[keep], price[keep], sequence[keep].copy()
    )
    if settled.unsettled:
        extra = np.array([(s, 1) for s in settled.unsettled], dtype=np.int64).reshape(-1, 2)
        missing = _merge_ranges(np.concatenate((missing.reshape(-1, 2), extra)))
    return fixed, missing


def _merge_ranges(ranges: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Sort ``(start, count)`` ranges and merge those that touch."""
    merged: list[list[int]] = []
    for start, count in sorted(ranges.tolist()):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            end = max(merged[-1][0] + merged[-1][1], start + count)
            merged[-1][1] = end - merged[-1][0]
        else:
            merged.append([start, count])
    return np.array(merged, dtype=np.int64).reshape(-1, 2)


def _infos_reach(link: Link, count: int) -> Callable[[], bool]:
    return lambda: len(link.infos) >= count


def _asked_for_again(
    missing: npt.NDArray[np.int64], first: int, last: int
) -> Callable[[Packets], int]:
    """Return a counter of the packets in a batch that were held when ``missing`` was.

    Works from the sorted, disjoint ``(start, count)`` ranges alone: memory follows the
    number of gaps, never the length of the feed (which a server merely announces).
    """
    starts = np.ascontiguousarray(missing[:, 0], dtype=np.int64)
    stops = starts + missing[:, 1]

    def asked(batch: Packets) -> int:
        sequences = batch.sequence.astype(np.int64)
        sequences = sequences[(sequences >= first) & (sequences <= last)]
        if len(starts) == 0:
            return len(sequences)
        # The last range starting at or before each sequence; missing if it reaches it.
        at = np.searchsorted(starts, sequences, side="right") - 1
        gap = (at >= 0) & (sequences < stops[np.maximum(at, 0)])
        return int(len(sequences) - np.count_nonzero(gap))

    return asked


def _coalesce(ranges: npt.NDArray[np.int64], gap: int) -> npt.NDArray[np.int64]:
    """Merge ``(start, count)`` ranges that fewer than ``gap`` held sequences separate."""
    if len(ranges) < 2:
        return ranges
    ends = ranges[:, 0] + ranges[:, 1]
    held = ranges[1:, 0] - ends[:-1]
    breaks = np.flatnonzero(held > gap)
    starts = ranges[np.concatenate(([0], breaks + 1)), 0]
    stops = ends[np.concatenate((breaks, [len(ranges) - 1]))]
    return np.stack((starts, stops - starts), axis=1)


def _result(
    session: Session,
    started: float,
    mode: Mode,
    passes: int,
    rounds: int,
    reason: str,
    *,
    chance: float | None = None,
    settled: _Settled | None = None,
) -> FetchResult:
    store = session.store
    tracker = store.tracker
    packets = store.to_packets()
    missing_ranges = tracker.missing_ranges()
    if settled is not None and (settled.rows or settled.unsettled):
        packets, missing_ranges = _apply(packets, missing_ranges, settled)
        if settled.unsettled and not reason:
            reason = (
                f"{len(settled.unsettled)} packet(s) arrived in copies that differ, and "
                f"asking again did not confirm one"
            )
    complete = tracker.complete and len(missing_ranges) == 0
    missing: tuple[tuple[int, int], ...] = ()
    if not complete:
        missing = tuple((start, start + count - 1) for start, count in missing_ranges.tolist())
        if not reason:
            reason = "stopped short"
    return FetchResult(
        packets=packets,
        complete=complete,
        mode=mode,
        first=tracker.first,
        last=tracker.last,
        last_inferred=mode == "base",
        received=session.received,
        recovered=session.recovered,
        duplicates=session.duplicates,
        conflicts=store.conflicts,
        invalid=len(session.invalid_offsets),
        out_of_range=store.out_of_range,
        passes=passes,
        resend_rounds=rounds,
        seconds=time.perf_counter() - started,
        missing=missing,
        chance_unseen=chance if mode == "base" else None,
        reason="" if complete else reason,
        conflicting=store.conflicting(),
        invalid_offsets=tuple(session.invalid_offsets),
    )
