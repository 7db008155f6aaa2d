"""ServerUserStore: users in a collection of a Qdrant server or cluster, through qdrant-client.

The engine names it after the items' collection (``mmrec_items_users``), so one
server holds both and engine replicas stay stateless. Users are fetched by id,
never searched: the collection is created without an HNSW graph (``m=0``).
Tests run this code path against ``QdrantClient(":memory:")``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence

from qdrant_client import QdrantClient, models

from engine.store.retry import RetryPolicy
from engine.store.server.client import ServerCollection
from engine.store.server.filters import client_tenant_filter
from engine.store.users import (
    USER_KEYS,
    USER_SCROLL_PAGE,
    UserRecord,
    UserStore,
    check_user,
    dims_differences,
    prepare_user,
    records_by_user,
    stored_user,
    user_schema,
)

logger = logging.getLogger(__name__)


def _collection_dims(vectors: object) -> tuple[dict[str, int], list[str]]:
    """The vector sizes of an existing collection, and what about it we cannot use."""
    if not isinstance(vectors, dict):
        return {}, ["the collection has a single unnamed vector, not named vectors"]
    problems = [
        f"vector {name!r} uses {params.distance} distance, not cosine"
        for name, params in vectors.items()
        if params.distance != models.Distance.COSINE
    ]
    return {name: int(params.size) for name, params in vectors.items()}, problems


class ServerUserStore(ServerCollection, UserStore):
    """Users in a Qdrant collection: cosine vectors of ``dims``, keyword indexes on tenant
    and user id.

    Give a URL (a gRPC client is made) or a ready ``QdrantClient``; a client passed
    in is not closed by :meth:`close`. Reopening a collection holding other vector
    sizes is a ``SchemaMismatch``. Every call (reads, whole-user upserts and deletes by
    point id) is safe to repeat, so each is retried by ``retry`` while the server is
    unreachable.
    """

    _kind = "users collection"

    def __init__(
        self,
        url_or_client: str | QdrantClient,
        dims: Mapping[str, int],
        *,
        collection: str,
        api_key: str | None = None,
        placement: dict[str, int] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        schema = user_schema(dims)
        self.dims = dict(schema.dense)
        self._schema = schema
        self._collection = collection
        self._placement = dict(placement or {})
        self._open(url_or_client, api_key, retry)

    def _differences(self, info: models.CollectionInfo) -> list[str]:
        """The vector sizes that differ between the collection and these user vectors."""
        stored, problems = _collection_dims(info.config.params.vectors)
        return problems + dims_differences(stored, self.dims)

    def _mismatch(self, problems: list[str]) -> str:
        return (f"users collection {self._collection} on {self._where} holds other user "
                f"vectors than configured: {'; '.join(problems)}. The users' vectors follow "
                f"the item vectors' configuration: restore the configuration they were made "
                f"with, or delete the collection to start the users over (profiles are lost)")

    def _create_collection(self) -> None:
        """Cosine vectors without an HNSW graph, keyword indexes on tenant and user id."""
        self._client.create_collection(
            self._collection,
            vectors_config={
                name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                for name, size in self.dims.items()
            },
            hnsw_config=models.HnswConfigDiff(m=0),
            shard_number=self._placement.get("shard_number"),
            replication_factor=self._placement.get("replication_factor"),
        )
        for field in USER_KEYS:
            params = models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=field == "tenant"
            )
            self._client.create_payload_index(self._collection, field, params, wait=True)
        logger.info("created users collection %s on %s", self._collection, self._where)

    def get_many(self, user_ids: Sequence[str], *, tenant: str) -> dict[str, UserRecord]:
        """The records of those users that exist, by user id (one retrieve)."""
        self._check_open()
        wanted = [check_user(tenant, user_id) for user_id in dict.fromkeys(user_ids)]
        if not wanted:
            return {}
        records = self._call("read users", lambda: self._client.retrieve(
            self._collection, ids=wanted, with_payload=True, with_vectors=True))
        return records_by_user(((r.payload, r.vector) for r in records), tenant, user_ids)

    def put_many(self, records: Sequence[UserRecord]) -> None:
        """Insert or replace whole users in one upsert."""
        self._check_open()
        prepared = [prepare_user(self._schema, record) for record in records]
        if not prepared:
            return
        points = [models.PointStruct(id=p.point_id, vector=dict(p.vectors), payload=p.payload)
                  for p in prepared]
        self._call("write users", lambda: self._client.upsert(
            self._collection, points=points, wait=True))

    def delete(self, user_id: str, *, tenant: str) -> bool:
        """Erase the user's point; ``True`` if it existed (checked just before)."""
        self._check_open()
        point = check_user(tenant, user_id)
        if not self._call("delete a user", lambda: self._client.retrieve(
                self._collection, ids=[point], with_payload=False, with_vectors=False)):
            return False
        self._call("delete a user", lambda: self._client.delete(
            self._collection, models.PointIdsList(points=[point]), wait=True))
        return True

    def users(self, tenant: str | None = None) -> Iterator[UserRecord]:
        """Every user (or one tenant's), a page per request, by point id."""
        condition = None if tenant is None else client_tenant_filter(tenant)
        offset = None
        while True:
            self._check_open()
            page, offset = self._call("list users", functools.partial(
                self._client.scroll, self._collection, scroll_filter=condition,
                limit=USER_SCROLL_PAGE, offset=offset, with_payload=True, with_vectors=True,
            ))
            for stored in page:
                record = stored_user(stored.payload, stored.vector)
                if record is not None:
                    yield record
            if offset is None:
                return
