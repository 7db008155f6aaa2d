"""Recommendations from behaviour: history -> channels -> one fused query -> LLM -> MMR.

For a user (their recorded profile) and/or explicit positive and negative items:

* **behaviour**: the sequential model (``mmrec train-seq``) encodes the latest
  positive items into a query on the items' ``behaviour`` vectors, so a new
  event changes the next answer at once;
* **cooccurrence**: recency-weighted item-kNN over the interaction log as a
  vector search (``engine.collaborative``), also trained by ``mmrec train-seq``;
* **content** (the ``fused`` vector): the decayed profile vector, or Qdrant's
  recommend strategies over the recent positives and negatives;
* **context** text, when given: its ``text``/``clip``/``lexical`` channels, and
  it steers the content query.

All channels go to the store in one Query API call (RRF or DBSF) with the
request's filter and the seen items excluded. With no history the user gets
popular items within the filter (and the context). The top candidates may be
re-scored by the LLM given the recent history's titles (LlamaRec's idea),
under the same budget rules as search, and the final list may be diversified
by maximal marginal relevance. Explanations name the history items closest to
each result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from engine.collaborative import CooccurrenceModel
from engine.config import RecommendSettings, RerankSettings
from engine.errors import InvalidInput
from engine.explain import Explainer, Explanation
from engine.fusion import FUSED
from engine.profiles import ProfileBook, UserProfile
from engine.query import ChannelQuery, FusedHit, Fusion, HybridQuery, ItemFilter, RecommendVectors
from engine.search import (
    CLIP,
    LEXICAL,
    TEXT,
    HybridRetriever,
    QueryEncoder,
    RankedItem,
    Reranker,
    deadline_for,
    rerank_order,
    wants_rerank,
)
from engine.sequential import SequentialModel
from engine.types import RecommendResult, SearchHit

BEHAVIOUR = "behaviour"
COOCCURRENCE = "cooccurrence"
POPULARITY = "popularity"
STRATEGIES = ("profile", "average_vector", "best_score", "sum_scores")
_HISTORY_TITLES = 10
"""Recent history titles shown to the LLM."""
_BECAUSE_OF = 3


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """A validated recommendation request and every knob a caller may turn."""

    tenant: str
    user_id: str = ""
    top_k: int = 10
    positive_ids: tuple[str, ...] = ()
    negative_ids: tuple[str, ...] = ()
    context: str = ""
    filter: ItemFilter = field(default_factory=ItemFilter)
    include_seen: bool | None = None
    rerank: bool | None = None
    rerank_top_k: int = 0
    budget_ms: int = 0
    explain: bool = False
    strategy: str | None = None
    fusion: Fusion | None = None
    rrf_k: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)
    candidates: int = 0
    diversity: float | None = None
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Examples:
    """What the request says about taste: positives (oldest first), negatives, seen items."""

    profile: UserProfile | None
    positives: list[str]
    negatives: list[str]
    seen: list[str]


def mmr_order(vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Greedy maximal marginal relevance over a list already in relevance order.

    Relevance is rank-based (1 for the first, falling linearly), because fused
    scores are not on a scale comparable with cosine similarity. ``diversity``
    is MMR's lambda: 1 keeps the order, lower values trade relevance for variety.
    """
    n = len(vectors)
    if n == 0:
        return []
    relevance = 1.0 - np.arange(n) / n
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    chosen: list[int] = [0]
    closest = unit @ unit[0]
    while len(chosen) < min(k, n):
        gain = diversity * relevance - (1.0 - diversity) * closest
        gain[chosen] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        closest = np.maximum(closest, unit @ unit[pick])
    return chosen


