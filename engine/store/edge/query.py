"""qdrant-edge requests for a hybrid plan: vectors, prefetches, fusion, the per-channel batch.

The backend-neutral planning is in ``engine.store.hybrid``; this module only
spells a :class:`~engine.store.hybrid.HybridPlan` in qdrant-edge types, the way
``ServerStore`` spells it in qdrant-client types.
"""

from __future__ import annotations

from qdrant_edge import (
    Direction,
    Filter,
    Fusion,
    IdfParams,
    OrderBy,
    Prefetch,
    QuantizationSearchParams,
    Query,
    QueryRequest,
    RecommendQuery,
    SearchParams,
    SparseVector,
)

from engine.domain import POPULARITY
from engine.store.edge.filters import edge_filter, edge_tenant_filter
from engine.store.hybrid import ChannelPlan, HybridPlan, RecommendValues
from engine.store.schema import Quantization, SparseValues, VectorValues


def edge_vector(values: VectorValues) -> list[float] | SparseVector:
    """A validated vector in qdrant-edge form."""
    if isinstance(values, SparseValues):
        return SparseVector(values.indices, values.values)
    return values


def _params(
    plan: HybridPlan, channel: ChannelPlan, hnsw_ef: int, quantization: Quantization
) -> SearchParams:
    """Search params of one channel: ``hnsw_ef`` and, if dense, the quantization's
    oversampling and rescoring; the tenant as IDF corpus if sparse."""
    if not channel.sparse:
        if not quantization.enabled:
            return SearchParams(hnsw_ef=hnsw_ef)
        rescoring = QuantizationSearchParams(rescore=quantization.rescore,
                                             oversampling=quantization.oversampling)
        return SearchParams(hnsw_ef=hnsw_ef, quantization=rescoring)
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


def _nearest(
    plan: HybridPlan, hnsw_ef: int, quantization: Quantization
) -> list[tuple[Query, int, SearchParams]]:
    """Each channel's query (nearest or recommend), candidate limit and search params."""
    return [(_query(c), c.limit, _params(plan, c, hnsw_ef, quantization))
            for c in plan.channels]


def _by_popularity() -> OrderBy:
    """Qdrant's ``order_by`` on the popularity payload field, most popular first."""
    return OrderBy(POPULARITY, Direction.Desc)


def _popularity_fused(
    plan: HybridPlan, flt: Filter, prefetches: list[Prefetch], fusion: Fusion.Rrf | Fusion.Dbsf
) -> tuple[QueryRequest, QueryRequest]:
    """The request fusing the candidates (A) with their popularity ranking (B), and B alone.

    A is the channels' fusion (or the one channel's prefetch), B the same A ordered
    by popularity; the outer RRF weighs them ``plan.popularity_weights``."""
    limit = plan.candidate_limit
    matches = prefetches[0] if not plan.fused else Prefetch(
        limit=limit, prefetches=prefetches, filter=flt,
        query=fusion,  # type: ignore[arg-type]  # why: qdrant-edge's stub gives Fusion's variants no base
    )
    popular = Prefetch(limit=limit, prefetches=[matches], query=_by_popularity(), filter=flt)
    outer = Fusion.Rrf(k=plan.rrf_k, weights=plan.popularity_weights)
    fused = QueryRequest(
        limit=plan.result_limit,
        prefetches=[matches, popular],
        query=outer,  # type: ignore[arg-type]  # why: qdrant-edge's stub gives Rrf no base
        filter=flt,
        with_payload=True,
    )
    ranking = QueryRequest(limit=limit, prefetches=[matches], query=_by_popularity(), filter=flt)
    return fused, ranking


def hybrid_requests(
    plan: HybridPlan, hnsw_ef: int, quantization: Quantization | None = None
) -> list[QueryRequest]:
    """The batch for ``query_batch``: the fused request first, then (if asked, and the plan
    is not one plain nearest search) each channel's own nearest request with the same
    filter and limit, and the popularity ranking if the plan has one."""
    flt = edge_filter(plan.filter)
    channels = _nearest(plan, hnsw_ef, quantization or Quantization())
    if plan.plain:
        ((nearest, _, params),) = channels
        return [QueryRequest(
            limit=plan.result_limit, query=nearest, filter=flt, params=params, with_payload=True,
        )]
    fusion = Fusion.Rrf(k=plan.rrf_k, weights=plan.weights) if plan.fusion == "rrf" else (
        Fusion.Dbsf()
    )
    prefetches = [
        Prefetch(limit=limit, query=nearest, filter=flt, params=params)
        for nearest, limit, params in channels
    ]
    own = [  # each channel's own ranking, only for explanations
        QueryRequest(limit=limit, query=nearest, filter=flt, params=params)
        for nearest, limit, params in channels
    ] if plan.with_channel_hits else []
    if plan.popularity:
        fused, ranking = _popularity_fused(plan, flt, prefetches, fusion)
        return [fused, *own, ranking] if plan.with_channel_hits else [fused]
    fused = QueryRequest(
        limit=plan.limit,
        prefetches=prefetches,
        # Fusion.Rrf and Fusion.Dbsf are pyo3 enum variants, subclasses of Fusion at run time.
        query=fusion,  # type: ignore[arg-type]  # why: qdrant-edge's stub gives them no base
        filter=flt,
        with_payload=True,
    )
    return [fused, *own]
