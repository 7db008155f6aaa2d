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
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from engine.errors import FailedPrecondition, SchemaMismatch, Unavailable
from engine.query import FusedHit, HybridQuery
from engine.store.base import (
    KEYWORD_INDEXED_FIELDS,
    SparseValues,
    VectorSchema,
    VectorStore,
    VectorValues,
    payload_to_record,
    prepare_items,
    unique_in_order,
)
from engine.store.filters import client_filter, client_tenant_filter
from engine.store.hybrid import ChannelPlan, HybridPlan, fused_hits, plan_hybrid
from engine.types import ItemRecord, StoredItem, point_id

logger = logging.getLogger(__name__)

_CLIENT_ERRORS = (UnexpectedResponse, ResponseHandlingException, grpc.RpcError, ConnectionError)


@contextlib.contextmanager
def _server_errors(action: str) -> Iterator[None]:
    """Turn transport and server errors into ``Unavailable`` (retrying may help)."""
    try:
        yield
    except _CLIENT_ERRORS as exc:
        raise Unavailable(f"qdrant server failed to {action}: {exc}") from exc


def _client_vector(values: VectorValues) -> list[float] | models.SparseVector:
    """A validated vector in qdrant-client form."""
    if isinstance(values, SparseValues):
        return models.SparseVector(indices=values.indices, values=values.values)
    return values


def _collection_schema(
    vectors: object, sparse: object
) -> tuple[VectorSchema | None, list[str]]:
    """The schema of an existing collection's vectors config, and what about it we cannot use."""
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
    schema = VectorSchema({name: params.size for name, params in vectors.items()}, tuple(sparse))
    return schema, problems


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
        params = info.config.params
        existing, problems = _collection_schema(params.vectors, params.sparse_vectors)
        if existing is not None:
            problems += existing.differences(self.schema)
        if problems:
            raise SchemaMismatch(
                f"collection {self._collection} on {self._where} was indexed with other "
                f"vectors than configured: {'; '.join(problems)}. Re-index the catalog into "
                f"it from scratch (delete the collection first) or choose another collection"
            )

    def _create_collection(self) -> None:
        """Cosine dense and IDF sparse vectors from the schema, keyword payload indexes."""
        self._client.create_collection(
            self._collection,
            vectors_config={
                name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                for name, size in self.schema.dense.items()
            },
            sparse_vectors_config={
                name: models.SparseVectorParams(modifier=models.Modifier.IDF)
                for name in self.schema.sparse
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
            models.PointStruct(
                id=p.point_id,
                vector={name: _client_vector(values) for name, values in p.vectors.items()},
                payload=p.payload,
            )
            for p in prepare_items(self.schema, items)
        ]
        if points:
            with _server_errors("upsert"):
                self._client.upsert(self._collection, points=points, wait=True)

    def _params(self, plan: HybridPlan, channel: ChannelPlan) -> models.SearchParams:
        """Search params of one channel: ``hnsw_ef``, and the tenant as IDF corpus if sparse."""
        if not channel.sparse:
            return self._search_params
        corpus = client_tenant_filter(plan.filter.tenant)
        return models.SearchParams(
            hnsw_ef=self._search_params.hnsw_ef, idf=models.IdfCorpusParams(corpus=corpus)
        )

    def _requests(self, plan: HybridPlan) -> list[models.QueryRequest]:
        """The fused request, then (if asked, several channels) each channel's own request."""
        flt = client_filter(plan.filter)
        nearest = [
            models.QueryRequest(
                query=_client_vector(c.vector), using=c.using, limit=c.limit, filter=flt,
                params=self._params(plan, c),
            )
            for c in plan.channels
        ]
        if not plan.fused:
            return [nearest[0].model_copy(
                update={"limit": plan.result_limit, "with_payload": True}
            )]
        fusion: models.Query = models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k, weights=plan.weights))
        if plan.fusion == "dbsf":
            fusion = models.FusionQuery(fusion=models.Fusion.DBSF)
        fused = models.QueryRequest(
            prefetch=[
                models.Prefetch(
                    query=r.query, using=r.using, limit=r.limit, filter=flt, params=r.params
                )
                for r in nearest
            ],
            query=fusion, limit=plan.limit, filter=flt, with_payload=True,
        )
        return [fused, *nearest] if plan.with_channel_hits else [fused]

    def hybrid_search(self, query: HybridQuery) -> list[FusedHit]:
        """One Query API request: a prefetch per channel, fused (see ``VectorStore``)."""
        self._check_open()
        plan = plan_hybrid(self.schema, query)
        if plan is None:
            return []
        with _server_errors("search"):
            responses = self._client.query_batch_points(
                self._collection, requests=self._requests(plan)
            )
        points = [(str(p.id), p.payload, p.score) for p in responses[0].points]
        rankings = [[(str(p.id), p.score) for p in r.points] for r in responses[1:]]
        return fused_hits(plan, points, rankings or None)

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
                count_filter=None if tenant is None else client_tenant_filter(tenant),
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
