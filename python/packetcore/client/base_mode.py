"""Recovery against a base-protocol server: stream-all passes, single resends, an inferred end.

A base server never says how long its feed is, and may drop the last packet like any
other, so the end of the feed is inferred: passes go on until the chance that a later
packet exists but was dropped by every pass is below ``confidence``.

That chance is estimated from the loss the passes themselves show.  After ``k`` clean
passes (each read to EOF), with ``H`` the inferred end and ``d`` the packets of
``1..H`` those passes missed out of ``n = k * H`` chances, a packet beyond ``H`` was
missed by all ``k`` passes with probability ``p ** k`` at loss rate ``p``.  ``p`` is
not taken as ``d / n`` but integrated over what the passes say of it (a uniform prior,
so ``p ~ Beta(d + 1, n - d + 1)``)::

    P(unseen) = E[p ** k] = prod((d + 1 + j) / (n + 2 + j) for j in range(k))

which exceeds ``(d / n) ** k`` and so errs towards more passes, the more so the
fewer packets have been seen (a 14-packet book at 25 % loss needs about a dozen
passes for 1e-6; a large feed, about ``log(1e-6) / log(p)``).

A single corrupted sequence must not decide the end.  ``H`` is the second highest of
the clean passes' highest sequences: what at least two passes reached.  A packet held
above it was shown by one pass only, while every other pass ended lower; were it real,
each of those passes would have had to drop it and everything after it.  It is weighed
like the end itself: once the chance that a real packet was missed by the other
``k - 1`` passes is below ``confidence``, it is judged corrupted and left out.  Until
then the output's prefix never passes ``H``.

Resends name a sequence in one byte and the reference exchange reads it as signed and
crashes on a sequence it does not have, so only ``1..min(127, T)`` are ever resent,
``T`` being the highest sequence held that is not in doubt (``Session.doubts``: it came
out of order, or in copies that differ) and, if it is the highest held, that two
passes ended on.  Passes are made one at a time: the reference shares one request
buffer among all its connections, so concurrent requests could corrupt each other.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import numpy.typing as npt

from ..engine import PacketStore
from ..errors import FetchError, PastTheEnd
from ..packets import Packets
from ..protocol import BASE_RESEND_MAX, resend_request, stream_all_request
from .outcome import Outcome
from .session import Link, Session

__all__ = ["chance_unseen", "copies", "recover_base"]

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


def _second_highest(values: list[int]) -> int:
    """Return what at least two of ``values`` reach (the only one, if there is one)."""
    if not values:
        return 0
    ranked = sorted(values)
    return ranked[-2] if len(ranked) > 1 else ranked[-1]


class _Passes:
    """The clean passes so far: what each brought and how high it reached."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.highs: list[int] = []
        #: The highest sequence of every pass that brought packets, clean or cut short.
        self.reached: list[int] = []
        self.current: Link | None = None

    def end(self) -> int:
        """Return the inferred end: what two clean passes reached (see the module doc)."""
        return _second_highest(self.highs)

    def known(self, store: PacketStore) -> tuple[npt.NDArray[np.int64], int, bool]:
        """Return the gaps the passes have shown (the store's runs), below what, and a doubt.

        Below what two passes reached; after one pass, below its highest sequence, the
        run right under it in doubt (True): a corrupted sequence in a pass's last packet
        (which nothing after it shows out of order) would make that run a gap of the
        feed.  It is counted all the same (later passes fill it, and no later look at
        the store would show it), and taken back if the feed ends below it
        (:meth:`~packetcore.client.journal.Journal.found`).
        """
        reach = _second_highest(self.reached)
        if not reach:
            return np.empty((0, 2), dtype=np.int64), 0, False
        return store.missing_ranges(reach), reach, len(self.reached) < 2

    def ceiling(self) -> int | None:
        """Return how far the output's prefix may go: what two passes have reached.

        So every packet written had a second pass's copy compared with it (a server
        whose copies differ is caught before it is written), and the end of a single
        pass, which may be a corrupted sequence, is never written on its word alone.
        """
        highs = list(self.highs)
        if self.current is not None:
            highs.append(self.current.last_sequence)
        return _second_highest(highs) if len(highs) > 1 else 0


