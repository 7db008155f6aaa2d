"""The storage interface every backend implements, and the one record <-> payload mapping.

Both backends (the embedded :class:`~engine.store.edge.EdgeStore` and the
:class:`~engine.store.server.ServerStore`) go through the functions here to
validate vectors and to write and read payloads, so the two cannot drift apart:
the contract test suite holds them to the same answers for the same calls. The
schema and vector validation live in ``engine.store.schema`` (re-exported here),
hybrid query planning in ``engine.store.hybrid``. An item's ``popularity`` lives in
the payload beside the record's fields and is handled only by the functions here
next to ``record_to_payload``. Nothing here knows about Qdrant types.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from engine.domain import (
    POPULARITY,
    ChannelQuery,
    FusedHit,
    HybridQuery,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    SearchHit,
    SparseVector,
    StoredItem,
)
from engine.store.lifecycle import StoreLifecycle
from engine.store.schema import (
    SparseValues,
    VectorSchema,
    VectorValues,
    any_vector_values,
    check_dense_name,
    check_limit,
    vector_values,
)

__all__ = [
    "FLOAT_INDEXED_FIELDS",
    "KEYWORD_INDEXED_FIELDS",
    "PAYLOAD_KEYS",
    "PreparedPoint",
    "SparseValues",
    "VectorSchema",
    "VectorStore",
    "VectorValues",
    "carry_popularity",
    "check_dense_name",
    "check_limit",
    "payload_to_record",
    "popular_hits",
    "popularity_increments",
    "prepare_item",
    "prepare_items",
    "prepare_vectors",
    "record_to_payload",
    "stored_popularity",
    "stored_vector",
    "unique_in_order",
    "vector_values",
]

PAYLOAD_KEYS: tuple[str, ...] = ("item_id", "tenant", "title", "text", "image_uri", "attributes")
"""The payload keys every stored point carries, in both backends."""

KEYWORD_INDEXED_FIELDS: tuple[str, ...] = ("tenant", "item_id")
"""Payload fields with a keyword index (tenant filtering, lookups by item id)."""

# POPULARITY (engine.domain) is the payload key of an item's popularity: a float that
# ``add_popularity`` adds to, missing meaning 0. It is not part of the record
# (``payload_to_record`` never reads it), and ``upsert`` carries it over when an item is
# replaced, so re-indexing keeps it.

FLOAT_INDEXED_FIELDS: tuple[str, ...] = (POPULARITY,)
"""Payload fields with a float (range) index: ``popular()`` orders by it (Qdrant's
``order_by`` needs a range index on the key)."""


class PreparedPoint(NamedTuple):
    """A validated item in backend-neutral form: point id, vectors (dense or sparse), payload."""

    point_id: str
    vectors: dict[str, VectorValues]
    payload: dict[str, Any]


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


def prepare_item(schema: VectorSchema, item: StoredItem) -> PreparedPoint:
    """Validate an item to upsert and put it in backend-neutral form.

    Only the vectors present in ``item.vectors`` are set: a missing channel stays
    absent, so searches on that channel do not find the item. An empty sparse
    vector (a text of stopwords only) counts as missing, not as an error.
    """
    record = item.record
    if not record.id:
        raise InvalidInput("an item id must not be empty")
    vectors: dict[str, VectorValues] = {}
    for name, vector in item.vectors.items():
        values = any_vector_values(schema, name, vector)
        if values is not None:
            vectors[name] = values
    return PreparedPoint(record.point_id, vectors, record_to_payload(record))


def prepare_items(schema: VectorSchema, items: Sequence[StoredItem]) -> list[PreparedPoint]:
    """Validate a whole batch before anything is written, so a bad item writes nothing."""
    return [prepare_item(schema, item) for item in items]


def stored_popularity(payload: Mapping[str, Any] | None) -> float | None:
    """The popularity a stored payload holds; ``None`` when it has none (or not a number)."""
    value = (payload or {}).get(POPULARITY)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def carry_popularity(
    points: Sequence[PreparedPoint], stored: Mapping[str, Mapping[str, Any] | None]
) -> list[PreparedPoint]:
    """The points to upsert, each with the popularity its stored version has.

    ``stored`` maps a point id to the payload of the point stored now (read in the
    same write-locked step as the upsert): replacing an item keeps its popularity.
    """
    for point in points:
        popularity = stored_popularity(stored.get(point.point_id))
        if popularity is not None:
            point.payload[POPULARITY] = popularity
    return list(points)


def popularity_increments(increments: Mapping[str, object]) -> dict[str, float]:
    """Validated increments (item id -> finite number), checked before anything is written.

    The values are ``object``: callers are meant to pass numbers, but this is where a
    caller that is not type-checked learns that it did not."""
    checked: dict[str, float] = {}
    for item_id, increment in increments.items():
        if not item_id:
            raise InvalidInput("an item id must not be empty")
        if isinstance(increment, bool) or not isinstance(increment, int | float | np.number) or (
            not math.isfinite(increment)
        ):
            raise InvalidInput(
                f"the popularity increment of item {item_id!r} must be a finite number, "
                f"got {increment!r}"
            )
        checked[str(item_id)] = float(increment)
    return checked


def prepare_vectors(
    schema: VectorSchema, vectors: Mapping[str, Any], using: str
) -> dict[str, list[float]]:
    """Validated replacement vectors (item id -> values on the dense vector ``using``).

    Every vector is checked before anything is written, so one bad vector writes nothing.
    """
    check_dense_name(schema, using)
    prepared: dict[str, list[float]] = {}
    for item_id, vector in vectors.items():
        if not item_id:
            raise InvalidInput("an item id must not be empty")
        prepared[str(item_id)] = vector_values(schema, using, vector)
    return prepared


def stored_vector(vectors: object, using: str) -> np.ndarray | None:
    """The dense vector ``using`` of a stored point's vectors as float32, if it has one."""
    if not isinstance(vectors, Mapping):
        return None
    values = vectors.get(using)
    if values is None:
        return None
    return np.asarray(values, dtype=np.float32)


