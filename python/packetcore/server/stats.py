"""What a server counts: one :class:`ServerStats` per server, summed over workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..faults.model import FaultCounts

__all__ = ["ServerStats"]


@dataclass
class ServerStats:
    """What a server has done since it started."""

    connections: int = 0  #: connections accepted and served
    refused: int = 0  #: connections closed at once for lack of a slot (max_connections)
    active: int = 0  #: connections open now
    streams: int = 0  #: stream-all requests answered
    packets_sent: int = 0  #: packets written by stream-all and subscriptions
    packets_resent: int = 0  #: packets written by resend and resend-range requests
    packets_dropped: int = 0  #: packets the loss simulation dropped
    #: unknown callTypes (ignored), resends of sequences the feed lacks, subscriptions from
    #: beyond 2**31-1 (closed)
    bad_requests: int = 0
    timeouts: int = 0  #: connections closed for idling past idle_timeout
    bytes_written: int = 0  #: bytes handed to the clients' sockets (packets and info frames)
    subscriptions: int = 0  #: subscribe requests (callType 5) answered
    slow_disconnects: int = 0  #: subscribers disconnected for falling too far behind
    faults: dict[str, int] = field(default_factory=FaultCounts)  #: injected faults by kind

    def summary(self, faults: bool = False) -> str:
        """Return the counters as one line; the injected faults by kind too, if any were
        injected or ``faults`` (the server has faults to inject)."""
        line = (
            f"{self.connections} connections ({self.refused} refused), {self.streams} streams, "
            f"{self.packets_sent} packets sent, {self.packets_resent} resent, "
            f"{self.packets_dropped} dropped, {self.bad_requests} bad requests"
        )
        if self.subscriptions:
            line += f", {self.subscriptions} subscriptions ({self.slow_disconnects} too slow)"
        if faults or self.faults:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()) if v)
            line += f"; faults: {kinds or 'none injected'}"
        return line
