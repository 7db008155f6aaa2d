"""User profiles from interaction events: history, seen set and a decayed profile vector.

Each event moves its user's profile at once. The profile vector is a
time-decayed, kind-weighted sum of the interacted items' content vectors::

    S <- decay(event) * S + weight(event) * v(item)

where ``decay`` halves an old event's share every ``half_life_events`` newer
events (and, when set, every ``half_life_days``), and ``weight`` is the kind's
weight (negative kinds such as ``dislike`` push the profile away), scaled by the
event's value for kinds like ``rating``. The update is exact and O(1) per event,
so the stored vector equals the sum over the whole history even after old events
leave the capped event list. The profile, the event list and the seen set are
kept in the store's users collection (``engine.store.UserStore``), so they
survive restarts and every engine replica sees them; an in-process LRU only
saves store reads, and :meth:`ProfileBook.delete` empties it for the user.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from engine.config import ProfileSettings
from engine.domain import MAX_ID_CHARS, Erasure, Event, InvalidInput
from engine.store import UserRecord, UserStore, VectorStore

PROFILE_VECTOR = "profile"
"""Name of the profile vector in the users collection."""

_LOCK_STRIPES = 64


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What is known about a user: recent events (oldest first), seen items, the profile sum.

    ``vector`` is the unnormalised decayed sum ``S`` (None while it is zero);
    ``event_count`` counts every event ever recorded, also those that left the
    capped ``events`` list.
    """

    tenant: str
    user_id: str
    events: tuple[Event, ...] = ()
    seen: tuple[str, ...] = ()
    vector: np.ndarray | None = None
    event_count: int = 0
    last_timestamp: float = 0.0

    def positives(self, weights: ProfileWeights, limit: int | None = None) -> list[str]:
        """Items of positive events, oldest first, each at its latest; the last ``limit``."""
        latest: dict[str, None] = {}
        for event in self.events:
            if weights.weight(event.kind, event.value) > 0:
                latest.pop(event.item_id, None)
                latest[event.item_id] = None
        items = list(latest)
        return items[-limit:] if limit else items

    def negatives(self, weights: ProfileWeights, limit: int | None = None) -> list[str]:
        """Items of negative events (``dislike``), oldest first; the last ``limit``."""
        items = list(dict.fromkeys(e.item_id for e in self.events
                                   if weights.weight(e.kind, e.value) < 0))
        return items[-limit:] if limit else items


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What :meth:`ProfileBook.record` did: events recorded, refused (index, reason), users."""

    recorded: int
    rejected: list[tuple[int, str]] = field(default_factory=list)
    users_updated: int = 0


class ProfileWeights:
    """Event weights and decay from the settings; the profile math in one place."""

    def __init__(self, settings: ProfileSettings) -> None:
        self.settings = settings
        self._per_event = 0.5 ** (1.0 / settings.half_life_events)

    def weight(self, kind: str, value: float) -> float:
        """The kind's weight, times value / scale for valued kinds (``rating``)."""
        try:
            weight = self.settings.kinds[kind]
        except KeyError:
            known = ", ".join(sorted(self.settings.kinds))
            raise InvalidInput(f"unknown event kind {kind!r}; this server accepts: {known} "
                               f"(profiles.kinds in the config)") from None
        scale = self.settings.value_scale.get(kind)
        if scale and value:
            weight *= value / scale
        return weight

    def decay(self, previous: float, timestamp: float) -> float:
        """How much of the profile sum survives one newer event at ``timestamp``."""
        factor = self._per_event
        days = self.settings.half_life_days
        if days and previous and timestamp > previous:
            factor *= 0.5 ** ((timestamp - previous) / 86_400 / days)
        return factor

    def step(self, vector: np.ndarray | None, previous: float, event: Event,
             item_vector: np.ndarray) -> np.ndarray:
        """The profile sum after ``event`` (whose item's unit content vector is given)."""
        added = self.weight(event.kind, event.value) * np.asarray(item_vector, dtype=np.float32)
        if vector is None:
            return added.astype(np.float32)
        return (self.decay(previous, event.timestamp) * vector + added).astype(np.float32)


MAX_EVENT_VALUE = 1e6
"""Larger values (a rating of 1e20) would swamp a profile, or overflow it to infinity."""
MAX_TIMESTAMP = 4_102_444_800.0
"""2100-01-01 UTC: later timestamps are a client's mistake (milliseconds sent as seconds,
or garbage), and would give one event all the weight of the time decay."""


