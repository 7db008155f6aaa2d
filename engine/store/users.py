"""The users collection: what the store keeps for each user, and the interface both
backends implement.

A user is one point: named dense vectors (e.g. ``profile``) and an opaque JSON
payload whose layout the profiles layer owns. The store keeps that payload as one
JSON string (``PACKED``) beside ``tenant`` and ``user_id`` (which it filters on),
and unpacks it on reading, so a record comes back as it was put. One string
because Qdrant never looks inside it, and because qdrant-edge converts a payload
value by value, ~2.5 µs each: a user with 200 events took ~2.6 ms to hand over
as columns, ~25 µs as a string. Points written before 2026-11-30 hold the payload
keys directly; they are read as they are. Users are only fetched by
id or listed, never searched, so neither backend builds HNSW for them.

:class:`~engine.store.edge.users.EdgeUserStore` keeps them in a qdrant-edge shard
of their own (``DATA_DIR/users``), :class:`~engine.store.server.users.ServerUserStore`
in a collection beside the items'. Both validate and convert through the
functions here, so they accept and return the same things. Nothing here knows
Qdrant types.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from engine.domain import InvalidInput, point_id
from engine.store.lifecycle import StoreLifecycle
from engine.store.schema import VectorSchema, vector_values

USER_KEYS: tuple[str, ...] = ("tenant", "user_id")
"""Payload keys the store sets on every user point; a record's payload may not change them."""

PACKED = "data"
"""Stored payload key holding the record's payload as a JSON string."""

USER_SCROLL_PAGE = 256
"""Users read per request when listing them all."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the store keeps for one user: named dense vectors and an opaque JSON payload."""

    tenant: str
    user_id: str
    vectors: Mapping[str, np.ndarray]
    """Named dense vectors, e.g. ``{"profile": ...}``; may be empty. Stored cosine
    vectors come back normalised to length 1."""
    payload: Mapping[str, Any]
    """JSON-able; the profiles layer owns its layout."""


class PreparedUser(NamedTuple):
    """A validated user in backend-neutral form: point id, dense vectors, stored payload."""

    point_id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any]


def user_schema(dims: Mapping[str, int]) -> VectorSchema:
    """The users' vectors as a schema (cosine, at least one); ``InvalidInput`` if malformed.

    A user store needs at least one named vector: qdrant-edge cannot create a
    shard without one, and the server store follows it so both accept the same.
    """
    if not dims:
        raise InvalidInput("a user store needs at least one named vector, e.g. {'profile': 896}")
    return VectorSchema(dict(dims))


def user_point_id(tenant: str, user_id: str) -> str:
    """The deterministic point id of a user (its own collection, so no clash with items)."""
    return point_id(tenant, user_id)