class Recommender:
    """Builds the channels from history, runs one fused query, re-ranks, diversifies, explains."""

    def __init__(self, profiles: ProfileBook, retriever: HybridRetriever, encoder: QueryEncoder,
                 sequential: SequentialModel | None, reranker: Reranker | None,
                 reranker_off_reason: str, explainer: Explainer, settings: RecommendSettings,
                 rerank_settings: RerankSettings, *,
                 cooccurrence: CooccurrenceModel | None = None) -> None:
        self.profiles, self.retriever, self.encoder = profiles, retriever, encoder
        self.sequential, self.reranker = sequential, reranker
        self.reranker_off_reason, self.explainer = reranker_off_reason, explainer
        self.settings, self.rerank_settings = settings, rerank_settings
        self.cooccurrence = cooccurrence

    # -- the request's examples ----------------------------------------------------------------

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

    # -- channels -------------------------------------------------------------------------------

    def _weights(self, request: RecommendRequest) -> dict[str, float]:
        """Per-channel weights: the request's over the configured ones; 0 switches off."""
        return {**self.settings.weights, **request.weights}

    def _content(self, examples: Examples, request: RecommendRequest, strategy: str,
                 context: np.ndarray | None) -> np.ndarray | RecommendVectors | None:
        """The content channel's query under ``strategy`` (None without examples)."""
        recent = self.profiles.settings.recent
        pos_ids, neg_ids = examples.positives[-recent:], examples.negatives[-recent:]
        store = self.retriever.store
        found = store.vectors([*pos_ids, *neg_ids], tenant=request.tenant,
                              using=self.settings.content_vector)
        pos = [found[i] for i in pos_ids if i in found]
        neg = [found[i] for i in neg_ids if i in found]
        if strategy in ("best_score", "sum_scores"):
            if context is not None:
                pos.append(context)
            if not pos:
                return None
            return RecommendVectors(pos, neg, strategy)  # type: ignore[arg-type]
        if strategy == "average_vector":
            if not pos:
                return None
            mean = np.mean(pos, axis=0)
            query = 2 * mean - np.mean(neg, axis=0) if neg else mean
        else:
            query = self._profile_query(examples, request, found)
        if query is None or not np.any(query):
            return context
        query = query / np.linalg.norm(query)
        return query if context is None else query + context / np.linalg.norm(context)

    def _profile_query(self, examples: Examples, request: RecommendRequest,
                       found: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The stored profile sum with the explicit items folded in as the newest events."""
        weights = self.profiles.weights
        vector = examples.profile.vector if examples.profile else None
        explicit = [(i, 1.0) for i in request.positive_ids] + [
            (i, -1.0) for i in request.negative_ids]
        for item_id, sign in explicit:
            if item_id in found:
                added = sign * found[item_id]
                vector = added if vector is None else weights.decay(0, 0) * vector + added
        return vector

    def channels(self, examples: Examples, request: RecommendRequest, strategy: str,
                 limit: int) -> list[ChannelQuery]:
        """One prefetch per channel that has a query and a weight > 0."""
        weights = self._weights(request)
        candidates = max(request.candidates or self.settings.candidates, limit)
        queries: dict[str, np.ndarray | RecommendVectors] = {}
        context_fused = None
        if request.context:
            encoded = self.encoder.encode(request.context, None)
            context_fused = encoded.vectors.get(FUSED)
            queries.update((name, vector) for name, vector in encoded.vectors.items()
                           if name in (TEXT, CLIP, LEXICAL))
        if self.sequential is not None and examples.positives:
            behaviour = self.sequential.encode([examples.positives])[0]
            if np.any(behaviour):
                queries[BEHAVIOUR] = behaviour
        if self.cooccurrence is not None and examples.positives:
            together = self.cooccurrence.encode([examples.positives])[0]
            if np.any(together):
                queries[COOCCURRENCE] = together
        content = self._content(examples, request, strategy, context_fused)  # type: ignore[arg-type]
        if content is not None:
            queries[self.settings.content_vector] = content
        return [ChannelQuery(name, vector, candidates, weights.get(name, 1.0))  # type: ignore[arg-type]
                for name, vector in queries.items() if weights.get(name, 1.0) > 0]

    # -- the pipeline ---------------------------------------------------------------------------

    def recommend(self, request: RecommendRequest) -> RecommendResult:
        """Run every stage; LLM re-ranking stops at the budget, never the recommendation."""
        strategy = request.strategy or self.settings.strategy
        if strategy not in STRATEGIES:
            raise InvalidInput(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        if not request.user_id and not request.positive_ids and not request.context:
            raise InvalidInput("a recommendation needs a user_id, positive_ids or context text")
        examples = self.examples(request)
        include_seen = (self.settings.include_seen if request.include_seen is None
                        else request.include_seen)
        item_filter = request.filter
        if not include_seen and examples.seen:
            item_filter = replace(item_filter, exclude_ids=tuple(dict.fromkeys(
                [*item_filter.exclude_ids, *examples.seen])))
        rerank = wants_rerank(self.rerank_settings, request.rerank, self.reranker,
                              self.reranker_off_reason, has_query=bool(examples.positives))
        top_k = request.rerank_top_k or self.rerank_settings.top_k
        limit = max(request.top_k, top_k if rerank else 0)
        if request.diversity is not None:
            limit = max(limit, 3 * request.top_k)
        fusion = request.fusion or self.settings.fusion
        channels = (self.channels(examples, request, strategy, limit)
                    if examples.positives or examples.negatives else [])
        has_history = any(c.using in (BEHAVIOUR, COOCCURRENCE, self.settings.content_vector)
                          for c in channels)
        if has_history:
            hits = self.retriever.store.hybrid_search(HybridQuery(
                channels=channels, limit=limit, tenant=request.tenant, fusion=fusion,
                rrf_k=request.rrf_k or self.settings.rrf_k, filter=item_filter,
                with_channel_hits=request.explain))
            names = [c.using for c in channels]
        else:
            hits, names = self._popular(request, item_filter, limit)
        if len(hits) < limit and has_history:
            hits, filled = self._fill(hits, request, item_filter, limit)
            names += [POPULARITY] if filled else []
        items = [RankedItem(hit, rank) for rank, hit in enumerate(hits, start=1)]
        deadline = deadline_for(request, self.rerank_settings.budget_ms)
        reranked, exhausted = 0, False
        if rerank and items and self.reranker is not None:
            head = hits[:top_k]
            scores = self.reranker.score(self._history_prompt(examples, request),
                                         [h.record.document_text for h in head],
                                         deadline=deadline)
            items = rerank_order(hits, scores.scores)
            reranked, exhausted = scores.scored, scores.scored < len(head)
        if request.diversity is not None and len(items) > 1:
            items = self._diversify(items, request)
        items = items[:request.top_k]
        explanations = self._explain(items, examples, request, deadline) if request.explain \
            else None
        return RecommendResult(hits=[SearchHit(i.hit.record, i.hit.score) for i in items],
                               channels=names, fusion=fusion, strategy=strategy,
                               cold_start=not has_history, reranked=reranked,
                               budget_exhausted=exhausted, explanations=explanations)

    def _popular(self, request: RecommendRequest, item_filter: ItemFilter, limit: int
                 ) -> tuple[list[FusedHit], list[str]]:
        """Cold start: popular items in the filter; with context, popular among its matches."""
        store = self.retriever.store
        if not request.context:
            popular = store.popular(tenant=request.tenant, filter=item_filter, limit=limit)
            return [FusedHit(h.record, h.score) for h in popular], [POPULARITY]
        encoded = self.encoder.encode(request.context, None)
        channels = [ChannelQuery(name, vector, self.settings.candidates,
                                 self._weights(request).get(name, 1.0))
                    for name, vector in encoded.vectors.items()]
        matches = store.hybrid_search(HybridQuery(
            channels=channels, limit=self.settings.candidates, tenant=request.tenant,
            filter=item_filter, rrf_k=self.settings.rrf_k, with_channel_hits=request.explain))
        popular = store.popular(tenant=request.tenant, filter=item_filter,
                                limit=max(1000, self.settings.candidates))
        pop_rank = {h.record.id: rank for rank, h in enumerate(popular, start=1)}
        k = self.settings.rrf_k
        scored = [(1 / (k + rank) + (1 / (k + pop_rank[h.record.id])
                                     if h.record.id in pop_rank else 0.0), h)
                  for rank, h in enumerate(matches, start=1)]
        scored.sort(key=lambda pair: -pair[0])
        hits = [FusedHit(h.record, score, h.channels) for score, h in scored[:limit]]
        return hits, [c.using for c in channels] + [POPULARITY]

    def _fill(self, hits: list[FusedHit], request: RecommendRequest, item_filter: ItemFilter,
              limit: int) -> tuple[list[FusedHit], bool]:
        """Top up a short list with popular items it does not hold yet."""
        have = [h.record.id for h in hits]
        more = self.retriever.store.popular(
            tenant=request.tenant, limit=limit - len(hits),
            filter=replace(item_filter, exclude_ids=(*item_filter.exclude_ids, *have)))
        return hits + [FusedHit(h.record, 0.0) for h in more], bool(more)

    def _history_prompt(self, examples: Examples, request: RecommendRequest) -> str:
        """What the LLM conditions on: the latest liked titles and the context."""
        recent = examples.positives[-_HISTORY_TITLES:]
        records = self.retriever.store.get(recent, tenant=request.tenant)
        titles = "; ".join(r.title or r.document_text[:80] for r in records)
        prompt = f"more like what I enjoyed recently: {titles}" if titles else ""
        if request.context:
            prompt = f"{request.context}, {prompt}" if prompt else request.context
        return prompt

    def _diversify(self, items: list[RankedItem], request: RecommendRequest) -> list[RankedItem]:
        """MMR over the final candidates on the content vector (items without one keep place)."""
        ids = [i.hit.record.id for i in items]
        found = self.retriever.store.vectors(ids, tenant=request.tenant,
                                             using=self.settings.content_vector)
        dim = next(iter(found.values())).shape[0] if found else 1
        vectors = np.stack([found.get(i, np.zeros(dim, np.float32)) for i in ids])
        order = mmr_order(vectors, request.top_k, float(request.diversity or 1.0))
        return [items[i] for i in order]

    def _explain(self, items: list[RankedItem], examples: Examples, request: RecommendRequest,
                 deadline: float) -> list[Explanation]:
        """Channel standings, LLM score, and the history items behind each result.

        With the co-occurrence channel the attribution is exact: its score is
        ``sum_p w_p e_p . e_j``, so history item ``p`` contributed ``w_p e_p . e_j``.
        Without it, the history items closest on the content vector (recency-weighted).
        """
        explanations = self.explainer.explain(request.context, items, with_reason=False,
                                              deadline=deadline)
        history = examples.positives[-self.profiles.settings.recent:]
        if not history:
            return explanations
        ids = [i.hit.record.id for i in items]
        if self.cooccurrence is not None:
            vectors = self.cooccurrence.embeddings_of([*history, *ids])
            decay = self.cooccurrence.decay
        else:
            vectors = self.retriever.store.vectors([*history, *ids], tenant=request.tenant,
                                                   using=self.settings.content_vector)
            decay = self.profiles.weights.decay(0, 0)
        past = [h for h in history if h in vectors]
        if not past:
            return explanations
        past_vectors = np.stack([vectors[h] for h in past])
        recency = decay ** np.arange(len(past) - 1, -1, -1)
        out = []
        for item_id, explanation in zip(ids, explanations, strict=True):
            if item_id not in vectors:
                out.append(explanation)
                continue
            influence = (past_vectors @ vectors[item_id]) * recency
            best = [past[j] for j in np.argsort(-influence)[:_BECAUSE_OF] if influence[j] > 0]
            out.append(replace(explanation, because_of=best))
        return out