def check_event(event: Event, weights: ProfileWeights) -> None:
    """``InvalidInput`` naming what is wrong with an event (ids, kind, value, time)."""
    for name, value in (("user_id", event.user_id), ("item_id", event.item_id)):
        if not value:
            raise InvalidInput(f"event {name} must not be empty")
        if len(value) > MAX_ID_CHARS:
            raise InvalidInput(f"event {name} is {len(value)} characters; at most {MAX_ID_CHARS}")
    if not math.isfinite(event.value) or abs(event.value) > MAX_EVENT_VALUE:
        raise InvalidInput(f"event value must be a finite number within +-{MAX_EVENT_VALUE:g}, "
                           f"not {event.value:g}")
    if not math.isfinite(event.timestamp) or not 0 <= event.timestamp < MAX_TIMESTAMP:
        raise InvalidInput(f"event timestamp must be unix seconds from 0 to {MAX_TIMESTAMP:g} "
                           f"(the year 2100), not {event.timestamp:g}")
    weights.weight(event.kind, event.value)


def profile_to_record(profile: UserProfile) -> UserRecord:
    """The users-collection record of a profile; the only writer of its payload layout."""
    vector = profile.vector
    norm = float(np.linalg.norm(vector)) if vector is not None else 0.0
    vectors = {PROFILE_VECTOR: vector / norm} if vector is not None and norm > 0 else {}
    payload = {
        # Columns, not one list per event: a user is rewritten on every event, and flat
        # lists halve the cost of building, journalling and storing a long history.
        "items": [e.item_id for e in profile.events],
        "kinds": [e.kind for e in profile.events],
        "values": [e.value for e in profile.events],
        "times": [e.timestamp for e in profile.events],
        "seen": list(profile.seen),
        "norm": norm,
        "event_count": profile.event_count,
        "last_timestamp": profile.last_timestamp,
    }
    return UserRecord(tenant=profile.tenant, user_id=profile.user_id, vectors=vectors,
                      payload=payload)


def record_to_profile(record: UserRecord) -> UserProfile:
    """The profile a users-collection record holds; the only reader of its payload layout."""
    payload = record.payload
    columns = [payload.get(key, []) for key in ("items", "kinds", "values", "times")]
    if "events" in payload:  # the first layout, one list per event (before 2026-11-30)
        columns = [list(column) for column in zip(*payload["events"], strict=True)] or columns
    events = tuple(Event(record.user_id, str(item), str(kind), float(value), float(ts),
                         record.tenant) for item, kind, value, ts in zip(*columns, strict=True))
    vector = None  # a zero sum is the same as none: decay keeps it zero
    stored = record.vectors.get(PROFILE_VECTOR)
    norm = float(payload.get("norm", 0.0))
    if stored is not None and norm > 0:
        vector = (np.asarray(stored, dtype=np.float32) * norm).astype(np.float32)
    return UserProfile(tenant=record.tenant, user_id=record.user_id, events=events,
                       seen=tuple(str(s) for s in payload.get("seen", [])), vector=vector,
                       event_count=int(payload.get("event_count", len(events))),
                       last_timestamp=float(payload.get("last_timestamp", 0.0)))


def _stripe(tenant: str, user_id: str) -> int:
    """Which of the striped locks guards this user."""
    return zlib.crc32(f"{tenant}\x1f{user_id}".encode()) % _LOCK_STRIPES


