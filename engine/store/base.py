"""The storage interface every backend implements, and the one record <-> payload mapping.

Both backends (the embedded :class:`~engine.store.edge.EdgeStore` and the
:class:`~engine.store.server.ServerStore`) go through the functions here to
validate vectors and to write and read payloads, so the two cannot drift apart:
the contract test suite holds them to the same answers for the same calls. The
schema and vector validation live in ``engine.store.schema`` (re-exported here),
hybrid query planning in ``engine.store.hybrid``. Nothing here knows about Qdrant
types.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self

import numpy as np

from engine.errors import InvalidInput
from engine.query import ChannelQuery, FusedHit, HybridQuery, SparseVector
from engine.store.schema import (
    SparseValues,
    VectorSchema,
    VectorValues,
    any_vector_values,
    check_limit,
    vector_values,
)
from engine.types import ItemRecord, SearchHit, StoredItem

__all__ = [
    "KEYWORD_INDEXED_FIELDS",
    "PAYLOAD_KEYS",
    "PreparedPoint",
    "SparseValues",
    "VectorSchema",
    "VectorStore",
    "VectorValues",
    "check_limit",
    "payload_to_record",
    "prepare_item",
    "prepare_items",
    "record_to_payload",
    "unique_in_order",
    "vector_values",
]

PAYLOAD_KEYS: tuple[str, ...] = ("item_id", "tenant", "title", "text", "image_uri", "attributes")
"""The payload keys every stored point carries, in both backends."""

KEYWORD_INDEXED_FIELDS: tuple[str, ...] = ("tenant", "item_id")
"""Payload fields with a keyword index (tenant filtering, lookups by item id)."""


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
    def hybrid_search(self, query: HybridQuery) -> list[FusedHit]:
        """The items of ``query.tenant`` passing its filter, ranked by all its channels at once.

        One request to Qdrant: a prefetch per channel, fused by RRF (``rrf_k``, the
        channel weights) or DBSF; a single channel is a plain nearest search whose
        scores are that channel's own. With ``with_channel_hits`` each hit also says
        where it stood in each channel that found it (1-based rank, raw score).
        ``InvalidInput`` for a malformed query (see ``engine.store.hybrid``).
        """

    def search(
        self, vector: np.ndarray | SparseVector, *, using: str, limit: int, tenant: str
    ) -> list[SearchHit]:
        """The nearest items of ``tenant`` on the named vector ``using``, best first.

        Cosine for a dense vector; for a sparse one (pass an ``engine.query.SparseVector``)
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

