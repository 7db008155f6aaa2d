"""The search pipeline: encode the query -> hybrid retrieval -> LLM re-rank -> explain.

Each stage is a small class with one job; :class:`SearchPipeline` chains them
under one time budget. Data flows one way: the service builds a
:class:`SearchRequest`, this module calls the vectoriser, the retriever and the
re-rank stage. The vectoriser also says which query channels repeat another, and
its lexical encoder which codes the query names, so the retriever can search each
signal once and put exact identifiers first (``engine.search.retriever``).
"""

from __future__ import annotations

from engine.domain import SearchRequest, SearchResult
from engine.domain.timing import StageTimer
from engine.encoders.vectoriser import Vectoriser
from engine.rerank.explain import Explainer
from engine.rerank.stage import RerankQuery, RerankStage, search_hits
from engine.search.retriever import HybridRetriever


class SearchPipeline:
    """Encode -> retrieve -> re-rank -> explain, under one budget."""

    def __init__(self, vectoriser: Vectoriser, retriever: HybridRetriever, rerank: RerankStage,
                 explainer: Explainer) -> None:
        self.vectoriser, self.retriever = vectoriser, retriever
        self.rerank, self.explainer = rerank, explainer

    def search(self, request: SearchRequest) -> SearchResult:
        """Run every stage; the re-ranker and reasons stop at the budget, never the search.

        Each stage's wall time goes into ``SearchResult.stage_ms``.
        """
        timer = StageTimer()
        with timer.stage("encode"):
            encoded = self.vectoriser.query(request.text, request.image,
                                            deadline=request.deadline)
        rerank = self.rerank.wanted(request, has_query=bool(request.text))
        limit = self.rerank.pool_size(request, rerank=rerank)
        with timer.stage("retrieve"):
            hits, fusion, channels = self.retriever.retrieve(
                encoded, request, limit, duplicates=self.vectoriser.duplicates(encoded),
                identifiers=self.vectoriser.lexical)
        with timer.stage("rerank"):
            ranked = self.rerank.apply(hits, RerankQuery(text=request.text), request,
                                       rerank=rerank)
        items = ranked.items[:request.top_k]
        explanations = None
        if request.explain:
            with timer.stage("explain"):
                explanations = self.explainer.explain(request.text, items,
                                                      with_reason=request.explain_reason,
                                                      deadline=ranked.deadline)
        return SearchResult(hits=search_hits(items), channels=channels, fusion=fusion,
                            reranked=ranked.reranked, budget_exhausted=ranked.budget_exhausted,
                            explanations=explanations, stage_ms=timer.ms)
