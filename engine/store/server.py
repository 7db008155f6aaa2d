"""ServerStore: items in a collection of a Qdrant server or cluster, through qdrant-client.

For deployments that outgrow one machine: Qdrant shards and replicates the
collection, and engine replicas stay stateless. The server builds its HNSW
indexes itself, in the background, so ``optimize()`` and ``flush()`` have
nothing to do. Tests run this code path against ``QdrantClient(":memory:")``
(brute force, small data only, not thread-safe) and against a real server when
``QDRANT_URL`` is set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from engine.errors import FailedPrecondition, SchemaMismatch, Unavailable
from engine.store.base import (
    KEYWORD_INDEXED_FIELDS,
    VectorSchema,
    VectorStore,
    check_limit,
    payload_to_record,
    prepare_items,
    search_hit,
    unique_in_order,
    vector_values,
)
from engine.types import ItemRecord, SearchHit, StoredItem, point_id

logger = logging.getLogger(__name__)

_CLIENT_ERRORS = (UnexpectedResponse, ResponseHandlingException, grpc.RpcError, ConnectionError)


@contextlib.contextmanager
def _server_errors(action: str) -> Iterator[None]:
    """Turn transport and server errors into ``Unavailable`` (retrying may help)."""
    try:
        yield
    except _CLIENT_ERRORS as exc:
        raise Unavailable(f"qdrant server failed to {action}: {exc}") from exc


def _tenant_filter(tenant: str) -> models.Filter:
    """Only points whose payload tenant equals ``tenant``."""
    return models.Filter(
        must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
    )


def _collection_schema(vectors: object) -> tuple[VectorSchema | None, list[str]]:
    """The schema of an existing collection's vectors config, and what about it we cannot use."""
    if not isinstance(vectors, dict):
        return None, ["the collection has a single unnamed vector, not named vectors"]
    problems = [
        f"vector {name!r} uses {params.distance} distance, not cosine"
        for name, params in vectors.items()
        if params.distance != models.Distance.COSINE
    ]
    if not vectors:
        return None, ["the collection has no dense vectors"]
    return VectorSchema({name: params.size for name, params in vectors.items()}), problems


class ServerStore(VectorStore):
    """A Qdrant collection of cosine named vectors plus keyword indexes on tenant and item id.

    Give a URL (a gRPC client is made, ``prefer_grpc=True``) or a ready
    ``QdrantClient``; a client passed in is not closed by :meth:`close`, its
    owner closes it.
    """

    def __init__(
        self,
        url_or_client: str | QdrantClient,
        schema: VectorSchema,
        *,
        collection: str = "mmrec_items",
        api_key: str | None = None,
        hnsw_ef: int = 128,
    ) -> None:
        self.schema = schema
        self._collection = collection
        self._search_params = models.SearchParams(hnsw_ef=hnsw_ef)
        self._closed = False
        if isinstance(url_or_client, QdrantClient):
            self._client, self._owns_client = url_or_client, False
            options = getattr(url_or_client, "init_options", {}) or {}
            self._where = str(options.get("url") or options.get("location") or "client")
        else:
            self._client = QdrantClient(url=url_or_client, prefer_grpc=True, api_key=api_key)
            self._owns_client, self._where = True, url_or_client
        try:
            self._ensure_collection()
        except BaseException:
            self.close()
            raise
        logger.info("opened %s", self.description)

    def _ensure_collection(self) -> None:
        """Create the collection if missing, else check it holds this schema's vectors."""
        with _server_errors(f"open collection {self._collection}"):
            if not self._client.collection_exists(self._collection):
                self._create_collection()
                return
            info = self._client.get_collection(self._collection)
        existing, problems = _collection_schema(info.config.params.vectors)
        if existing is not None:
            problems += existing.differences(self.schema)
        if problems:
            raise SchemaMismatch(
                f"collection {self._collection} on {self._where} was indexed with other "
                f"vectors than configured: {'; '.join(problems)}. Re-index the catalog into "
                f"it from scratch (delete the collection first) or choose another collection"
            )

    def _create_collection(self) -> None:
        """Cosine named vectors from the schema, keyword payload indexes."""
        self._client.create_collection(
            self._collection,
            vectors_config={
                name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                for name, size in self.schema.dense.items()
            },
        )
        for field in KEYWORD_INDEXED_FIELDS:
            params = models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=field == "tenant"
            )
            self._client.create_payload_index(self._collection, field, params, wait=True)
        logger.info("created collection %s on %s", self._collection, self._where)

    def _check_open(self) -> None:
        """Refuse calls after :meth:`close`."""
        if self._closed:
            raise FailedPrecondition(f"the store for collection {self._collection} is closed")

    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or replace items; a bad item rejects the whole batch before any write."""
        self._check_open()
        points = [
            models.PointStruct(id=p.point_id, vector=p.vectors, payload=p.payload)
            for p in prepare_items(self.schema, items)
        ]
        if points:
            with _server_errors("upsert"):
                self._client.upsert(self._collection, points=points, wait=True)

    def search(
        self, vector: np.ndarray, *, using: str, limit: int, tenant: str
    ) -> list[SearchHit]:
        """The nearest items of ``tenant`` by cosine on ``using``, best first."""
        self._check_open()
        values, limit = vector_values(self.schema, using, vector), check_limit(limit)
        with _server_errors("search"):
            response = self._client.query_points(
                self._collection,
                query=values,
                using=using,
                query_filter=_tenant_filter(tenant),
                limit=limit,
                with_payload=True,
                search_params=self._search_params,
            )
        return [
            hit for point in response.points if (hit := search_hit(point.payload, point.score))
        ]

    def get(self, ids: Sequence[str], *, tenant: str) -> list[ItemRecord]:
        """The records that exist, in the order asked, each once."""
        self._check_open()
        wanted = unique_in_order(ids)
        if not wanted:
            return []
        with _server_errors("retrieve points"):
            records = self._client.retrieve(
                self._collection,
                ids=[point_id(tenant, item_id) for item_id in wanted],
                with_payload=True,
                with_vectors=False,
            )
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
        with _server_errors("delete points"):
            existing = self._client.retrieve(
                self._collection, ids=point_ids, with_payload=False, with_vectors=False
            )
            present = [str(stored.id) for stored in existing]
            if present:
                self._client.delete(
                    self._collection, models.PointIdsList(points=present), wait=True
                )
        return len(present)

    def count(self, tenant: str | None = None) -> int:
        """All points, or one tenant's (exact count)."""
        self._check_open()
        with _server_errors("count"):
            result = self._client.count(
                self._collection,
                count_filter=None if tenant is None else _tenant_filter(tenant),
                exact=True,
            )
        return int(result.count)

    def optimize(self, *, wait: bool = False) -> None:
        """Nothing to do: the Qdrant server builds HNSW indexes in its own background optimizers."""
        self._check_open()

    def flush(self) -> None:
        """Nothing to do: the server acknowledges a write (``wait=True``) once its WAL has it."""
        self._check_open()

    def close(self) -> None:
        """Close the client if this store made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()

    @property
    def description(self) -> str:
        """One line for ``mmrec info``."""
        return f"qdrant server {self._where}, collection {self._collection}"
