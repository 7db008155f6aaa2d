"""Where items, users and their vectors live: the store interfaces and their two backends.

``EdgeStore`` (default) embeds a qdrant-edge shard in the engine process;
``ServerStore`` talks to a Qdrant server or cluster. Both answer
``hybrid_search(engine.domain.HybridQuery)`` with one Query API request (a prefetch
per channel, nearest or recommend, RRF or DBSF, payload filters), hold dense and
sparse (BM25, IDF) vectors, and keep each item's popularity. Users live beside
the items: ``EdgeUserStore`` (a shard in ``DATA_DIR/users``) or ``ServerUserStore``
(a collection named after the items'). Qdrant types stop here: callers see only
``engine.domain`` objects and exceptions, and :class:`UserRecord`.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.config import StoreSettings
from engine.store.base import VectorSchema, VectorStore
from engine.store.edge.store import EdgeStore
from engine.store.edge.users import EdgeUserStore
from engine.store.retry import RetryPolicy
from engine.store.schema import Quantization
from engine.store.server.store import ServerStore
from engine.store.server.users import ServerUserStore
from engine.store.users import UserRecord, UserStore

__all__ = [
    "USERS_DIR",
    "EdgeStore",
    "EdgeUserStore",
    "Quantization",
    "ServerStore",
    "ServerUserStore",
    "UserRecord",
    "UserStore",
    "VectorSchema",
    "VectorStore",
    "open_store",
    "open_user_store",
    "quantization",
    "users_collection",
]

USERS_DIR = "users"
"""The folder of the data dir that holds the users shard (the items' EdgeStore leaves it be)."""


def open_store(settings: StoreSettings, schema: VectorSchema) -> VectorStore:
    """The store the settings name: a Qdrant server when ``url`` is set, else the data dir."""
    if settings.url is None:
        return EdgeStore(settings.data_dir, schema, hnsw_ef=settings.hnsw_ef,
                         quantization=quantization(settings))
    return ServerStore(
        settings.url,
        schema,
        collection=settings.collection,
        api_key=settings.api_key,
        hnsw_ef=settings.hnsw_ef,
        quantization=quantization(settings),
        placement=placement(settings),
        retry=RetryPolicy.from_settings(settings),
    )


def quantization(settings: StoreSettings) -> Quantization:
    """The items store's quantization as ``[store]`` sets it (the users store has none)."""
    return Quantization(settings.quantization, settings.quantization_oversampling,
                        settings.quantization_rescore)


def users_collection(items_collection: str) -> str:
    """The server collection of the users beside an items collection."""
    return f"{items_collection}_users"


def open_user_store(settings: StoreSettings, dims: Mapping[str, int]) -> UserStore:
    """The users store beside the items store the settings name (see :func:`open_store`)."""
    if settings.url is None:
        return EdgeUserStore(settings.data_dir / USERS_DIR, dims)
    return ServerUserStore(
        settings.url, dims, collection=users_collection(settings.collection),
        api_key=settings.api_key, placement=placement(settings),
        retry=RetryPolicy.from_settings(settings),
    )


def placement(settings: StoreSettings) -> dict[str, int]:
    """The shard count and replication factor set for collections mmrec creates on a server."""
    return {key: value for key in ("shard_number", "replication_factor")
            if (value := getattr(settings, key)) is not None}
