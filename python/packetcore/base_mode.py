"""Recovery against a base-protocol server: stream-all passes, single resends, an inferred end.

A base server never says how long its feed is, and may drop the last packet like any
other, so the end of the feed is inferred: passes go on until the chance that a later
packet exists but was dropped by every pass is below ``confidence``.

That chance is estimated from the loss the passes themselves show.  After ``k`` clean
passes (each read to EOF), with ``H`` the highest sequence seen and ``d`` the packets
of ``1..H`` those passes missed out of ``n = k * H`` chances, a packet beyond ``H``
was missed by all ``k`` passes with probability ``p ** k`` at loss rate ``p``.  ``p``
is not taken as ``d / n`` but integrated over what the passes say of it (a uniform
prior, so ``p ~ Beta(d + 1, n - d + 1)``)::

    P(unseen) = E[p ** k] = prod((d + 1 + j) / (n + 2 + j) for j in range(k))

which exceeds ``(d / n) ** k`` and so errs towards more passes, the more so the
fewer packets have been seen (a 14-packet book at 25 % loss needs about a dozen
passes for 1e-6; a large feed, about ``log(1e-6) / log(p)``).

Resends name a sequence in one byte and the reference exchange reads it as signed and
crashes on a sequence it does not have, so only ``1..min(127, T)`` are ever resent,
``T`` being the highest sequence held that is not in doubt (``Session.doubts``: it came
out of order, or in copies that differ).  A doubted packet may carry a corrupted
sequence field, so it is no evidence that it or the sequences below it exist; ``T`` is,
as a feed has every sequence from its first to its last.  A doubted sequence above
``T`` is never resent, only confirmed by stream-all passes (see ``client._copies``).
Passes are made one at a time: the reference shares one request buffer among all its
connections, so concurrent requests could corrupt each other.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from .protocol import BASE_RESEND_MAX, hello_request, resend_request, stream_all_request
from .recovery import FetchError, Link, Session, backoff_delay

__all__ = ["BaseOutcome", "chance_unseen", "recover_base", "trusted_highest"]

log = logging.getLogger("packetcore.fetch")


def chance_unseen(drops: int, chances: int, passes: int) -> float:
    """Return the chance that a packet was missed by all ``passes`` passes.

    ``drops`` of ``chances`` packets were missed so far; see the module docstring.
    """
    if passes <= 0:
        return 1.0
    log_chance = 0.0
    for j in range(passes):
        log_chance += math.log((drops + 1 + j) / (chances + 2 + j))
    return math.exp(log_chance)


@dataclass
class BaseOutcome:
    """How base-mode recovery ended."""

    passes: int = 0
    resend_rounds: int = 0
    chance: float = 1.0
    complete: bool = False
    switched: bool = False  # a late info frame showed an extended server after all
    reason: str = ""


async def recover_base(session: Session, link: Link | None) -> BaseOutcome:
    """Make passes and resends until the feed is complete and its end is established.

    ``link`` is a fresh connection to stream the first pass on, or ``None``.
    """
    options = session.options
    store = session.store
    outcome = BaseOutcome()
    counts: list[int] = []  # packets each clean pass brought
    failures = 0
    resends_answered = True
    while True:
        if link is None:
            try:
                link = await session.open_link()
            except FetchError as exc:
                if session.received == 0:
                    raise
                outcome.reason = str(exc)
                return outcome
            if options.protocol == "auto" and session.received == 0:
                # Nothing has arrived yet, so the silence that led here may have been a
                # dead connection rather than a base server: ask for the extension again,
                # back to back with the stream.  A base server ignores the hello; an
                # extended one answers it first (answers come in request order).
                link.late_info = True
                link.send(hello_request())
        if len(store):
            link.asked = len  # a pass re-sends what is held: those repeats are no news
        link.send(stream_all_request())
        state = await link.wait_closed(options.timeout)
        link.close()
        outcome.passes += 1
        if link.packets:
            session.pass_ends[link.last_sequence] += 1
        if session.info is not None:
            outcome.switched = True
            return outcome
        store = session.store
        if state == "done" and link.clean_end:
            counts.append(link.packets)
            failures = 0
        else:
            # A pass cut short says nothing about the loss rate; its packets still count.
            failures += 1
            why = "went silent" if state == "idle" else f"ended early ({_why(link)})"
            log.info("pass %d: the server %s", outcome.passes, why)
            if failures > options.retries:
                outcome.reason = f"the server {why} on {failures} passes in a row"
                if session.received == 0:
                    # Nothing at all came: a failure to fetch (as documented by fetch),
                    # not an incomplete feed with no gap to name.
                    raise FetchError(f"{options.host}:{options.port}: {outcome.reason}")
                return outcome
            await asyncio.sleep(backoff_delay(failures, options.backoff))
        link = None
        highest = store.tracker.highest or 0
        if resends_answered:
            # Only up to a sequence held and trusted, never up to a doubted one (see above).
            resendable = _missing(session, min(BASE_RESEND_MAX, trusted_highest(session)))
            if resendable:
                outcome.resend_rounds += 1
                resends_answered = await _resend(session, resendable)
        chances = len(counts) * highest
        drops = sum(highest - min(count, highest) for count in counts)
        outcome.chance = chance_unseen(drops, chances, len(counts))
        gaps = store.tracker.missing_count()
        log.debug(
            "pass %d: highest %d, %d missing, loss %d/%d, P(later packet unseen) %.3g",
            outcome.passes, highest, gaps, drops, chances, outcome.chance,
        )  # fmt: skip
        if highest and gaps == 0 and outcome.chance < options.confidence:
            store.last = highest
            outcome.complete = True
            return outcome
        if outcome.passes >= options.max_passes:
            if gaps:
                outcome.reason = f"{gaps} packet(s) still missing after {outcome.passes} passes"
            elif not highest:
                outcome.reason = f"no packet arrived in {outcome.passes} passes"
            else:
                outcome.reason = (
                    f"the end of the feed is not established: after {outcome.passes} passes "
                    f"the chance that a packet after {highest} exists unseen is "
                    f"{outcome.chance:.2g}, above the bound {options.confidence:g} "
                    f"(raise --max-passes)"
                )
            return outcome


def trusted_highest(session: Session) -> int:
    """Return the highest sequence held and not in doubt, or 0 if there is none.

    Walks the runs of held sequences from the top down, skipping doubted ones: the cost
    follows the number of gaps and doubts, not the length of the feed.  The highest
    sequence held counts only once two passes have ended on it: a corrupted sequence
    in the last packet of a pass has nothing after it to show it out of order.
    """
    tracker = session.store.tracker
    runs: list[tuple[int, int]] = []  # held sequences (low, high), between the gaps
    low = tracker.first
    for start, count in tracker.missing_ranges().tolist():
        if start > low:
            runs.append((low, start - 1))
        low = start + count
    if low <= (tracker.highest or 0):
        runs.append((low, tracker.highest or 0))
    top = tracker.highest or 0
    for low, high in reversed(runs):
        for sequence in range(high, low - 1, -1):
            if sequence == top and session.pass_ends[sequence] < 2:
                continue
            if sequence not in session.doubts:
                return sequence
    return 0


def _missing(session: Session, up_to: int) -> list[int]:
    if up_to < 1:
        return []
    sequences: list[int] = []
    for start, count in session.store.tracker.missing_ranges().tolist():
        if start > up_to:
            break
        sequences.extend(range(start, min(start + count, up_to + 1)))
    return sequences


async def _resend(session: Session, sequences: list[int]) -> bool:
    """Ask for ``sequences`` with pipelined resends; return whether any answer came."""
    options = session.options
    try:
        link = await session.open_link(recovering=True)
    except FetchError as exc:
        log.info("resends skipped: %s", exc)
        return True
    tracker = session.store.tracker
    link.send(b"".join(resend_request(sequence) for sequence in sequences))
    # Resends are answered in order and each with one packet, unless the server drops it.
    state = await link.wait(
        lambda: link.packets >= len(sequences) or all(s in tracker for s in sequences),
        options.timeout,
    )
    link.close()
    if state != "done":
        log.info(
            "resends: %d of %d answered before the server %s",
            link.packets, len(sequences), "went silent" if state == "idle" else "hung up",
        )  # fmt: skip
    if link.packets == 0 and state == "idle":
        log.info("the server answers no resends: missing packets are left to further passes")
        return False
    return True


def _why(link: Link) -> str:
    if link.error is not None:
        return str(link.error) or type(link.error).__name__
    if link.decoder.pending:
        return f"{link.decoder.pending} bytes into a packet"
    return "closed"
