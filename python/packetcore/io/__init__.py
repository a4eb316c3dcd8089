"""Feed files and outputs: the formats, reading and writing them, and loading feeds."""

from __future__ import annotations

from typing import TypeGuard

__all__ = ["is_nats"]


def is_nats(spec: object) -> TypeGuard[str]:
    """Return whether ``spec`` names a JetStream stream (``nats://...``, :mod:`.nats`).

    Here, where it costs nothing to import: commands ask it before they load anything.
    """
    return isinstance(spec, str) and spec.startswith("nats://")
