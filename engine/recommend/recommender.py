"""Recommendations from behaviour: history -> channels -> one fused query -> LLM -> MMR.

For a user (their recorded profile) and/or explicit positive and negative
items, :class:`engine.recommend.channels.RecommendChannels` builds a query per
channel (behaviour, co-occurrence, content, context). All of them go to the
store in one Query API call (RRF or DBSF) with the request's filter and the
seen items excluded. With no history the user gets the popular items within
the filter or, with context text, one query whose RRF fuses the context's
matches with those same matches ranked by popularity
(``HybridQuery.popularity_weight``). The top candidates may be re-scored by the
LLM given the recent history's titles (LlamaRec's idea), under the same budget
rules as search (:class:`engine.rerank.stage.RerankStage`), and the final list
may be diversified by maximal marginal relevance. Explanations name the history
items behind each result, by id and title, and say why in one sentence.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.behaviour import CooccurrenceModel
from engine.config import RecommendSettings
from engine.domain import (
    BEHAVIOUR_CHANNELS,
    COOCCURRENCE,
    POPULARITY,
    STRATEGIES,
    ChannelQuery,
    Explanation,
    FusedHit,
    Fusion,
    HybridQuery,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    RankedItem,
    RecommendRequest,
    RecommendResult,
)
from engine.domain.timing import StageTimer
from engine.recommend.channels import Examples, RecommendChannels
from engine.recommend.diversity import mmr_order
from engine.recommend.profiles import ProfileBook
from engine.rerank.explain import Explainer
from engine.rerank.stage import RerankQuery, RerankStage, search_hits
from engine.store import VectorStore

_HISTORY_ITEMS = 20
"""Recent history items handed to the re-ranker (its prompt shows what fits its budget)."""
_BECAUSE_OF = 3


class Recommender:
    """Builds the channels from history, runs one fused query, re-ranks, diversifies, explains."""

    def __init__(self, channels: RecommendChannels, rerank: RerankStage, explainer: Explainer,
                 settings: RecommendSettings) -> None:
        self.channels, self.rerank, self.explainer = channels, rerank, explainer
        self.settings = settings
        self.tenant_rerank: dict[str, RerankStage] = {}
        """Stages that serve one tenant only (a trained re-ranker learned one tenant's log);
        every other tenant gets ``rerank``."""

    def rerank_for(self, tenant: str) -> RerankStage:
        """The re-rank stage ``tenant``'s requests go through."""
        return self.tenant_rerank.get(tenant, self.rerank)

    def settings_for(self, tenant: str) -> RecommendSettings:
        """The settings ``tenant``'s requests start from (its tuned fusion, when it has one)."""
        return self.channels.settings_for(tenant)

    @property
    def store(self) -> VectorStore:
        """The items store (the channels' own, so swapping it there rewires both)."""
        return self.channels.store

    @property
    def profiles(self) -> ProfileBook:
        """The user profiles the channels read."""
        return self.channels.profiles

    def examples(self, request: RecommendRequest) -> Examples:
        """The user's history plus the explicit items (explicit ones count as newest)."""
        profile = (self.profiles.get(request.user_id, tenant=request.tenant)
                   if request.user_id else None)
        weights = self.profiles.weights
        positives = profile.positives(weights) if profile else []
        negatives = profile.negatives(weights) if profile else []
        positives = [p for p in positives if p not in request.positive_ids]
        positives += list(dict.fromkeys(request.positive_ids))
        negatives = list(dict.fromkeys([*negatives, *request.negative_ids]))
        seen = list(dict.fromkeys([*(profile.seen if profile else ()), *request.positive_ids,
                                   *request.negative_ids]))
        return Examples(profile, positives, negatives, seen)

    def recommend(self, request: RecommendRequest) -> RecommendResult:
        """Run every stage; LLM re-ranking stops at the budget, never the recommendation.

        Each stage's wall time goes into ``RecommendResult.stage_ms``.
        """
        settings = self.settings_for(request.tenant)
        strategy = request.strategy or settings.strategy
        if strategy not in STRATEGIES:
            raise InvalidInput(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        if not request.user_id and not request.positive_ids and not request.context:
            raise InvalidInput("a recommendation needs a user_id, positive_ids or context text")
        timer = StageTimer()
        with timer.stage("profile"):
            examples = self.examples(request)
        item_filter = self._unseen(request, examples)
        stage = self.rerank_for(request.tenant)
        rerank = stage.wanted(request, has_query=bool(examples.positives))
        limit = stage.pool_size(request, rerank=rerank)
        if request.diversity is not None:
            limit = max(limit, 3 * request.top_k)
        fusion = request.fusion or settings.fusion
        with timer.stage("encode"):
            channels = (self.channels.build(examples, request, strategy, limit)
                        if examples.positives or examples.negatives else [])
        history_channels = (*BEHAVIOUR_CHANNELS, settings.content_vector)
        has_history = any(c.using in history_channels for c in channels)
        with timer.stage("retrieve"):
            if has_history:
                hits, names = self._fused(channels, request, item_filter, limit, fusion)
            else:
                hits, names = self._popular(request, item_filter, limit)
        with timer.stage("rerank"):
            query = self._rerank_query(examples, request) if rerank else RerankQuery()
            ranked = stage.apply(hits, query, request, rerank=rerank)
        items = ranked.items
        if request.diversity is not None and len(items) > 1:
            with timer.stage("diversify"):
                items = self._diversify(items, request)
        items = items[:request.top_k]
        explanations = None
        if request.explain:
            with timer.stage("explain"):
                explanations = self._explain(items, examples, request, ranked.deadline)
        return RecommendResult(hits=search_hits(items), channels=names, fusion=fusion,
                               strategy=strategy, cold_start=not has_history,
                               reranked=ranked.reranked,
                               budget_exhausted=ranked.budget_exhausted,
                               explanations=explanations, stage_ms=timer.ms)

    def _fused(self, channels: list[ChannelQuery], request: RecommendRequest,
               item_filter: ItemFilter, limit: int, fusion: Fusion
               ) -> tuple[list[FusedHit], list[str]]:
        """The history's channels in one fused store query, topped up with popular items."""
        hits = self.store.hybrid_search(HybridQuery(
            channels=channels, limit=limit, tenant=request.tenant, fusion=fusion,
            rrf_k=request.rrf_k or self.settings_for(request.tenant).rrf_k, filter=item_filter,
            with_channel_hits=request.explain))
        names = [c.using for c in channels]
        if len(hits) < limit:
            hits, filled = self._fill(hits, request, item_filter, limit)
            names += [POPULARITY] if filled else []
        return hits, names

    def _unseen(self, request: RecommendRequest, examples: Examples) -> ItemFilter:
        """The request's filter, with the seen items excluded unless asked to keep them."""
        include_seen = (self.settings.include_seen if request.include_seen is None
                        else request.include_seen)
        if include_seen or not examples.seen:
            return request.filter
        return replace(request.filter, exclude_ids=tuple(dict.fromkeys(
            [*request.filter.exclude_ids, *examples.seen])))

    def _popular(self, request: RecommendRequest, item_filter: ItemFilter, limit: int
                 ) -> tuple[list[FusedHit], list[str]]:
        """Cold start: popular items in the filter; with context, popular among its matches.

        With context it is one store query: the context channels' fused matches (the top
        ``max(limit, candidates)``) and those same matches ranked by popularity, fused by
        RRF; popular items that do not match the context never come in.
        """
        channels = []
        settings = self.settings_for(request.tenant)
        if request.context:  # its channels that are on (a weight of 0 switches one off)
            encoded = self.channels.vectoriser.query(request.context, None,
                                                     deadline=request.deadline)
            weights = self.channels.weights(request)
            channels = [ChannelQuery(name, vector, settings.candidates, weight)
                        for name, vector in encoded.vectors.items()
                        if (weight := weights.get(name, 1.0)) > 0]
        if not channels:
            popular = self.store.popular(tenant=request.tenant, filter=item_filter, limit=limit)
            return [FusedHit(h.record, h.score) for h in popular], [POPULARITY]
        hits = self.store.hybrid_search(HybridQuery(
            channels=channels, limit=limit, tenant=request.tenant, filter=item_filter,
            rrf_k=settings.rrf_k, with_channel_hits=request.explain,
            popularity_weight=1.0))
        return hits, [c.using for c in channels] + [POPULARITY]

    def _fill(self, hits: list[FusedHit], request: RecommendRequest, item_filter: ItemFilter,
              limit: int) -> tuple[list[FusedHit], bool]:
        """Top up a short list with popular items it does not hold yet."""
        have = [h.record.id for h in hits]
        more = self.store.popular(
            tenant=request.tenant, limit=limit - len(hits),
            filter=replace(item_filter, exclude_ids=(*item_filter.exclude_ids, *have)))
        return hits + [FusedHit(h.record, 0.0) for h in more], bool(more)

    def _rerank_query(self, examples: Examples, request: RecommendRequest) -> RerankQuery:
        """What the LLM conditions on: the latest liked items (oldest first) and the context."""
        recent = examples.positives[-_HISTORY_ITEMS:]
        found = {r.id: r for r in self.store.get(recent, tenant=request.tenant)}
        return RerankQuery(text=request.context,
                           history=[found[i] for i in recent if i in found])

    def _diversify(self, items: list[RankedItem], request: RecommendRequest) -> list[RankedItem]:
        """MMR over the final candidates on the content vector (items without one keep place)."""
        ids = [i.hit.record.id for i in items]
        found = self.store.vectors(ids, tenant=request.tenant, using=self.settings.content_vector)
        dim = next(iter(found.values())).shape[0] if found else 1
        vectors = np.stack([found.get(i, np.zeros(dim, np.float32)) for i in ids])
        order = mmr_order(vectors, request.top_k, float(request.diversity or 1.0))
        return [items[i] for i in order]

    def _explain(self, items: list[RankedItem], examples: Examples, request: RecommendRequest,
                 deadline: float) -> list[Explanation]:
        """Channel standings, LLM score, the history items behind each result, and a reason.

        The history items are named by id and title (one batched store read); the
        reason is built from them, the attributes they share with the result and
        the context words it matched (:mod:`engine.rerank.facts`).
        """
        behind = self._because_of(items, examples, request)
        history = self._history_records(behind, request)
        return self.explainer.explain(request.context, items,
                                      with_reason=_wants_reason(request),
                                      deadline=deadline, history=history)

    def _because_of(self, items: list[RankedItem], examples: Examples,
                    request: RecommendRequest) -> list[list[str]]:
        """Per result, the ids of the history items behind it, most influential first.

        With the co-occurrence channel the attribution is exact: its score is
        ``sum_p w_p e_p . e_j``, so history item ``p`` contributed ``w_p e_p . e_j``.
        Without it (or when it serves another tenant), the history items closest on
        the content vector (recency-weighted).
        """
        history = examples.positives[-self.profiles.settings.recent:]
        none: list[list[str]] = [[] for _ in items]
        if not history:
            return none
        ids = [i.hit.record.id for i in items]
        cooccurrence = self.channels.models.for_tenant(request.tenant).get(COOCCURRENCE)
        if isinstance(cooccurrence, CooccurrenceModel):
            vectors = cooccurrence.embeddings_of([*history, *ids])
            decay = cooccurrence.decay
        else:
            vectors = self.store.vectors([*history, *ids], tenant=request.tenant,
                                         using=self.settings.content_vector)
            decay = self.profiles.weights.decay(0, 0)
        past = [h for h in history if h in vectors]
        if not past:
            return none
        past_vectors = np.stack([vectors[h] for h in past])
        recency = decay ** np.arange(len(past) - 1, -1, -1)
        out: list[list[str]] = []
        for item_id in ids:
            if item_id not in vectors:
                out.append([])
                continue
            influence = (past_vectors @ vectors[item_id]) * recency
            out.append([past[j] for j in np.argsort(-influence)[:_BECAUSE_OF]
                        if influence[j] > 0])
        return out

    def _history_records(self, behind: list[list[str]], request: RecommendRequest
                         ) -> list[list[ItemRecord]]:
        """The records of the history items behind each result, from one store read.

        An item the store no longer holds keeps its id, with no title.
        """
        wanted = list(dict.fromkeys(i for ids in behind for i in ids))
        found = ({r.id: r for r in self.store.get(wanted, tenant=request.tenant)}
                 if wanted else {})
        return [[found.get(i) or ItemRecord(id=i, tenant=request.tenant) for i in ids]
                for ids in behind]


def _wants_reason(request: RecommendRequest) -> bool:
    """Whether the LLM should write the reasons: the request's ``explain_reason``."""
    return request.explain_reason
