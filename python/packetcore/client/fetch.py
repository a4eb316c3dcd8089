"""Fetch a whole feed from any server of the protocol: ``fetch`` and ``fetch_async``.

A fetch first asks for the extension (a hello, see the protocol in ``docs/``).  An
extended server answers with the feed's first and last sequence: see
:mod:`packetcore.client.extended`.  A server that stays silent is a base server: see
:mod:`packetcore.client.base_mode`.  Either way the packets go into one store, and the
settled prefix leaves it for the output as it grows (:class:`~packetcore.client.session.Session`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FetchError
from ..packets import Packets
from . import base_mode, extended
from .journal import Events, Journal
from .outcome import Mode, Outcome
from .ranges import format_ranges, inclusive, merge
from .session import FetchOptions, Link, Progress, Session
from .settle import settle

__all__ = ["FetchError", "FetchOptions", "FetchResult", "fetch", "fetch_async", "format_ranges"]

log = logging.getLogger("packetcore.fetch")

#: How long past the deadline the output may take nothing before the fetch gives up
#: saving (stdout into a reader that stopped reading).
DEADLINE_GRACE = 5.0


@dataclass(frozen=True)
class FetchResult:
    """What a fetch got, and how it got it.

    ``packets`` holds the packets in sequence order (empty when they went to an output
    as they arrived: ``count`` says how many did).  ``complete`` says whether every
    sequence from ``first`` to ``last`` is there; if not, ``missing`` lists the gaps as
    inclusive ``(first, last)`` pairs and ``reason`` says why the fetch stopped.
    ``received`` counts every valid packet decoded, duplicates included; ``recovered``
    the packets that resends brought.  ``seconds`` is the wall time of the fetch.
    """

    packets: Packets
    count: int
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
    corrupt: int = 0
    reason: str = ""
    conflicting: Packets = field(default_factory=Packets.empty)
    invalid_offsets: tuple[tuple[int, int], ...] = ()
    #: The highest sequence a hello named; above ``announced``, the feed grew while
    #: the fetch ran (a live server): the output is what was published when it started.
    published: int | None = None
    #: The feed's last sequence as the first hello named it (extended protocol).
    announced: int | None = None
    #: Packets of the output that rest on one copy only: no second copy confirmed
    #: them (see :mod:`packetcore.client.judge` for what a single copy is judged by).
    single_copy: int = 0
    #: Gaps found: runs of sequences the passes left missing, each counted once however
    #: many rounds asked for it (see :mod:`packetcore.client.journal`).
    gaps: int = 0

    @property
    def snapshot(self) -> bool:
        """Return whether the feed grew while this fetch ran (a live feed).

        A slice that ends below the feed's end is no snapshot: the feed did not grow.
        """
        return (
            self.published is not None
            and self.announced is not None
            and self.published > self.announced
        )

    @property
    def untrusted(self) -> tuple[int, int, int]:
        """Return the (conflicting, invalid, corrupted) packets the server sent.

        What ``strict`` (``--strict``) refuses.  In extended mode the server announced
        the feed's extent: a packet outside it is a corrupted sequence, not a packet of
        another slice.
        """
        strange = self.out_of_range if self.mode == "extended" else 0
        return self.conflicts, self.invalid, self.corrupt + strange

    @property
    def missing_count(self) -> int:
        """Return how many sequences are missing."""
        return sum(last - first + 1 for first, last in self.missing)

    def summary(self, output: str | None = None, seconds: float | None = None) -> str:
        """Return the one-line account of the fetch (``seconds``: the wall time to quote)."""
        passes = f"{self.passes} pass" + ("" if self.passes == 1 else "es")
        rounds = f"{self.resend_rounds} repair round" + ("" if self.resend_rounds == 1 else "s")
        parts = [
            f"{self.count} packets ({self.recovered} recovered by resend, "
            f"{self.single_copy} on one copy only)",
            f"{self.duplicates} duplicates",
            f"{self.conflicts} conflicts",
        ]
        if self.invalid:
            parts.append(f"{self.invalid} invalid")
        if self.corrupt:
            parts.append(f"{self.corrupt} corrupted left out")
        parts += [f"{self.gaps} gap" + ("" if self.gaps == 1 else "s"), passes, rounds,
                  f"{self.seconds if seconds is None else seconds:.2f} s"]  # fmt: skip
        line = ", ".join(parts)
        if output is not None:
            line += f" -> {output}"
        line += f" [{self.mode} protocol"
        if self.last_inferred and self.last is not None:
            line += f"; last sequence {self.last} inferred"
            if self.chance_unseen is not None:
                line += f", P(later packet unseen) {self.chance_unseen:.2g}"
        if self.snapshot:
            line += f"; a live feed, published to {self.published} meanwhile: --follow follows it"
        return line + "]"


async def fetch_async(
    host: str = FetchOptions.host,
    port: int = FetchOptions.port,
    *,
    progress: Progress | None = None,
    strict: bool = False,
    events: Events | None = None,
    **options: Any,
) -> FetchResult:
    """Fetch the feed from ``host:port`` and recover every missing packet.

    ``options`` are the fields of :class:`FetchOptions` (``protocol``, ``timeout``,
    ``retries``, ``backoff``, ``confidence``, ``max_passes``, ``deadline``, ``start``,
    ``stop``, ...), which holds their defaults.  ``progress`` is called with
    ``(packets in order so far, packets expected or None)``.  ``strict``, as the
    command's ``--strict``: raise :class:`FetchError` if the server sent conflicting,
    invalid or corrupted packets (:attr:`FetchResult.untrusted`).  ``events`` is called
    with each gap, repair round, pass, reconnect and the end as they happen
    (:data:`~packetcore.client.journal.EVENTS`), on the event loop: it must not block;
    one that raises ends the fetch with a :class:`FetchError` that says so.

    Raise :class:`FetchError` if no packet could be fetched at all (no server, or
    ``protocol="extended"`` against one without the extension); any other shortfall
    is reported by an incomplete :class:`FetchResult`.
    """
    settings = FetchOptions(host=host, port=port, **options)
    batches: list[Packets] = []
    result = await run_fetch(settings, batches.append, progress, events=events)
    if strict and any(result.untrusted):
        conflicting, invalid, corrupted = result.untrusted
        raise FetchError(
            f"strict: the server sent {conflicting} conflicting, {invalid} invalid and "
            f"{corrupted} corrupted packet(s)"
        )
    return dataclasses.replace(result, packets=Packets.concat(batches))


def fetch(
    host: str = FetchOptions.host,
    port: int = FetchOptions.port,
    *,
    progress: Progress | None = None,
    strict: bool = False,
    events: Events | None = None,
    **options: Any,
) -> FetchResult:
    """Fetch the feed from ``host:port`` (see :func:`fetch_async`), in a new event loop.

    Raise :class:`RuntimeError` if called inside a running event loop: there, await
    :func:`fetch_async` instead.
    """
    _no_running_loop("packetcore.fetch()", "await packetcore.fetch_async(...)")
    return asyncio.run(
        fetch_async(host, port, progress=progress, strict=strict, events=events, **options)
    )


def _no_running_loop(call: str, instead: str) -> None:
    """Raise a clear RuntimeError if an event loop runs in this thread (asyncio.run's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{call} starts an event loop of its own and cannot run inside a running one: "
        f"{instead} instead"
    )