class ProfileBook:
    """Records events into profiles in the users collection; reads and erases them.

    Thread-safe: events of one user are applied under that user's (striped) lock,
    so concurrent streams never lose an update within this process. Several
    engine replicas writing the same user through one Qdrant server can race
    (last write wins); route a user's events to one replica if that matters.
    """

    def __init__(self, users: UserStore, items: VectorStore, settings: ProfileSettings, *,
                 content_vector: str = "fused") -> None:
        self.users, self.items, self.settings = users, items, settings
        self.weights = ProfileWeights(settings)
        self.content_vector = content_vector
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._cache: OrderedDict[tuple[str, str], UserProfile] = OrderedDict()
        self._cache_lock = threading.Lock()

    def _lock(self, tenant: str, user_id: str) -> threading.Lock:
        """The stripe lock guarding this user's read-modify-write."""
        return self._locks[_stripe(tenant, user_id)]

    # -- reading ------------------------------------------------------------------------------

    def get(self, user_id: str, *, tenant: str) -> UserProfile | None:
        """The user's profile, or None for a user with no recorded events."""
        key = (tenant, user_id)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        record = self.users.get(user_id, tenant=tenant)
        profile = record_to_profile(record) if record is not None else None
        if profile is not None:
            self._remember(profile)
        return profile

    def _remember(self, profile: UserProfile) -> None:
        """Keep a profile in the LRU (no-op when the cache size is 0)."""
        if self.settings.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[(profile.tenant, profile.user_id)] = profile
            self._cache.move_to_end((profile.tenant, profile.user_id))
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)

    def histories(self, tenant: str | None = None) -> Iterator[tuple[str, list[str]]]:
        """(user id, positive items oldest first) of every stored user, for training."""
        for record in self.users.users(tenant):
            profile = record_to_profile(record)
            ordered = sorted(profile.events, key=lambda e: e.timestamp)
            items = [e.item_id for e in ordered if self.weights.weight(e.kind, e.value) > 0]
            if items:
                yield profile.user_id, items

    # -- writing ------------------------------------------------------------------------------

    def record(self, events: Sequence[Event], *, now: float | None = None) -> RecordOutcome:
        """Apply events in the order given; bad ones are refused with a reason, the rest kept.

        An event must name a known kind and an item stored for its tenant.
        Events without a timestamp get ``now``. Items' popularity grows by the
        positive weights recorded.
        """
        now = time.time() if now is None else now
        rejected: list[tuple[int, str]] = []
        valid: list[tuple[int, Event]] = []
        for index, event in enumerate(events):
            try:
                check_event(event, self.weights)
            except InvalidInput as exc:
                rejected.append((index, str(exc)))
                continue
            valid.append((index, event if event.timestamp else replace(event, timestamp=now)))
        by_user: dict[tuple[str, str], list[tuple[int, Event]]] = defaultdict(list)
        by_tenant: dict[str, set[str]] = defaultdict(set)
        for index, event in valid:
            by_user[(event.tenant, event.user_id)].append((index, event))
            by_tenant[event.tenant].add(event.item_id)
        vectors = {tenant: self.items.vectors(sorted(ids), tenant=tenant,
                                              using=self.content_vector)
                   for tenant, ids in by_tenant.items()}
        recorded = 0
        popularity: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        batches: dict[str, dict[str, list[Event]]] = defaultdict(dict)
        for (tenant, user_id), user_events in by_user.items():
            known = []
            for index, event in user_events:
                if event.item_id in vectors[tenant]:
                    known.append(event)
                else:
                    rejected.append((index, f"unknown item {event.item_id!r} in tenant "
                                            f"{tenant!r}; index the item before its events"))
            if not known:
                continue
            batches[tenant][user_id] = known
            recorded += len(known)
            for event in known:
                weight = self.weights.weight(event.kind, event.value)
                if weight > 0:
                    popularity[tenant][event.item_id] += weight
        for tenant, users_events in batches.items():
            self._apply(tenant, users_events, vectors[tenant])
        for tenant, increments in popularity.items():
            self.items.add_popularity(increments, tenant=tenant)
        users = sum(1 for key, evs in by_user.items()
                    if any(e.item_id in vectors[key[0]] for _, e in evs))
        return RecordOutcome(recorded, sorted(rejected), users)

    def _apply(self, tenant: str, users_events: Mapping[str, Sequence[Event]],
               vectors: Mapping[str, np.ndarray]) -> None:
        """Fold each user's events into their stored profile: one read and one write in all.

        The users' stripe locks are taken in index order, so two batches that
        share users cannot deadlock, and no event of theirs is lost between the
        read and the write.
        """
        stripes = sorted({_stripe(tenant, user) for user in users_events})
        with contextlib.ExitStack() as held:
            for stripe in stripes:
                held.enter_context(self._locks[stripe])
            stored = self.users.get_many(list(users_events), tenant=tenant)
            updated = [self._folded(stored.get(user_id), tenant, user_id, events, vectors)
                       for user_id, events in users_events.items()]
            self.users.put_many([profile_to_record(profile) for profile in updated])
            for profile in updated:
                self._remember(profile)

    def _folded(self, record: UserRecord | None, tenant: str, user_id: str,
                events: Sequence[Event], vectors: Mapping[str, np.ndarray]) -> UserProfile:
        """A user's profile after ``events`` (the math of the module docstring)."""
        profile = (record_to_profile(record) if record is not None
                   else UserProfile(tenant=tenant, user_id=user_id))
        vector, last = profile.vector, profile.last_timestamp
        history, seen = list(profile.events), dict.fromkeys(profile.seen)
        for event in events:
            vector = self.weights.step(vector, last, event, vectors[event.item_id])
            last = max(last, event.timestamp)
            history.append(event)
            seen[event.item_id] = None
        history.sort(key=lambda e: e.timestamp)  # stable: arrival order within a second
        return UserProfile(tenant=tenant, user_id=user_id,
                           events=tuple(history[-self.settings.max_events:]),
                           seen=tuple(seen), vector=vector,
                           event_count=profile.event_count + len(events), last_timestamp=last)

    def delete(self, user_id: str, *, tenant: str) -> Erasure:
        """Erase the user: events, profile vector, seen set and the cached copy."""
        with self._lock(tenant, user_id):
            record = self.users.get(user_id, tenant=tenant)
            profile = record_to_profile(record) if record is not None else None
            existed = self.users.delete(user_id, tenant=tenant)
            with self._cache_lock:
                cached = self._cache.pop((tenant, user_id), None) is not None
        return Erasure(events=profile.event_count if profile else 0,
                       seen=len(profile.seen) if profile else 0,
                       profile=existed, cache_entries=int(cached))