async def recover_base(session: Session, link: Link | None, outcome: Outcome) -> bool:
    """Make passes and resends until the feed is complete and its end is established.

    ``link`` is a fresh connection to stream the first pass on, or ``None``.  Return
    True if the server answered a hello late after all: it is an extended server.
    Meanwhile the output's prefix stays within what two passes have reached.
    """
    passes = _Passes()
    with session.limited(passes.ceiling):
        return await _recover(session, link, outcome, passes)


async def _recover(session: Session, link: Link | None, outcome: Outcome, passes: _Passes) -> bool:
    options = session.options
    store = session.store
    journal = session.journal
    retry = options.retry()
    resends_answered = True
    while True:
        if link is None:
            try:
                link = await session.open_link()
            except FetchError as exc:
                if session.received == 0:
                    raise
                outcome.stop(str(exc))
                return False
            if options.protocol == "auto" and session.received == 0:
                # Nothing has arrived yet, so the silence that led here may have been a
                # dead connection rather than a base server: ask for the extension again,
                # back to back with the stream.  A base server ignores the hello; an
                # extended one answers it first (answers come in request order).
                link.hello(late=True)
        link.ask(stream_all_request(), repeats=len if len(store) else None)
        journal.asking()
        passes.current = link
        state = await link.wait_closed(options.timeout)
        passes.current = None
        link.close()
        outcome.count_pass()
        clean = state == "done" and link.clean_end
        journal.passed(outcome.passes, link.packets, link.new, link.highest, clean)
        if link.packets:
            session.pass_ends[link.last_sequence] += 1
            passes.reached.append(link.highest)
        if session.info is not None:
            return True
        if (
            state != "idle"
            and not link.packets
            and not session.received
            and not (link.decoder.pending)
        ):
            # Closed (or reset) with nothing sent, and nothing ever came: no server of
            # the feed answers so (a proxy whose upstream is gone does, with a reset if
            # the hello was still unread); a failure, not a pass.
            log.debug("pass %d: the server closed the connection without answering", outcome.passes)
            if not retry.fail():
                raise FetchError(
                    f"{options.host}:{options.port}: the server closed the connection "
                    f"without answering, {retry.failures} times in a row"
                )
            await retry.pause()
        elif clean:
            passes.counts.append(link.packets)
            passes.highs.append(link.highest)
            retry.succeeded()
        else:
            # A pass cut short says nothing about the loss rate; its packets still count.
            why = "went silent" if state == "idle" else f"ended early ({link.why()})"
            log.info("pass %d: the server %s", outcome.passes, why)
            if not retry.fail():
                outcome.stop(f"the server {why} on {retry.failures} passes in a row")
                if session.received == 0:
                    # Nothing at all came: a failure to fetch (as documented by fetch),
                    # not an incomplete feed with no gap to name.
                    raise FetchError(f"{options.host}:{options.port}: {outcome.reason}")
                return False
            journal.reconnect("stream", "silent" if state == "idle" else "lost")
            await retry.pause()
        link = None
        # Only up to a sequence held and trusted, never up to a doubted one (see above).
        bound = min(BASE_RESEND_MAX, trusted_highest(session)) if resends_answered else 0
        missing, known, doubtful = passes.known(store)
        journal.found(missing, known, "pass", resend_to=bound, doubtful=doubtful)
        if resends_answered:
            resendable = _missing(session, bound)
            if resendable:
                outcome.count_round()
                runs = 1 + sum(b - a > 1 for a, b in itertools.pairwise(resendable))
                journal.round(outcome.resend_rounds, "resend", runs, len(resendable), bound)
                resends_answered = await _resend(session, resendable)
        if _settled(session, passes, outcome):
            return False
        session.advance()
        if outcome.passes >= options.max_passes:
            _give_up(session, passes, outcome)
            return False


