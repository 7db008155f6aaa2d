"""Hybrid retrieval: one Query API call, a prefetch per channel, fused by RRF or DBSF.

Every channel the encoded query fills (``fused``, each dense channel, the sparse
``lexical`` vector) whose weight is above 0 becomes one prefetch; the request's
filter and tenant apply inside every prefetch (see ``engine.store.hybrid``).
"""

from __future__ import annotations

from engine.config import RetrievalSettings
from engine.domain import (
    ChannelQuery,
    EncodedQuery,
    FusedHit,
    HybridQuery,
    InvalidInput,
    SearchRequest,
)
from engine.store import VectorStore


class HybridRetriever:
    """One Query API call: a prefetch per channel, fused by RRF or DBSF, filters inside each."""

    def __init__(self, store: VectorStore, settings: RetrievalSettings) -> None:
        self.store = store
        self.settings = settings

    def channels(self, query: EncodedQuery, request: SearchRequest, limit: int
                 ) -> list[ChannelQuery]:
        """One prefetch per channel the query fills and whose weight (request over config) > 0."""
        weights = {**self.settings.weights, **request.weights}
        candidates = max(request.candidates or self.settings.candidates, limit)
        channels = [ChannelQuery(name, vector, candidates, weights.get(name, 1.0))
                    for name, vector in query.vectors.items() if weights.get(name, 1.0) > 0]
        if not channels:
            raise InvalidInput("every channel this query could use has weight 0")
        return channels

    def retrieve(self, query: EncodedQuery, request: SearchRequest, limit: int
                 ) -> tuple[list[FusedHit], str, list[str]]:
        """Fused candidates best first, the fusion used, and the channels searched."""
        channels = self.channels(query, request, limit)
        fusion = request.fusion or self.settings.fusion
        hits = self.store.hybrid_search(HybridQuery(
            channels=channels, limit=limit, tenant=request.tenant, fusion=fusion,
            rrf_k=request.rrf_k or self.settings.rrf_k, filter=request.filter,
            with_channel_hits=request.explain))
        return hits, fusion, [c.using for c in channels]