async def run_fetch(
    options: FetchOptions,
    sink: Callable[[Packets], None],
    progress: Progress | None = None,
    *,
    stopped: asyncio.Future[str] | None = None,
    flowing: Callable[[], bool] | None = None,
    events: Events | None = None,
) -> FetchResult:
    """Fetch with ``options``, passing the packets to ``sink`` in sequence order.

    ``sink`` gets the settled prefix as it grows, then, if the fetch ends incomplete,
    every other packet held (gaps and all).  If ``stopped`` completes (with a reason)
    the fetch stops there and ends as incomplete.  While ``flowing()`` is false the
    prefix stays in the store (the output is behind).  ``events`` is called with each
    event of the fetch as it happens (:data:`~packetcore.client.journal.EVENTS`), on the
    event loop; one that raises ends the fetch with a :class:`FetchError` saying so.
    Cancelled, the fetch tells its end (``reason`` ``cancelled``) before it stops.
    """
    started = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - started

    session = Session(options, sink, progress, flowing=flowing)
    outcome = Outcome("base" if options.protocol == "base" else "extended")
    waits: set[asyncio.Future[Any]] = set()
    halted: asyncio.Future[str] | None = None
    if events is not None:
        halted = asyncio.get_running_loop().create_future()
        waits.add(halted)

        def halt(reason: str) -> None:
            if halted is not None and not halted.done():
                halted.set_result(reason)

        session.journal = Journal(session.store, events, on_error=halt)
        session.on_new = session.journal.check
    journal = session.journal
    recovery = asyncio.ensure_future(_recover(session, outcome))
    waits.add(recovery)
    if stopped is not None:
        waits.add(stopped)
    try:
        done, _ = await asyncio.wait(
            waits, timeout=options.deadline, return_when=asyncio.FIRST_COMPLETED
        )
        if recovery in done:
            recovery.result()  # FetchError and the like propagate
            await _settle(session, outcome)
        else:
            recovery.cancel()
            await asyncio.wait({recovery})
            if halted is not None and halted in done:
                raise FetchError(halted.result())
            if stopped is not None and stopped in done:
                outcome.stop(stopped.result())
            else:
                outcome.stop(f"the deadline of {options.deadline:g} s passed")
            log.debug("stopping: %s", outcome.reason)
            if session.received == 0 and stopped not in done:
                raise FetchError(
                    f"{options.host}:{options.port}: {outcome.reason} before any packet came"
                )
    except (FetchError, asyncio.CancelledError) as exc:
        if not recovery.done():  # its pass is told before the end
            recovery.cancel()
            await asyncio.wait({recovery})
        _failed(session, outcome, exc)
        raise
    finally:
        if not recovery.done():
            recovery.cancel()
        session.close_all()
    # With a deadline, saving what arrived may wait on the output, but not for ever.
    give_up_at = None
    if options.deadline is not None:
        give_up_at = time.monotonic() + max(options.deadline - elapsed(), 0.0) + DEADLINE_GRACE
    journal.close()  # before the end's flush passes the gaps left open
    try:
        result = await _finish(session, outcome, started, give_up_at)
    except (FetchError, asyncio.CancelledError) as exc:
        _failed(session, outcome, exc)
        raise
    journal.end(reason=result.reason or "complete", complete=result.complete,
                mode=result.mode, packets=result.count, last=result.last,
                rounds=result.resend_rounds, passes=result.passes)  # fmt: skip
    if journal.error is not None:
        raise FetchError(journal.error)
    return result