def _user_key(key: str, value: object) -> str:
    """``value`` if it is a non-empty string (callers may not be type-checked); else
    ``InvalidInput`` naming ``key``."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"a user's {key} must be a non-empty string, got {value!r}")
    return value


def check_user(tenant: str, user_id: str) -> str:
    """The point id of a user named by non-empty strings; ``InvalidInput`` otherwise."""
    return user_point_id(_user_key("tenant", tenant), _user_key("user_id", user_id))


def prepare_user(schema: VectorSchema, record: UserRecord) -> PreparedUser:
    """Validate a user to put and put it in backend-neutral form.

    ``InvalidInput`` for an empty tenant or user id, an unknown vector name or a
    bad vector (size, NaN, all zeros), a payload that is not a JSON object, or one
    that sets ``tenant`` or ``user_id`` to something other than the record's.
    """
    point = check_user(record.tenant, record.user_id)
    vectors = {
        str(name): vector_values(schema, str(name), vector)
        for name, vector in record.vectors.items()
    }
    if not isinstance(record.payload, Mapping):
        raise InvalidInput(f"the payload of user {record.user_id!r} must be a mapping")
    for key in USER_KEYS:
        if key in record.payload and record.payload[key] != getattr(record, key):
            raise InvalidInput(
                f"the payload of user {record.user_id!r} sets {key!r} to "
                f"{record.payload[key]!r}; the store keeps {key} itself (it is "
                f"{getattr(record, key)!r})"
            )
    own = {key: value for key, value in record.payload.items() if key not in USER_KEYS}
    try:
        packed = json.dumps(own, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"the payload of user {record.user_id!r} is not a JSON object: {exc}"
        ) from exc
    # The packed string first: qdrant-edge's payload pages are LZ4-compressed, and with the
    # user id written before it, item ids containing the id become back-references that
    # the erasure test's byte search (tests/test_user_store_contract.py) could not see.
    payload = {PACKED: packed, "tenant": record.tenant, "user_id": record.user_id}
    return PreparedUser(point, vectors, payload)


def stored_user(payload: Mapping[str, Any] | None, vectors: object) -> UserRecord | None:
    """The record a stored point holds (``None`` if it is not one of our users)."""
    if not payload or not all(isinstance(payload.get(key), str) for key in USER_KEYS):
        return None
    named = vectors if isinstance(vectors, Mapping) else {}
    return UserRecord(
        tenant=payload["tenant"],
        user_id=payload["user_id"],
        vectors={
            str(name): np.asarray(values, dtype=np.float32)
            for name, values in named.items()
            if values is not None
        },
        payload=_unpacked(payload),
    )


def records_by_user(stored: Iterable[tuple[Mapping[str, Any] | None, object]], tenant: str,
                    user_ids: Iterable[str]) -> dict[str, UserRecord]:
    """The records among stored (payload, vectors) pairs that belong to ``user_ids`` of
    ``tenant``, by user id: what both backends' ``get_many`` return."""
    wanted = set(user_ids)
    found: dict[str, UserRecord] = {}
    for payload, vectors in stored:
        record = stored_user(payload, vectors)
        if record is not None and record.tenant == tenant and record.user_id in wanted:
            found[record.user_id] = record
    return found


def _unpacked(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A stored payload without the store's keys: the packed string, or the older plain keys."""
    packed = payload.get(PACKED)
    if isinstance(packed, str):
        return dict(json.loads(packed))
    return {key: value for key, value in payload.items() if key not in USER_KEYS}


def dims_differences(stored: Mapping[str, int], wanted: Mapping[str, int]) -> list[str]:
    """What differs between the stored users' vectors and the configured ones, as phrases."""
    found: list[str] = []
    for name in sorted(set(stored) | set(wanted)):
        have, want = stored.get(name), wanted.get(name)
        if have == want:
            continue
        if have is None:
            found.append(f"vector {name!r} (size {want}) is missing from the users store")
        elif want is None:
            found.append(f"the users store has vector {name!r} (size {have}) not configured")
        else:
            found.append(f"vector {name!r} has size {have} in the users store but {want} now")
    return found


class UserStore(StoreLifecycle):
    """Where users live: one point per (tenant, user id), fetched by id, never searched.

    Everything returned is a :class:`UserRecord`; errors are ``engine.domain``
    exceptions (``InvalidInput`` for bad records, ``Unavailable`` when the backend
    fails, ``FailedPrecondition`` after :meth:`close` or for a held data dir,
    ``SchemaMismatch`` when the stored vectors differ from ``dims``).
    """

    dims: Mapping[str, int]
    """The named vectors users may carry: name -> size (cosine)."""

    def get(self, user_id: str, *, tenant: str) -> UserRecord | None:
        """The user's record, or ``None`` if the store has none."""
        return self.get_many([user_id], tenant=tenant).get(user_id)

    @abc.abstractmethod
    def get_many(self, user_ids: Sequence[str], *, tenant: str) -> dict[str, UserRecord]:
        """The records of those users that exist, by user id (one store call)."""

    def put(self, record: UserRecord) -> None:
        """Insert or replace the whole user: its vectors (an empty mapping stores none)
        and its payload; nothing of the previous version is kept."""
        self.put_many([record])

    @abc.abstractmethod
    def put_many(self, records: Sequence[UserRecord]) -> None:
        """:meth:`put` for several users in one store call (all validated before any write)."""

    @abc.abstractmethod
    def delete(self, user_id: str, *, tenant: str) -> bool:
        """Erase the user; ``True`` if it existed."""

    @abc.abstractmethod
    def users(self, tenant: str | None = None) -> Iterator[UserRecord]:
        """Every user, or one tenant's, page by page (for training from recorded events).

        Order: by point id. Users put or deleted while iterating may or may not show.
        """

    @abc.abstractmethod
    def count(self, tenant: str | None = None) -> int:
        """How many users the store holds, in all or for one tenant."""