TiedPoints = Callable[[float, int], Sequence[tuple[str, Mapping[str, Any] | None]]]
"""``tied(value, count)``: the first ``count`` points, in point id order, of the filtered
items whose popularity equals ``value`` (id and payload of each)."""


def popular_hits(
    ranked: Sequence[tuple[str, Mapping[str, Any] | None]], limit: int, tied: TiedPoints
) -> list[SearchHit]:
    """The ``limit`` most popular items, score = popularity, equal values in point id order.

    ``ranked`` is the backend's scroll ordered by popularity, descending, at most
    ``limit`` points (id, payload). Qdrant does not define the order of equal values
    there, so when the page is full the ties at its last value are asked again with
    ``tied``, which gives them in point id order (a scroll's order, the same on every
    backend): the answer is exact and deterministic, and reads only the ties it keeps.
    Point ids are hashes of tenant and item id, so that order is stable but arbitrary.
    """
    rows = _popular_rows(ranked)
    if len(ranked) >= limit and rows:
        boundary = min(value for value, _, _ in rows)
        rows = [row for row in rows if row[0] > boundary]
        rows += _popular_rows(tied(boundary, limit - len(rows)))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return [SearchHit(payload_to_record(payload), value) for value, _, payload in rows[:limit]]


def _popular_rows(
    points: Sequence[tuple[str, Mapping[str, Any] | None]],
) -> list[tuple[float, str, Mapping[str, Any]]]:
    """(popularity, point id, payload) of the points that are items with a popularity."""
    rows = []
    for point, payload in points:
        value = stored_popularity(payload)
        if value is not None and payload and "item_id" in payload and "tenant" in payload:
            rows.append((value, str(point), payload))
    return rows


def unique_in_order(ids: Sequence[str]) -> list[str]:
    """The ids without repeats, first occurrence first (``get`` returns each item once)."""
    return list(dict.fromkeys(str(item_id) for item_id in ids))