def _reset(error: BaseException) -> bool:
    return isinstance(error, ConnectionResetError)


def _failed(session: Session, outcome: Outcome, error: BaseException) -> None:
    """Tell the end of a fetch that failed, or was cancelled (if events are told)."""
    reason = "cancelled" if isinstance(error, asyncio.CancelledError) else str(error)
    journal = session.journal
    if journal.telling:
        journal.close()
        journal.end(reason=reason, complete=False, mode=outcome.mode,
                    packets=session.written, last=None, rounds=outcome.resend_rounds,
                    passes=outcome.passes)  # fmt: skip


async def _recover(session: Session, outcome: Outcome) -> None:
    options = session.options
    link: Link | None = None
    if options.protocol != "base":
        link = await _probe(session)
    if session.info is None:
        outcome.switch("base")
        if not await base_mode.recover_base(session, link, outcome):
            return
        # The server answered the hello late: it is an extended server after all.
        log.info("the server answered the hello late: switching to the extension")
        link = None
    outcome.switch("extended")
    await extended.recover_extended(session, link, outcome)


async def _probe(session: Session) -> Link | None:
    """Send the hello; return the connection to stream on (``None``: open a new one)."""
    options = session.options
    link = await session.open_link()
    link.hello()
    wait = options.hello_timeout if options.protocol == "auto" else options.timeout
    state = await link.wait_info(1, wait)
    if link.broken and isinstance(link.error, FetchError):
        link.close()
        raise link.error  # the feed is fine, but not what was asked for (a slice outside)
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
        if link.error is not None and not (state == "lost" and _reset(link.error)):
            raise FetchError(f"{options.host}:{options.port}: {link.why()}")
        if state == "lost":  # closed, or reset (the hello still unread), answering nothing
            raise FetchError(
                f"{options.host}:{options.port}: the server closed the connection without "
                "answering the extension hello"
            )
        raise FetchError(
            f"{options.host}:{options.port} did not answer the extension hello within "
            f"{options.timeout:g} s: a base-protocol server? (try --protocol auto or base)"
        )
    if state == "lost":
        log.debug("the server hung up on the hello: base protocol")
        link.close()
        return None
    log.debug("no answer to the hello within %g s: base protocol", wait)
    # Carry on on this connection (a base server ignored the hello); its first bytes
    # may yet be a late answer.
    link.framer.give_up()
    return link


