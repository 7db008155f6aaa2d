"""Where items and their vectors live: the ``VectorStore`` interface and its two backends.

``EdgeStore`` (default) embeds a qdrant-edge shard in the engine process;
``ServerStore`` talks to a Qdrant server or cluster. Both answer
``hybrid_search(engine.query.HybridQuery)`` with one Query API request (a prefetch
per channel, RRF or DBSF, payload filters) and hold dense and sparse (BM25, IDF)
vectors. Qdrant types stop here: callers see only ``engine.types`` /
``engine.query`` objects and ``engine.errors`` exceptions.
"""

from __future__ import annotations

from engine.config import StoreSettings
from engine.store.base import VectorSchema, VectorStore
from engine.store.edge import EdgeStore
from engine.store.server import ServerStore

__all__ = ["EdgeStore", "ServerStore", "VectorSchema", "VectorStore", "open_store"]


def open_store(settings: StoreSettings, schema: VectorSchema) -> VectorStore:
    """The store the settings name: a Qdrant server when ``url`` is set, else the data dir."""
    if settings.url is None:
        return EdgeStore(settings.data_dir, schema, hnsw_ef=settings.hnsw_ef)
    return ServerStore(
        settings.url,
        schema,
        collection=settings.collection,
        api_key=settings.api_key,
        hnsw_ef=settings.hnsw_ef,
    )
