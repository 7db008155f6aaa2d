"""qdrant-edge requests for a hybrid plan: vectors, prefetches, fusion, the per-channel batch.

The backend-neutral planning is in ``engine.store.hybrid``; this module only
spells a :class:`~engine.store.hybrid.HybridPlan` in qdrant-edge types, the way
``ServerStore`` spells it in qdrant-client types.
"""

from __future__ import annotations

from qdrant_edge import (
    Fusion,
    IdfParams,
    Prefetch,
    Query,
    QueryRequest,
    RecommendQuery,
    SearchParams,
    SparseVector,
)

from engine.store.edge.filters import edge_filter, edge_tenant_filter
from engine.store.hybrid import ChannelPlan, HybridPlan, RecommendValues
from engine.store.schema import SparseValues, VectorValues


def edge_vector(values: VectorValues) -> list[float] | SparseVector:
    """A validated vector in qdrant-edge form."""
    if isinstance(values, SparseValues):
        return SparseVector(values.indices, values.values)
    return values


def _params(plan: HybridPlan, channel: ChannelPlan, hnsw_ef: int) -> SearchParams:
    """Search params of one channel: ``hnsw_ef``, and the tenant as IDF corpus if sparse."""
    if not channel.sparse:
        return SearchParams(hnsw_ef=hnsw_ef)
    corpus = edge_tenant_filter(plan.filter.tenant)
    return SearchParams(hnsw_ef=hnsw_ef, idf=IdfParams(corpus=corpus))


def _query(channel: ChannelPlan) -> Query:
    """A channel's query: nearest to its vector, or recommend from its examples."""
    if isinstance(channel.vector, RecommendValues):
        # Fresh lists: RecommendQuery takes List[NamedVector], which a list[list[float]]
        # is not to a type checker (lists are invariant).
        examples = RecommendQuery(
            positives=list(channel.vector.positives), negatives=list(channel.vector.negatives)
        )
        if channel.vector.strategy == "sum_scores":
            return Query.RecommendSumScores(examples, using=channel.using)
        return Query.RecommendBestScore(examples, using=channel.using)
    return Query.Nearest(edge_vector(channel.vector), using=channel.using)


def _nearest(plan: HybridPlan, hnsw_ef: int) -> list[tuple[Query, int, SearchParams]]:
    """Each channel's query (nearest or recommend), candidate limit and search params."""
    return [(_query(c), c.limit, _params(plan, c, hnsw_ef)) for c in plan.channels]


def hybrid_requests(plan: HybridPlan, hnsw_ef: int) -> list[QueryRequest]:
    """The batch for ``query_batch``: the fused request first, then (if asked and there are
    several channels) each channel's own nearest request with the same filter and limit."""
    flt = edge_filter(plan.filter)
    channels = _nearest(plan, hnsw_ef)
    if not plan.fused:
        ((nearest, _, params),) = channels
        return [QueryRequest(
            limit=plan.result_limit, query=nearest, filter=flt, params=params, with_payload=True,
        )]
    fusion = Fusion.Rrf(k=plan.rrf_k, weights=plan.weights) if plan.fusion == "rrf" else (
        Fusion.Dbsf()
    )
    fused = QueryRequest(
        limit=plan.limit,
        prefetches=[
            Prefetch(limit=limit, query=nearest, filter=flt, params=params)
            for nearest, limit, params in channels
        ],
        # Fusion.Rrf and Fusion.Dbsf are pyo3 enum variants, subclasses of Fusion at run time.
        query=fusion,  # type: ignore[arg-type]  # why: qdrant-edge's stub gives them no base
        filter=flt,
        with_payload=True,
    )
    if not plan.with_channel_hits:
        return [fused]
    return [fused, *(
        QueryRequest(limit=limit, query=nearest, filter=flt, params=params)
        for nearest, limit, params in channels
    )]