async def _settle(session: Session, outcome: Outcome) -> None:
    """Ask again for the packets in doubt; what no two copies confirm is left out."""

    # Each mode asks for copies its own way (a base server crashes on some resends).
    copier = base_mode.copies if outcome.mode == "base" else extended.copies

    async def copies(wanted: list[int]) -> list[Packets]:
        return await copier(session, wanted)

    unsettled = await settle(session, copies)
    if unsettled:
        outcome.stop(
            f"{len(unsettled)} packet(s) arrived in copies that differ, and asking again "
            f"did not confirm one",
            unless_stopped=True,
        )


async def _finish(
    session: Session, outcome: Outcome, started: float, give_up_at: float | None = None
) -> FetchResult:
    """Pass every packet still held to the output, and say what the fetch got."""
    store = session.store
    complete = store.complete and not outcome.reason
    end = store.last if outcome.mode == "extended" or store.last_known else store.highest
    missing_ranges = store.missing_ranges()
    if not complete:
        # Everything held goes out, gaps and all; the ceiling no longer holds it back.
        await session.flush((store.highest or store.first - 1) + 1, give_up_at)
        outcome.stop("stopped short", unless_stopped=True)
    else:
        await session.flush((end or store.first - 1) + 1, give_up_at)
    if session.received == 0 and not complete:
        raise FetchError(
            f"{session.options.host}:{session.options.port}: no packet arrived ({outcome.reason})"
        )
    missing = inclusive(merge(missing_ranges)) if not complete else ()
    return FetchResult(
        packets=Packets.empty(),
        count=session.written,
        complete=complete,
        mode=outcome.mode,
        first=store.first,
        last=end,
        last_inferred=outcome.mode == "base" and outcome.end_inferred,
        received=session.received,
        recovered=session.recovered,
        duplicates=session.duplicates,
        conflicts=store.conflicts,
        invalid=len(session.invalid_offsets),
        out_of_range=store.out_of_range,
        passes=outcome.passes,
        resend_rounds=outcome.resend_rounds,
        seconds=time.perf_counter() - started,
        missing=missing,
        chance_unseen=outcome.chance if outcome.mode == "base" else None,
        corrupt=outcome.corrupt,
        reason="" if complete else outcome.reason,
        conflicting=store.conflicting(),
        invalid_offsets=tuple(session.invalid_offsets),
        published=session.published,
        announced=session.info.last if session.info is not None else None,
        single_copy=max(session.written - session.copies.confirmed(end), 0),
        gaps=session.journal.gaps,
    )
