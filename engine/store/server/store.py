"""ServerStore: items in a collection of a Qdrant server or cluster, through qdrant-client.

For deployments that outgrow one machine: Qdrant shards and replicates the
collection, and engine replicas stay stateless. The server builds its HNSW
indexes itself, in the background, so ``optimize()`` and ``flush()`` have
nothing to do. Tests run this code path against ``QdrantClient(":memory:")``
(brute force, small data only, not thread-safe) and against a real server when
``QDRANT_URL`` is set.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from engine.domain import (
    POPULARITY,
    FusedHit,
    HybridQuery,
    ItemFilter,
    ItemRecord,
    Range,
    SearchHit,
    StoredItem,
    point_id,
)
from engine.store.base import (
    FLOAT_INDEXED_FIELDS,
    KEYWORD_INDEXED_FIELDS,
    VectorSchema,
    VectorStore,
    carry_popularity,
    check_dense_name,
    check_limit,
    payload_to_record,
    popular_hits,
    popularity_increments,
    prepare_items,
    prepare_vectors,
    stored_popularity,
    stored_vector,
    unique_in_order,
)
from engine.store.batched import BatchedSearch
from engine.store.filters import plan_filter, with_condition
from engine.store.hybrid import HybridPlan, hits_per_plan
from engine.store.retry import RetryPolicy
from engine.store.schema import Quantization
from engine.store.server.client import (
    ServerCollection,
    client_vector,
    hybrid_requests,
    quantization_config,
)
from engine.store.server.filters import client_filter

logger = logging.getLogger(__name__)


ANALYSERS_KEY = "mmrec_analysers"
"""Collection metadata key of the schema's sparse analysers (``VectorSchema.analysers``)."""