class VectorStore(StoreLifecycle):
    """Where items and their named vectors live; one tenant-aware interface for all backends.

    Point ids are the deterministic ``ItemRecord.point_id`` (uuid5 of tenant and
    item id), so upserting the same item again replaces it. Everything returned is
    an ``engine.domain`` object; backend types never leave ``engine.store``.
    """

    schema: VectorSchema

    @abc.abstractmethod
    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or replace items with the named vectors they carry (``InvalidInput`` if bad)."""

    @abc.abstractmethod
    def hybrid_search(self, query: HybridQuery) -> list[FusedHit]:
        """The items of ``query.tenant`` passing its filter, ranked by all its channels at once.

        One request to Qdrant: a prefetch per channel, fused by RRF (``rrf_k``, the
        channel weights) or DBSF; a single channel is a plain nearest search whose
        scores are that channel's own. A ``popularity_weight`` also fuses in, by RRF,
        the candidates' ranking by popularity (still one request; results stay among
        the candidates). With ``with_channel_hits`` each hit also says where it stood
        in each channel that found it (1-based rank, raw score; ``popularity``: rank
        and popularity). ``InvalidInput`` for a malformed query (see
        ``engine.store.hybrid``).
        """

    @abc.abstractmethod
    def batch_searches(self, *, window_ms: float, max_batch: int) -> None:
        """From now on let concurrent ``hybrid_search`` calls share one backend request
        (``engine.store.batched``; ``[query_batching] store``)."""

    @abc.abstractmethod
    def search_batch_sizes(self) -> dict[int, int]:
        """How many backend requests carried each number of searches (empty when unbatched)."""

    def search(
        self, vector: np.ndarray | SparseVector, *, using: str, limit: int, tenant: str
    ) -> list[SearchHit]:
        """The nearest items of ``tenant`` on the named vector ``using``, best first.

        Cosine for a dense vector; for a sparse one (pass an ``engine.domain.SparseVector``)
        the BM25 score with the store's IDF.
        """
        limit = check_limit(limit)
        channel = ChannelQuery(using=using, vector=vector, limit=limit)
        hits = self.hybrid_search(HybridQuery(channels=[channel], limit=limit, tenant=tenant))
        return [SearchHit(hit.record, hit.score) for hit in hits]

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
    def vectors(self, ids: Sequence[str], *, tenant: str, using: str) -> dict[str, np.ndarray]:
        """The stored dense vectors (float32) of items on the named vector ``using``.

        Item id -> vector; unknown ids and items without that vector are left out.
        Vectors come back as Qdrant keeps them: cosine vectors normalised to length 1
        (which changes no cosine). ``InvalidInput`` for an unknown or sparse name.
        For recommendation: a user's items become the examples of a recommend query.
        """

    @abc.abstractmethod
    def set_vectors(self, vectors: Mapping[str, np.ndarray], *, tenant: str, using: str) -> int:
        """Replace one named dense vector of existing items, keeping their other vectors
        and payload (e.g. behaviour vectors from a trained sequential model).

        ``vectors`` maps item id -> vector. Items that do not exist are skipped, not
        created; returns how many were updated. ``InvalidInput`` (nothing written)
        for an unknown or sparse name or a bad vector.
        """

    @abc.abstractmethod
    def add_popularity(self, increments: Mapping[str, float], *, tenant: str) -> int:
        """Add to the popularity of existing items (item id -> increment; missing counts 0).

        A read-modify-write under the store's write lock; unknown items are skipped.
        Returns how many items were updated. ``InvalidInput`` for a non-finite increment.
        """

    @abc.abstractmethod
    def popular(self, *, tenant: str, filter: ItemFilter, limit: int) -> list[SearchHit]:
        """The most popular items of ``tenant`` passing ``filter``, score = popularity.

        Highest first; equal popularity in point id order (stable, the same on every
        backend); items that never had popularity added are not returned.
        """

    @abc.abstractmethod
    def optimize(self, *, wait: bool = False) -> None:
        """Build search indexes (HNSW); with ``wait`` block until they are in use."""
