"""What the explorer remembers between requests: the catalog it has seen, the events it sent.

The service has no RPC that lists a catalog's attribute values or a user's recorded events,
and the explorer reaches the service only through its client. So it remembers:

- :class:`CatalogSample`: every item a search, recommendation or lookup returned, by tenant:
  the attribute values seen (list or short text values become filter chips, numbers become
  ranges) and each item's title and image reference (for thumbnails). The filters grow as
  people explore; they are a sample of the catalog, not an inventory of it.
- :class:`SessionLog`: the events this explorer recorded, per (tenant, user), newest first,
  with titles, so the page can show a user's recent events and what erasing them removed.
  Events recorded by other clients are not in it; the recommendations' explanations name the
  history items (from the service) that drove each result.

Both are bounded (least recently used entries go first) and guarded by one lock each: the
HTTP server answers requests on several threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.domain import ItemRecord

MAX_ITEMS = 20_000
"""Items whose title and image reference are kept (for thumbnails and event titles)."""
MAX_CHIPS = 60
"""Values kept per chip attribute (the first seen); more would not fit on a phone."""
MAX_CHIP_CHARS = 40
"""Longest text value offered as a chip (longer ones are descriptions, not categories)."""
MAX_USERS = 1_000
MAX_EVENTS_PER_USER = 50


@dataclass(frozen=True, slots=True)
class SeenItem:
    """What the explorer keeps of an item it has shown: enough for a thumbnail and a label."""

    title: str
    image_uri: str


@dataclass(slots=True)
class _Facets:
    """One tenant's attribute values seen so far."""

    chips: dict[str, list[str]]
    ranges: dict[str, list[float]]


class CatalogSample:
    """The items and attribute values the explorer has seen, per tenant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], SeenItem] = OrderedDict()
        self._facets: dict[str, _Facets] = {}

    def observe(self, records: Iterable[ItemRecord]) -> None:
        """Remember these items and fold their attributes into their tenant's facets."""
        with self._lock:
            for record in records:
                key = (record.tenant, record.id)
                self._items[key] = SeenItem(record.title or record.id, record.image_uri)
                self._items.move_to_end(key)
                facets = self._facets.setdefault(record.tenant, _Facets({}, {}))
                for name, value in record.attributes.items():
                    _fold(facets, name, value)
            while len(self._items) > MAX_ITEMS:
                self._items.popitem(last=False)

    def item(self, tenant: str, item_id: str) -> SeenItem | None:
        """The remembered item, or None when the explorer has not shown it."""
        with self._lock:
            return self._items.get((tenant, item_id))

    def facets(self, tenant: str) -> dict[str, Any]:
        """``{"chips": {key: values}, "ranges": {key: {"min", "max"}}, "tenants": [...]}``."""
        with self._lock:
            facets = self._facets.get(tenant, _Facets({}, {}))
            return {
                "chips": {k: sorted(v, key=str.lower) for k, v in sorted(facets.chips.items())
                          if k not in facets.ranges},
                "ranges": {k: {"min": lo, "max": hi}
                           for k, (lo, hi) in sorted(facets.ranges.items())},
                "tenants": sorted(self._facets),
            }


def _fold(facets: _Facets, name: str, value: Any) -> None:
    """Add one attribute value: a number widens its range, text values become chips."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        low, high = facets.ranges.get(name, [float(value), float(value)])
        facets.ranges[name] = [min(low, float(value)), max(high, float(value))]
        return
    values = value if isinstance(value, list | tuple) else [value]
    for one in values:
        if isinstance(one, str) and one and len(one) <= MAX_CHIP_CHARS:
            chips = facets.chips.setdefault(name, [])
            if one not in chips and len(chips) < MAX_CHIPS:
                chips.append(one)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event this explorer recorded, with the item's title as it was shown."""

    item_id: str
    title: str
    kind: str
    timestamp: float


class SessionLog:
    """The events recorded through this explorer, newest first, per (tenant, user)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: OrderedDict[tuple[str, str], list[LoggedEvent]] = OrderedDict()

    def add(self, tenant: str, user_id: str, event: LoggedEvent) -> None:
        """Remember one recorded event (the oldest beyond the per-user bound is dropped)."""
        with self._lock:
            events = self._users.setdefault((tenant, user_id), [])
            events.insert(0, event)
            del events[MAX_EVENTS_PER_USER:]
            self._users.move_to_end((tenant, user_id))
            while len(self._users) > MAX_USERS:
                self._users.popitem(last=False)

    def events(self, tenant: str, user_id: str) -> list[LoggedEvent]:
        """The user's recorded events, newest first (empty for a user not seen here)."""
        with self._lock:
            return list(self._users.get((tenant, user_id), []))

    def forget(self, tenant: str, user_id: str) -> list[LoggedEvent]:
        """Drop the user's events (after an erasure) and return them."""
        with self._lock:
            return self._users.pop((tenant, user_id), [])

    def users(self, tenant: str) -> list[str]:
        """Users of ``tenant`` with events recorded here, most recent first."""
        with self._lock:
            return [user for (t, user) in reversed(self._users) if t == tenant]