def _collection_schema(
    vectors: object, sparse: object, metadata: object = None
) -> tuple[VectorSchema | None, list[str]]:
    """The schema of an existing collection's vectors config and metadata, and what about it
    we cannot use."""
    if not isinstance(vectors, dict):
        return None, ["the collection has a single unnamed vector, not named vectors"]
    problems = [
        f"vector {name!r} uses {params.distance} distance, not cosine"
        for name, params in vectors.items()
        if params.distance != models.Distance.COSINE
    ]
    sparse = sparse if isinstance(sparse, dict) else {}
    problems += [
        f"sparse vector {name!r} has no IDF modifier"
        for name, params in sparse.items()
        if params.modifier != models.Modifier.IDF
    ]
    if not vectors:
        return None, ["the collection has no dense vectors"]
    recorded = metadata.get(ANALYSERS_KEY) if isinstance(metadata, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    analysers = {name: str(kind) for name, kind in recorded.items() if name in sparse}
    schema = VectorSchema({name: params.size for name, params in vectors.items()}, tuple(sparse),
                          analysers)
    return schema, problems


class ServerStore(ServerCollection, VectorStore):
    """A Qdrant collection of cosine named vectors plus keyword indexes on tenant and item id
    and a float index on popularity.

    Give a URL (a gRPC client is made, ``prefer_grpc=True``) or a ready
    ``QdrantClient``; a client passed in is not closed by :meth:`close`, its
    owner closes it. Read-modify-writes (popularity, and carrying it over in
    ``upsert``) hold a lock of this object; other engine replicas on the same
    collection are not covered by it (see :meth:`add_popularity`).

    Every server call is safe to repeat (reads, and writes by point id that set absolute
    values), so each is retried by ``retry`` while the server is unreachable
    (:meth:`ServerCollection._call`); opening the collection is not. ``quantization``
    applies to a collection created here; an existing one keeps its own (the searches
    still ask for the configured oversampling and rescoring).
    """

    def __init__(
        self,
        url_or_client: str | QdrantClient,
        schema: VectorSchema,
        *,
        collection: str = "mmrec_items",
        api_key: str | None = None,
        hnsw_ef: int = 128,
        placement: dict[str, int] | None = None,
        retry: RetryPolicy | None = None,
        quantization: Quantization | None = None,
    ) -> None:
        self.schema = schema
        self.quantization = quantization or Quantization()
        self._collection = collection
        self._placement = dict(placement or {})
        self._hnsw_ef = hnsw_ef
        self._write_lock = threading.Lock()  # read-modify-writes of this process
        self.searches = BatchedSearch(schema, self._search_plans)
        self._open(url_or_client, api_key, retry)

    def _differences(self, info: models.CollectionInfo) -> list[str]:
        """The schema differences between the collection and this store's vectors."""
        params = info.config.params
        existing, problems = _collection_schema(params.vectors, params.sparse_vectors,
                                                info.config.metadata)
        if existing is not None:
            problems += existing.differences(self.schema)
        return problems

    def _mismatch(self, problems: list[str]) -> str:
        return (f"collection {self._collection} on {self._where} was indexed with other "
                f"vectors than configured: {'; '.join(problems)}. Re-index the catalog into "
                f"it from scratch (delete the collection first) or choose another collection")

    def _adopt(self, info: models.CollectionInfo) -> None:
        self._ensure_float_indexes(info.payload_schema or {})

    def _create_collection(self) -> None:
        """Cosine dense and IDF sparse vectors from the schema, keyword payload indexes; with
        quantization, the originals on disk and the quantized vectors in RAM."""
        on_disk = True if self.quantization.enabled else None
        self._client.create_collection(
            self._collection,
            vectors_config={
                name: models.VectorParams(size=size, distance=models.Distance.COSINE,
                                          on_disk=on_disk)
                for name, size in self.schema.dense.items()
            },
            quantization_config=quantization_config(self.quantization),
            sparse_vectors_config={
                name: models.SparseVectorParams(modifier=models.Modifier.IDF)
                for name in self.schema.sparse
            },
            metadata={ANALYSERS_KEY: dict(self.schema.analysers)},
            shard_number=self._placement.get("shard_number"),
            replication_factor=self._placement.get("replication_factor"),
        )
        for field in KEYWORD_INDEXED_FIELDS:
            params = models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=field == "tenant"
            )
            self._client.create_payload_index(self._collection, field, params, wait=True)
        self._ensure_float_indexes({})
        logger.info("created collection %s on %s", self._collection, self._where)

    def _ensure_float_indexes(self, existing: Mapping[str, Any]) -> None:
        """Float (range) indexes for ``popular()``'s ``order_by``, made if missing (a
        collection from before them gets them on open). No payload HNSW links: these
        serve ordering, not filtered vector search."""
        params = models.FloatIndexParams(type=models.FloatIndexType.FLOAT, enable_hnsw=False)
        for field in FLOAT_INDEXED_FIELDS:
            if field not in existing:
                self._call(f"create the {field} index", functools.partial(
                    self._client.create_payload_index, self._collection, field, params,
                    wait=True))

    def _payloads(self, point_ids: list[str], keys: list[str] | bool, action: str
                  ) -> dict[str, dict]:
        """Point id -> the asked payload keys of the points that exist (retried)."""
        records = self._call(action, lambda: self._client.retrieve(
            self._collection, ids=point_ids, with_payload=keys, with_vectors=False
        ))
        return {str(record.id): dict(record.payload or {}) for record in records}

    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or replace items; a bad item rejects the whole batch before any write.

        A replaced item keeps its popularity: read just before, under this store's
        lock (another engine replica may still race with it, see :meth:`add_popularity`).
        """
        self._check_open()
        prepared = prepare_items(self.schema, items)
        if not prepared:
            return
        with self._write_lock:
            stored = self._payloads([p.point_id for p in prepared], [POPULARITY], "upsert")
            points = [
                models.PointStruct(
                    id=p.point_id,
                    vector={name: client_vector(values) for name, values in p.vectors.items()},
                    payload=p.payload,
                )
                for p in carry_popularity(prepared, stored)
            ]
            self._call("upsert", lambda: self._client.upsert(
                self._collection, points=points, wait=True))

    def set_vectors(self, vectors: Mapping[str, np.ndarray], *, tenant: str, using: str) -> int:
        """Replace the vector ``using`` of existing items (see ``VectorStore``)."""
        self._check_open()
        prepared = prepare_vectors(self.schema, vectors, using)
        by_point = {point_id(tenant, item_id): values for item_id, values in prepared.items()}
        if not by_point:
            return 0
        with self._write_lock:
            present = list(self._payloads(list(by_point), False, "update vectors"))
            if present:
                self._call("update vectors", lambda: self._client.update_vectors(
                    self._collection, points=[
                        models.PointVectors(id=point, vector={using: by_point[point]})
                        for point in present
                    ], wait=True))
        return len(present)

    def add_popularity(self, increments: Mapping[str, float], *, tenant: str) -> int:
        """Add to the popularity of existing items (see ``VectorStore``).

        The read-modify-write is atomic only within this store object (its lock):
        several engine replicas adding to one item on one server can race and lose
        increments. Popularity is a ranking signal, so that is tolerated; route a
        tenant's events to one writer where exact counts matter. The write sets the summed
        value, so repeating it after a lost acknowledgement adds nothing twice.
        """
        self._check_open()
        checked = popularity_increments(increments)
        by_point = {point_id(tenant, item_id): value for item_id, value in checked.items()}
        if not by_point:
            return 0
        with self._write_lock:
            stored = self._payloads(list(by_point), [POPULARITY], "add popularity")
            if stored:
                self._call("add popularity", lambda: self._client.batch_update_points(
                    self._collection, [
                        models.SetPayloadOperation(set_payload=models.SetPayload(
                            payload={POPULARITY: (stored_popularity(p) or 0.0) + by_point[point]},
                            points=[point],
                        ))
                        for point, p in stored.items()
                    ], wait=True))
        return len(stored)

    def hybrid_search(self, query: HybridQuery) -> list[FusedHit]:
        """One Query API request: a prefetch per channel, fused (see ``VectorStore``); with
        batching on, shared with concurrent searches (``engine.store.batched``)."""
        self._check_open()
        return self.searches(query)

    def _search_plans(self, plans: list[HybridPlan]) -> list[list[FusedHit]]:
        """Every plan's sub-requests in one ``query_batch_points`` call; each plan's hits."""
        batches = [hybrid_requests(plan, self._hnsw_ef, self.quantization) for plan in plans]
        responses = self._call("search", lambda: self._client.query_batch_points(
            self._collection, requests=[r for b in batches for r in b]))
        return hits_per_plan(plans, [len(b) for b in batches], [r.points for r in responses])

    def batch_searches(self, *, window_ms: float, max_batch: int) -> None:
        """Concurrent searches share one request from now on (see ``VectorStore``)."""
        self.searches.enable(window_ms=window_ms, max_batch=max_batch)

    def search_batch_sizes(self) -> dict[int, int]:
        """Searches per backend request so far (see ``VectorStore``)."""
        return self.searches.batch_sizes()

    def get(self, ids: Sequence[str], *, tenant: str) -> list[ItemRecord]:
        """The records that exist, in the order asked, each once."""
        self._check_open()
        wanted = unique_in_order(ids)
        if not wanted:
            return []
        records = self._call("retrieve points", lambda: self._client.retrieve(
            self._collection,
            ids=[point_id(tenant, item_id) for item_id in wanted],
            with_payload=True,
            with_vectors=False,
        ))
        found: dict[str, ItemRecord] = {}
        for stored in records:
            if stored.payload and stored.payload.get("tenant") == tenant:
                record = payload_to_record(stored.payload)
                found[record.id] = record
        return [found[item_id] for item_id in wanted if item_id in found]

    def delete(self, ids: Sequence[str], *, tenant: str) -> int:
        """Delete items of ``tenant``; returns how many existed (checked just before)."""
        self._check_open()
        point_ids = [point_id(tenant, item_id) for item_id in unique_in_order(ids)]
        if not point_ids:
            return 0
        present = list(self._payloads(point_ids, False, "delete points"))
        if present:
            self._call("delete points", lambda: self._client.delete(
                self._collection, models.PointIdsList(points=present), wait=True))
        return len(present)

    def vectors(self, ids: Sequence[str], *, tenant: str, using: str) -> dict[str, np.ndarray]:
        """Stored vectors of items on ``using``, normalised (see ``VectorStore``)."""
        self._check_open()
        check_dense_name(self.schema, using)
        by_point = {point_id(tenant, item_id): item_id for item_id in unique_in_order(ids)}
        if not by_point:
            return {}
        records = self._call("retrieve vectors", lambda: self._client.retrieve(
            self._collection, ids=list(by_point), with_payload=False, with_vectors=[using]))
        found = {by_point[str(r.id)]: stored_vector(r.vector, using) for r in records}
        return {i: vector for i in by_point.values() if (vector := found.get(i)) is not None}

    def popular(self, *, tenant: str, filter: ItemFilter, limit: int) -> list[SearchHit]:
        """The most popular items by an ordered scroll on the popularity index."""
        self._check_open()
        limit = check_limit(limit)
        plan = plan_filter(tenant, filter)

        def tied(value: float, count: int) -> list[tuple[str, dict | None]]:
            equal = with_condition(plan, Range(POPULARITY, gte=value, lte=value))
            records, _ = self._call("list popular items", lambda: self._client.scroll(
                self._collection, scroll_filter=client_filter(equal), limit=count,
                with_payload=True,
            ))
            return [(str(r.id), r.payload) for r in records]

        ranked, _ = self._call("list popular items", lambda: self._client.scroll(
            self._collection, scroll_filter=client_filter(plan), limit=limit,
            order_by=models.OrderBy(key=POPULARITY, direction=models.Direction.DESC),
            with_payload=True,
        ))
        return popular_hits([(str(r.id), r.payload) for r in ranked], limit, tied)

    def optimize(self, *, wait: bool = False) -> None:
        """Nothing to do: the Qdrant server builds HNSW indexes in its own background optimizers."""
        self._check_open()
