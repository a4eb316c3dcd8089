"""The server's loss simulation: which packets a stream or a resend drops, reproducibly.

With ``seed`` S, the stream-all request number N (counted from 0 over the server's
life, in the order the server starts them) draws its keep mask from its own stream of
S, and so do the resends of connection number C (counted from 0 in accept order) and
subscription number M (callType 5, counted from 0): the table of streams is
:mod:`packetcore.seeds`.  Without a seed, fresh entropy stands in for S.  Nothing here
touches a socket.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..engine import PACKET_SIZE, gather
from ..seeds import Kind, Streams

__all__ = ["LossModel"]


class LossModel:
    """Decide, from a seed, which packets of each answer are dropped."""

    def __init__(
        self,
        drop: float = 0.25,
        drop_resends: float = 0.0,
        keep_last: bool = False,
        seed: int | None = None,
    ) -> None:
        for name, value in (("drop", drop), ("drop_resends", drop_resends)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, not {value}")
        self.drop = float(drop)
        self.drop_resends = float(drop_resends)
        self.keep_last = keep_last
        self.seed = seed
        self.streams = Streams(seed)
        #: The seed, or the fresh entropy that stands in for it.
        self.entropy = self.streams.entropy

    def stream_rng(self, number: int) -> np.random.Generator | None:
        """Return the generator of stream-all number ``number``; None if nothing drops."""
        return self.streams.for_(Kind.STREAM_ALL, number) if self.drop > 0 else None

    def resend_rng(self, connection: int) -> np.random.Generator | None:
        """Return the generator of connection ``connection``'s resends; None if none drop."""
        return self.streams.for_(Kind.RESENDS, connection) if self.drop_resends > 0 else None

    def subscription_rng(self, number: int) -> np.random.Generator | None:
        """Return the generator of subscription ``number``; None if nothing drops."""
        return self.streams.for_(Kind.SUBSCRIPTIONS, number) if self.drop > 0 else None

    @staticmethod
    def keep_mask(
        rng: np.random.Generator, size: int, drop: float, keep_last: bool = False
    ) -> npt.NDArray[np.bool_]:
        """Return ``size`` keep flags, each False with probability ``drop``."""
        # 16-bit draws compared with drop * 2**16 (drop is exact to 2**-16): half the
        # cost of drawing floats.
        draws = rng.bit_generator.random_raw((size + 3) // 4).view(np.uint16)[:size]
        threshold = round(drop * 65536)
        keep = draws >= threshold if threshold < 65536 else np.zeros(size, dtype=bool)
        if keep_last and size:
            keep[-1] = True
        return keep

    @classmethod
    def select(
        cls,
        rows: memoryview,
        rng: np.random.Generator | None,
        drop: float,
        keep_last: bool = False,
    ) -> tuple[memoryview, int]:
        """Return the wire bytes of the kept packets of ``rows`` and how many were kept."""
        size = rows.nbytes // PACKET_SIZE
        if rng is None:
            return rows, size
        # One mask and one gather per chunk: no Python work per packet.
        kept = gather(rows, cls.keep_mask(rng, size, drop, keep_last))
        return memoryview(kept), len(kept) // PACKET_SIZE