def _settled(session: Session, passes: _Passes, outcome: Outcome) -> bool:
    """Decide, after a pass, whether the feed is complete and its end established."""
    options = session.options
    store = session.store
    end = passes.end()
    stop = options.stop
    if stop is not None and end >= stop:
        # The slice ends before the feed does: its end is known, no inference needed.
        outcome.known_end()
        return store.complete
    highest = store.highest or 0
    suspects = highest > end  # held above what two passes reached: shown by one only
    clean = len(passes.counts)
    judged = clean - 1 if suspects else clean
    chances = judged * end
    drops = sum(end - min(count, end) for count in passes.counts[-judged:]) if judged else 0
    chance = chance_unseen(drops, chances, judged)
    outcome.estimate(chance)
    gaps = store.missing_ranges(end + 1)[:, 1].sum() if end else 0
    log.debug(
        "pass %d: end %d (highest %d), %d missing, loss %d/%d, P(later packet unseen) %.3g",
        outcome.passes, end, highest, gaps, drops, chances, chance,
    )  # fmt: skip
    if not (end and gaps == 0 and chance < options.confidence):
        return False
    if end < store.first:
        # The feed ends before the slice starts (what the extension's hello says at once).
        raise PastTheEnd(
            f"the slice {store.first}..{stop or 'end'} starts past the feed's last sequence, {end}",
            end,
        )
    if suspects:
        before = len(store)
        store.bound(store.first, end)
        outcome.left_out(before - len(store))
        log.warning(
            "%d packet(s) beyond the end %d were shown by one pass only, while %d "
            "others ended lower: judged corrupted, left out",
            outcome.corrupt, end, judged,
        )  # fmt: skip
    else:
        store.bound(store.first, end)
    return True


def _give_up(session: Session, passes: _Passes, outcome: Outcome) -> None:
    store = session.store
    end = passes.end()
    gaps = int(store.missing_ranges(end + 1)[:, 1].sum()) if end else 0
    if gaps:
        outcome.stop(f"{gaps} packet(s) still missing after {outcome.passes} passes")
    elif not end:
        outcome.stop(f"no end of the feed established in {outcome.passes} passes")
    else:
        outcome.stop(
            f"the end of the feed is not established: after {outcome.passes} passes "
            f"the chance that a packet after {end} exists unseen is "
            f"{outcome.chance:.2g}, above the bound {session.options.confidence:g} "
            f"(raise --max-passes)"
        )


def trusted_highest(session: Session) -> int:
    """Return the highest sequence held and not in doubt, or 0 if there is none.

    Walks the runs of held sequences from the top down, skipping doubted ones: the cost
    follows the number of gaps and doubts, not the length of the feed.  The highest
    sequence held counts only once two passes have ended on it: a corrupted sequence
    in the last packet of a pass has nothing after it to show it out of order.
    """
    store = session.store
    top = store.highest or 0
    low = store.cursor
    runs: list[tuple[int, int]] = []  # held sequences (low, high), between the gaps
    for start, count in store.missing_ranges().tolist():
        if start > low:
            runs.append((low, start - 1))
        low = start + count
    if low <= top:
        runs.append((low, top))
    for low, high in reversed(runs):
        for sequence in range(high, low - 1, -1):
            if sequence == top and session.pass_ends[sequence] < 2:
                continue
            if sequence not in session.doubts:
                return sequence
    # Everything already passed to the output is held and settled.
    return store.cursor - 1 if store.cursor > store.first else 0


async def copies(session: Session, wanted: list[int]) -> list[Packets]:
    """Return fresh copies of the packets ``wanted`` from a base server, for a vote.

    A doubted sequence may be a corrupted one the feed lacks, and the reference exchange
    crashes on a resend of such: only those at or below the highest sequence held and
    trusted (so they exist: a feed has every sequence from its first to its last) and
    below 128 are resent.  A stream-all pass brings a copy of each of the others that
    exists, unless its loss simulation drops it.
    """
    bound = min(BASE_RESEND_MAX, trusted_highest(session))
    named = [s for s in wanted if s <= bound]
    batches: list[Packets] = []
    if named:
        request = b"".join(resend_request(sequence) for sequence in named)
        batches += await session.collect(request, len(named))
    if len(named) < len(wanted):
        batches += await session.collect(stream_all_request(), None)
    return batches


def _missing(session: Session, up_to: int) -> list[int]:
    if up_to < 1:
        return []
    sequences: list[int] = []
    for start, count in session.store.missing_ranges(up_to + 1).tolist():
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
    store = session.store
    link.ask(b"".join(resend_request(sequence) for sequence in sequences))
    # Resends are answered in order and each with one packet, unless the server drops it.
    state = await link.wait(
        lambda: link.packets >= len(sequences) or all(s in store for s in sequences),
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
