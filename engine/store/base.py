"""The storage interface every backend implements, and the one record <-> payload mapping.

Both backends (the embedded :class:`~engine.store.edge.EdgeStore` and the
:class:`~engine.store.server.ServerStore`) go through the functions here to
validate vectors and to write and read payloads, so the two cannot drift apart:
the contract test suite holds them to the same answers for the same calls.
Nothing here knows about Qdrant types.
"""

from __future__ import annotations

import abc
import json
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self

import numpy as np

from engine.errors import InvalidInput
from engine.types import ItemRecord, SearchHit, StoredItem

PAYLOAD_KEYS: tuple[str, ...] = ("item_id", "tenant", "title", "text", "image_uri", "attributes")
"""The payload keys every stored point carries, in both backends."""

KEYWORD_INDEXED_FIELDS: tuple[str, ...] = ("tenant", "item_id")
"""Payload fields with a keyword index (tenant filtering, lookups by item id)."""


@dataclass(frozen=True)
class VectorSchema:
    """The dense named vectors a store holds: name -> dimension, all with cosine distance.

    Example: ``VectorSchema({"fused": 896, "clip": 512, "text": 384})``. A store is
    created with one schema and refuses to open with another (``SchemaMismatch``),
    because vectors of another size or channel set could not be searched together.
    """

    dense: Mapping[str, int]

    def __post_init__(self) -> None:
        """Copy the mapping (callers may mutate theirs) and reject empty names or sizes < 1."""
        dense = {str(name): int(size) for name, size in dict(self.dense).items()}
        if not dense:
            raise InvalidInput("a vector schema needs at least one named dense vector")
        for name, size in dense.items():
            if not name:
                raise InvalidInput("dense vector names must not be empty")
            if size < 1:
                raise InvalidInput(f"dense vector {name!r} has size {size}; sizes must be >= 1")
        object.__setattr__(self, "dense", dict(sorted(dense.items())))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form, as kept in the EdgeStore manifest."""
        return {"dense": dict(self.dense)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VectorSchema:
        """The inverse of :meth:`to_json`."""
        return cls(dense=dict(data["dense"]))

    def differences(self, other: VectorSchema) -> list[str]:
        """What differs between this schema (the existing store's) and ``other`` (the asked one).

        Each entry is a short phrase for an error message; an empty list means equal.
        """
        found: list[str] = []
        for name in sorted(set(self.dense) | set(other.dense)):
            have, want = self.dense.get(name), other.dense.get(name)
            if have == want:
                continue
            if have is None:
                found.append(f"vector {name!r} (size {want}) is missing from the store")
            elif want is None:
                found.append(f"the store has vector {name!r} (size {have}) not in the config")
            else:
                found.append(
                    f"vector {name!r} has size {have} in the store but {want} in the config"
                )
        return found


class PreparedPoint(NamedTuple):
    """A validated item in backend-neutral form: point id, vector values and payload."""

    point_id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any]


def vector_values(schema: VectorSchema, name: str, vector: Any) -> list[float]:
    """Check one named vector against the schema and return it as a list of floats.

    Raises ``InvalidInput`` for an unknown name, a wrong shape or size, non-finite
    values, or an all-zero vector (cosine is undefined for it: a channel with no
    data must be left out, not zeroed).
    """
    if name not in schema.dense:
        known = ", ".join(sorted(schema.dense))
        raise InvalidInput(f"unknown vector {name!r}; this store has: {known}")
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"vector {name!r} is not numeric: {exc}") from exc
    size = schema.dense[name]
    if array.ndim != 1 or array.shape[0] != size:
        raise InvalidInput(f"vector {name!r} must have shape ({size},), got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInput(f"vector {name!r} contains NaN or infinite values")
    if not array.any():
        raise InvalidInput(
            f"vector {name!r} is all zeros; leave a channel without data out instead"
        )
    values: list[float] = array.tolist()
    return values


def check_limit(limit: int) -> int:
    """The search limit as an ``int``; ``InvalidInput`` unless it is an integer >= 1."""
    try:
        value = operator.index(limit)
    except TypeError:
        value = 0
    if isinstance(limit, bool) or value < 1:
        raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
    return value


def record_to_payload(record: ItemRecord) -> dict[str, Any]:
    """The payload stored for an item; the only writer of the payload layout.

    ``attributes`` goes through JSON so that what is stored is exactly what comes
    back (tuples become lists, keys become strings); values JSON cannot hold are
    rejected with ``InvalidInput``.
    """
    try:
        attributes = json.loads(json.dumps(dict(record.attributes), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"attributes of item {record.id!r} are not a JSON object: {exc}"
        ) from exc
    return {
        "item_id": record.id,
        "tenant": record.tenant,
        "title": record.title,
        "text": record.text,
        "image_uri": record.image_uri,
        "attributes": attributes,
    }


def payload_to_record(payload: Mapping[str, Any]) -> ItemRecord:
    """The item a stored payload describes; the only reader of the payload layout."""
    attributes = payload.get("attributes") or {}
    return ItemRecord(
        id=str(payload["item_id"]),
        tenant=str(payload["tenant"]),
        title=str(payload.get("title", "")),
        text=str(payload.get("text", "")),
        image_uri=str(payload.get("image_uri", "")),
        attributes=dict(attributes) if isinstance(attributes, Mapping) else {},
    )


def search_hit(payload: Mapping[str, Any] | None, score: float) -> SearchHit | None:
    """A ``SearchHit`` from a stored payload and score; ``None`` for a point we did not write."""
    if not payload or "item_id" not in payload or "tenant" not in payload:
        return None
    value = float(score)  # NaN cannot happen with validated vectors; rank it last if it does
    return SearchHit(payload_to_record(payload), -math.inf if math.isnan(value) else value)


def prepare_item(schema: VectorSchema, item: StoredItem) -> PreparedPoint:
    """Validate an item to upsert and put it in backend-neutral form.

    Only the vectors present in ``item.vectors`` are set: a missing channel stays
    absent, so searches on that channel do not find the item.
    """
    record = item.record
    if not record.id:
        raise InvalidInput("an item id must not be empty")
    vectors = {name: vector_values(schema, name, vec) for name, vec in item.vectors.items()}
    return PreparedPoint(record.point_id, vectors, record_to_payload(record))


def prepare_items(schema: VectorSchema, items: Sequence[StoredItem]) -> list[PreparedPoint]:
    """Validate a whole batch before anything is written, so a bad item writes nothing."""
    return [prepare_item(schema, item) for item in items]


def unique_in_order(ids: Sequence[str]) -> list[str]:
    """The ids without repeats, first occurrence first (``get`` returns each item once)."""
    return list(dict.fromkeys(str(item_id) for item_id in ids))


class VectorStore(abc.ABC):
    """Where items and their named vectors live; one tenant-aware interface for all backends.

    Point ids are the deterministic ``ItemRecord.point_id`` (uuid5 of tenant and
    item id), so upserting the same item again replaces it. Everything returned is
    an ``engine.types`` object; backend types never leave ``engine.store``.
    """

    schema: VectorSchema

    @abc.abstractmethod
    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or replace items with the named vectors they carry (``InvalidInput`` if bad)."""

    @abc.abstractmethod
    def search(
        self, vector: np.ndarray, *, using: str, limit: int, tenant: str
    ) -> list[SearchHit]:
        """The nearest items of ``tenant`` by cosine on the named vector ``using``, best first."""

    @abc.abstractmethod
    def get(self, ids: Sequence[str], *, tenant: str) -> list[ItemRecord]:
        """The records that exist, in the order asked, each once; unknown ids are left out."""

    @abc.abstractmethod
    def delete(self, ids: Sequence[str], *, tenant: str) -> int:
        """Delete items; returns how many existed and were deleted."""

    @abc.abstractmethod
    def count(self, tenant: str | None = None) -> int:
        """How many points the store holds, in all or for one tenant."""

    @abc.abstractmethod
    def optimize(self, *, wait: bool = False) -> None:
        """Build search indexes (HNSW); with ``wait`` block until they are in use."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every acknowledged write durable on disk."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (files, locks, connections); calling it again does nothing."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """One line saying what backs this store, for ``mmrec info``."""

    def __enter__(self) -> Self:
        """Use the store in a ``with`` block that closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store when the ``with`` block ends."""
        self.close()

