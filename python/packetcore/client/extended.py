"""Recovery against an extended server: one stream-all pass with the gaps repaired beside it.

The hello's info frame gives the feed's first and last sequence.  One connection
streams the whole feed; a second one, the repair connection, asks for the gaps as
pipelined range requests while the stream still runs: everything below the stream's
position that is not held was dropped (a stream comes in sequence order), so the
complete prefix follows the stream closely and the output flows.  Each round of range
requests ends with a hello, whose info frame comes after every packet asked for.  A
server that stops answering ranges (it drops every resend) is asked for more
stream-all passes instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FetchError
from ..packets import Packets
from ..protocol import range_requests, stream_all_request
from .outcome import Outcome
from .ranges import asked_for_again
from .session import Link, Session, Wait

__all__ = ["copies", "recover_extended"]

log = logging.getLogger("packetcore.fetch")

# Gaps may be joined into one range request across a run of at most this many held
# packets, which are then asked for again (the repeats are not counted as duplicates,
# and each is compared with the copy held: a second copy).  Which runs are joined is
# bounded by REASK_SHARE: the repair traffic follows what is missing.
REASK_GAP = 64
#: Held packets asked for again in a round, at most, as a share of the packets missing:
#: the shortest runs between gaps are joined first, until the share is spent.  (Joining
#: everything at 25 % loss asked for the whole feed again: four times what was missing.)
REASK_SHARE = 0.15


async def recover_extended(session: Session, stream: Link | None, outcome: Outcome) -> None:
    """Stream all on ``stream`` (if given) while repairing the gaps, until complete."""
    options = session.options
    streaming: asyncio.Future[None] | None = None
    if stream is not None and options.sliced:
        stream.close()  # a slice is fetched by range requests only
    elif stream is not None:
        stream.ask(stream_all_request())
        outcome.count_pass()
        streaming = asyncio.ensure_future(_pass(session, stream, outcome.passes))
    try:
        await _repair(session, stream if streaming is not None else None, streaming, outcome)
    finally:
        if streaming is not None and not streaming.done():
            streaming.cancel()
            await asyncio.wait({streaming})


async def _pass(session: Session, link: Link, number: int) -> None:
    """Read stream-all pass ``number`` on ``link`` to its end.

    The pass is told however it ends: cancelled too (the ranges held everything before
    the stream's end came), so every pass counted has its event.
    """
    state: Wait | None = None  # None: cancelled
    try:
        state = await link.wait_closed(session.options.timeout)
    finally:
        link.close()
        clean = state == "done" and link.clean_end
        session.journal.passed(number, link.packets, link.new, link.highest, clean)
    if state != "done":
        log.info("the stream-all pass ended early (%s); recovering the rest", link.why())


async def _extra_pass(session: Session, outcome: Outcome) -> int:
    """Make one more stream-all pass on a new connection; return the new packets."""
    try:
        link = await session.open_link(recovering=True)
    except FetchError as exc:
        log.info("no further pass: %s", exc)
        return 0
    link.ask(stream_all_request(), repeats=len)
    outcome.count_pass()
    session.journal.asking()
    await _pass(session, link, outcome.passes)
    return link.new


async def _progress(session: Session, streaming: asyncio.Future[None]) -> None:
    """Wait until more packets arrive or the stream ends."""
    arrived: asyncio.Future[Any] = asyncio.ensure_future(session.arrived.wait())
    either: set[asyncio.Future[Any]] = {arrived, streaming}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        arrived.cancel()


async def _repair(
    session: Session, stream: Link | None, streaming: asyncio.Future[None] | None,
    outcome: Outcome,
) -> None:  # fmt: skip
    options = session.options
    store = session.store
    journal = session.journal
    retry = options.retry()
    link: Link | None = None
    sliced = False  # whether the first round of a slice (the fetch itself) is done
    replaced: str | None = None  # why the repair connection went, until it is replaced
    while not store.complete:
        running = streaming is not None and not streaming.done()
        # Below the stream's position, every sequence not held was dropped by it.
        frontier = stream.last_sequence + 1 if running and stream is not None else None
        session.arrived.clear()
        missing = store.missing_ranges(frontier)
        # A slice is fetched by range requests only: its first round is the fetch, not
        # a recovery (its packets are not counted as recovered by resend), and it goes
        # on a connection of its own.
        fetching = stream is None and options.sliced and not sliced
        if not fetching:
            known = frontier if frontier is not None else (store.last or 0) + 1
            journal.found(missing, known, "range")
        if not len(missing):
            if running and streaming is not None:
                await _progress(session, streaming)
                continue
            break  # pragma: no cover - complete, or nothing left that can be asked for
        if link is None:
            try:
                link = await session.open_link(recovering=not fetching)
            except FetchError as exc:
                outcome.stop(str(exc))
                break
            if replaced is not None:
                journal.reconnect("repair", replaced)
                replaced = None
        last = store.last if store.last is not None else store.first
        ranges = _join(missing)
        link.ask(
            range_requests(ranges),
            repeats=asked_for_again(missing, store.first, last),
            restart=True,
        )
        due = len(link.infos) + 1
        link.hello()  # closes the round: its answer comes after every packet asked for
        before = link.new
        if not fetching:
            outcome.count_round()
            journal.round(outcome.resend_rounds, "range", len(ranges), int(ranges[:, 1].sum()))
        with session.limited(_behind(link, ranges)):
            state = await link.wait_info(due, options.timeout)
        session.advance()
        gained = link.new - before
        log.debug(
            "round %d: %d gap(s), %d packet(s) %s, %s",
            outcome.resend_rounds, len(missing), gained,
            "fetched" if fetching else "recovered", state,
        )  # fmt: skip
        if state != "done":
            link.abort()
            link = None
            replaced = "silent" if state == "idle" else "lost"
        elif fetching:
            sliced = True
            link.close()  # the next round, if any, recovers on a connection of its own
            link = None
        if gained:
            retry.succeeded()
            continue
        if running and streaming is not None:
            await _progress(session, streaming)  # the stream still brings packets: follow it
            continue
        if state == "done":
            reason = "the server answers range requests with no packet"
            if outcome.passes < options.max_passes:
                # Ranges stopped delivering, but stream-all passes may still bring the rest.
                log.info("%s: asking for another stream-all pass", reason)
                if await _extra_pass(session, outcome):
                    retry.succeeded()
                    continue
        elif state == "idle":
            reason = f"range requests unanswered within {options.timeout:g} s"
        else:
            reason = "the connection was lost"
        if not retry.fail():
            outcome.stop(f"{reason} ({retry.failures} times in a row)")
            break
        await retry.pause(log, logging.INFO, "%s", reason)
    if link is not None:
        link.close()


async def copies(session: Session, wanted: list[int]) -> list[Packets]:
    """Return fresh copies of the packets ``wanted`` from an extended server, for a vote.

    A range request for a sequence the feed lacks just brings nothing; the hello after
    the requests says when every answer is in.
    """
    ranges = np.array([(s, 1) for s in wanted], dtype=np.int64).reshape(-1, 2)
    return await session.collect(range_requests(ranges), len(wanted), marked=True)


def _join(missing: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Return the gaps ``missing`` as the ranges of one round (see REASK_SHARE).

    The runs of held packets between the gaps are joined shortest first while the
    packets they hold stay within ``REASK_SHARE`` of the packets missing, and none
    longer than ``REASK_GAP``: fewer requests, and little asked for again.
    """
    if len(missing) < 2:
        return missing
    ends = missing[:, 0] + missing[:, 1]
    runs = missing[1:, 0] - ends[:-1]
    budget = REASK_SHARE * float(missing[:, 1].sum())
    order = np.argsort(runs, kind="stable")
    fit = int(np.searchsorted(np.cumsum(runs[order]), budget, side="right"))
    joined = np.zeros(len(runs), dtype=bool)
    joined[order[:fit]] = True
    breaks = np.flatnonzero(~(joined & (runs <= REASK_GAP)))
    starts = missing[np.concatenate(([0], breaks + 1)), 0]
    stops = ends[np.concatenate((breaks, [len(missing) - 1]))]
    return np.stack((starts, stops - starts), axis=1)


def _behind(link: Link, ranges: npt.NDArray[np.int64]) -> Callable[[], int | None]:
    """Return a ceiling that keeps the output's prefix behind the round on ``link``.

    A coalesced round brings a second copy of the held packets among its gaps: each is
    compared with the copy held before it is written, so a corrupted copy on either
    side is a conflict (settled by vote) rather than written.  Outside the round's
    ranges nothing more is coming, and the prefix is free.
    """
    stops = ranges[:, 0] + ranges[:, 1]
    starts = ranges[:, 0]

    def ceiling() -> int | None:
        delivered = link.last_sequence  # the round's answers come in ascending order
        i = int(np.searchsorted(stops, delivered + 1, side="right"))
        if i == len(stops):
            return None
        return max(int(starts[i]), delivered + 1) - 1

    return ceiling
