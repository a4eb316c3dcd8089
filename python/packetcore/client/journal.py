"""What a fetch found missing and did about it: gaps, repair rounds, passes, as events.

A **gap** is a run of sequences a stream-all pass left missing, seen once everything
around it is known: below the stream's position while it runs (a stream comes in
sequence order), or below what the passes reached in base mode.  It is counted once,
however many rounds ask for it again.  The count costs one vectorized look at the
store per round or pass.

Given an ``events`` callable, the journal also tells it each gap (when it was seen,
first asked for, and repaired: when it and everything before it were held, as a
follow's gaps are), each round of requests, each pass, each connection replaced, and
the end, as they happen (:data:`EVENTS`).  Only then is any Python object made per gap,
and the store is looked at per batch of packets (its contiguous prefix), never per
packet.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engine import PacketStore

__all__ = ["EVENTS", "Events", "Journal"]

#: Called with each event: a dict with ``event`` naming it, times in seconds since the
#: fetch (or follow) started, rounded to the microsecond.
Events = Callable[[dict[str, Any]], None]

#: What a fetch tells an ``events`` callback:
#:
#: * ``gap``: ``first``, ``last`` (the sequences missing), ``seen``, ``asked`` (when a
#:   request first named it; None if none did), ``repaired`` (when it and all before it
#:   were held; None if the fetch ended first), ``how`` it is asked for (``range``:
#:   range requests; ``resend``: a base server's single resends; ``pass``: further
#:   stream-all passes), in the order they were repaired;
#: * ``round``: ``round`` (its number), ``how`` (``range`` or ``resend``), ``ranges``
#:   and ``sequences`` asked for, ``at``;
#: * ``pass``: ``pass`` (its number), ``packets`` it brought, ``new`` among them,
#:   ``highest`` sequence, ``clean`` (read to the server's end of stream; false for a
#:   pass cut short, by the server or because the ranges held everything first), ``at``;
#: * ``reconnect``: ``connection`` (``repair`` or ``stream``), ``why``, ``at``;
#: * ``end``: ``at``, ``reason``, ``complete``, ``mode``, ``packets``, ``last``,
#:   ``gaps``, ``rounds``, ``passes``, ``reconnects``.
EVENTS = ("gap", "round", "pass", "reconnect", "end")


class _Found:
    """The gaps one look found, ascending: ``first[i]..last[i]``, asked at ``asked[i]``.

    Times are seconds since the start, rounded (once per look, not per gap); ``asked``
    is NaN until a request names the gap: those asked are a prefix, as are those
    repaired (``done`` of them, told already).  Those up to ``resent`` are resent,
    the others asked for as ``how`` says.
    """

    __slots__ = ("asked", "done", "first", "how", "last", "resent", "seen", "unasked")

    def __init__(self, first: npt.NDArray[np.int64], last: npt.NDArray[np.int64],
                 seen: float, how: str, resent: int) -> None:  # fmt: skip
        self.first = first
        self.last = last
        self.seen = seen
        self.how = how
        self.resent = resent
        self.asked = np.full(len(first), np.nan)
        self.unasked = 0  # the first not yet asked for
        self.done = 0  # the first not yet repaired

    def tell(self, stop: int, repaired: float | None, events: Events) -> None:
        """Tell the gaps from ``done`` to ``stop`` (exclusive), repaired at ``repaired``."""
        seen, how, resent = self.seen, self.how, self.resent
        firsts = self.first[self.done : stop].tolist()
        lasts = self.last[self.done : stop].tolist()
        asked = self.asked[self.done : stop].tolist()
        at = self.done
        self.done = stop
        for i, (first, last, when) in enumerate(zip(firsts, lasts, asked, strict=True), at):
            events({
                "event": "gap", "first": first, "last": last, "seen": seen,
                "asked": None if when != when else when,  # NaN: not asked
                "how": "resend" if i < resent else how, "repaired": repaired,
            })  # fmt: skip


class Journal:
    """The gaps of one fetch, counted; with ``events``, each told as it happens.

    ``on_error`` is called (once) if ``events`` raises: the events stop there, and
    :attr:`error` says why.
    """

    def __init__(
        self,
        store: PacketStore,
        events: Events | None = None,
        *,
        origin: float | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._origin = time.monotonic() if origin is None else origin
        self._on_error = on_error
        #: Gaps found so far, and connections replaced.
        self.gaps = 0
        self.reconnects = 0
        #: Why the events stopped (the callback raised), or None.
        self.error: str | None = None
        # Below it, every sequence missing is in a gap found already (held stays held).
        self._covered = 0
        # The first sequence of a gap found that the feed's end may yet put beyond it
        # (``found(doubtful=True)``), or None.
        self._doubtful: int | None = None
        # The gaps not yet repaired (the first looks' first), and those among them
        # not yet asked for.
        self._open: deque[_Found] = deque()
        self._unasked: deque[_Found] = deque()

    @property
    def telling(self) -> bool:
        """Whether events are being told (a callback given, and it has not raised)."""
        return self._events is not None

    def at(self, moment: float | None = None) -> float:
        """Return ``moment`` (monotonic; default now) in seconds since the start."""
        return round((time.monotonic() if moment is None else moment) - self._origin, 6)

    # what the strategies report

    def found(
        self,
        missing: npt.NDArray[np.int64],
        stop: int,
        how: str,
        *,
        resend_to: int = 0,
        doubtful: bool = False,
    ) -> None:
        """Count the gaps among ``missing`` (the store's runs below ``stop``) not yet found.

        Everything below ``stop`` is known from now on.  ``how``: how they are asked for;
        ``resend_to``: those ending at or below it are resent instead (a base server).
        ``doubtful``: the last gap, if it ends at ``stop - 1``, ends under a sequence that
        may be corrupted (a base server's pass's highest, which only that pass showed):
        counted and told as any other, but taken back, or cut, at :meth:`close` if the
        feed's end, known by then, is below it.
        """
        covered = self._covered
        if stop <= covered:
            return
        self._covered = stop
        if not len(missing):
            return
        starts = missing[:, 0]
        stops = np.minimum(starts + missing[:, 1], stop)
        fresh = stops > np.maximum(starts, covered)
        if not fresh.all():
            starts, stops = starts[fresh], stops[fresh]
        self.gaps += len(starts)
        if doubtful and len(starts) and stops[-1] == stop:
            self._doubtful = max(int(starts[-1]), covered)
        if self._events is None or not len(starts):
            return
        lasts = stops - 1
        found = _Found(np.maximum(starts, covered), lasts, self.at(), how,
                       int(np.searchsorted(lasts, resend_to, side="right")))  # fmt: skip
        self._open.append(found)
        self._unasked.append(found)

    def asking(self, up_to: int | None = None) -> None:
        """A request names the gaps found (``up_to``: those starting at or below it)."""
        unasked = self._unasked
        if not unasked:
            return
        now = self.at()
        while unasked:
            found = unasked[0]
            stop = len(found.first)
            if up_to is not None:
                stop = int(np.searchsorted(found.first, up_to, side="right"))
            found.asked[found.unasked : stop] = now
            found.unasked = max(found.unasked, stop)
            if found.unasked < len(found.first):
                return
            unasked.popleft()

    def round(self, number: int, how: str, ranges: int, sequences: int,
              up_to: int | None = None) -> None:  # fmt: skip
        """Round ``number`` asks for ``sequences`` in ``ranges`` (up to ``up_to``)."""
        self.asking(up_to)
        if self._events is not None:
            self._tell({"event": "round", "round": number, "how": how, "ranges": ranges,
                        "sequences": sequences, "at": self.at()})  # fmt: skip

    def passed(self, number: int, packets: int, new: int, highest: int, clean: bool) -> None:
        """Pass ``number`` ended, with what it brought."""
        if self._events is not None:
            self._tell({"event": "pass", "pass": number, "packets": packets, "new": new,
                        "highest": highest, "clean": clean, "at": self.at()})  # fmt: skip

    def reconnect(self, connection: str, why: str) -> None:
        """``connection`` went (``why``) and is replaced."""
        self.reconnects += 1
        if self._events is not None:
            self._tell({"event": "reconnect", "connection": connection, "why": why,
                        "at": self.at()})  # fmt: skip

    def check(self) -> None:
        """Tell the gaps the store's contiguous prefix now covers (packets arrived)."""
        opened = self._open
        if not opened or self._events is None:
            return
        filled = self._store.contiguous()
        found = opened[0]
        if found.last[found.done] >= filled:
            return
        repaired = self.at()
        while opened and self._events is not None:
            found = opened[0]
            stop = int(np.searchsorted(found.last, filled, side="left"))  # last < filled
            if stop > found.done:
                self._tell_found(found, stop, repaired)
            if found.done < len(found.first):
                return
            opened.popleft()

    def close(self) -> None:
        """The recovery is over: tell the gaps repaired, then those left open.

        A doubtful gap (see :meth:`found`) beyond the feed's end, now known, was none:
        it is taken back; one that runs past the end is cut there.
        """
        self._beyond_the_end()
        self.check()
        while self._open and self._events is not None:
            found = self._open.popleft()
            self._tell_found(found, len(found.first), None)
        self._open.clear()
        self._unasked.clear()

    def end(self, **fields: Any) -> None:
        """Tell the end, the last event told: ``fields`` as :data:`EVENTS` lists them."""
        if self._events is not None:
            self._tell({"event": "end", "at": self.at(), **fields, "gaps": self.gaps,
                        "reconnects": self.reconnects})  # fmt: skip
        self._events = None

    def _beyond_the_end(self) -> None:
        first, self._doubtful = self._doubtful, None
        store = self._store
        if first is None or not store.last_known or store.last is None:
            return
        end = store.last
        told = None  # the gap's entry among those found, if events are told
        for found in self._open:
            if found.first[-1] == first and found.done < len(found.first):
                told = found
        if told is None and self._events is not None:
            return  # told already (repaired): it was a gap of the feed
        if first > end:
            self.gaps -= 1
            if told is not None:
                told.first, told.last = told.first[:-1], told.last[:-1]
                told.asked = told.asked[:-1]
                told.resent = min(told.resent, len(told.first))
                told.unasked = min(told.unasked, len(told.first))
                if told.done == len(told.first):  # every other gap of its look told
                    self._open.remove(told)
                if told in self._unasked and told.unasked == len(told.first):
                    self._unasked.remove(told)
        elif told is not None and told.last[-1] > end:
            told.last[-1] = end

    # telling

    def _tell_found(self, found: _Found, stop: int, repaired: float | None) -> None:
        events = self._events
        if events is None:
            return
        try:
            found.tell(stop, repaired, events)
        except Exception as exc:
            self._raised(exc)

    def _tell(self, event: dict[str, Any]) -> None:
        events = self._events
        if events is None:
            return
        try:
            events(event)
        except Exception as exc:
            self._raised(exc)

    def _raised(self, exc: Exception) -> None:
        # Raised here, it would be taken for a fault of the connection whose packets
        # were being handled: the fetch ends instead, and says why.
        self._events = None
        self._open.clear()
        self._unasked.clear()
        self.error = f"the events callback raised {exc!r}"
        if self._on_error is not None:
            self._on_error(self.error)
