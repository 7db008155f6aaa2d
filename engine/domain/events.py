"""Interaction events (who did what to which item) and what erasing a user removed."""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain.items import DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction: who did what to which item, how much, and when (unix seconds)."""

    user_id: str
    item_id: str
    kind: str
    value: float = 0.0
    timestamp: float = 0.0
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Erasure:
    """What deleting a user removed (``ProfileBook.delete``, the DeleteUser RPC)."""

    events: int
    seen: int
    profile: bool
    cache_entries: int
