"""The search pipeline: encode the query -> hybrid retrieval -> LLM re-rank -> explain.

Each stage is a small class with one job (STYLE.md); :class:`SearchPipeline`
chains them under one time budget. Data flows one way: the service builds a
:class:`SearchRequest`, this module calls the encoders, the store and the LLM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from engine.config import RerankSettings, RetrievalSettings
from engine.encoders import ClipEncoder, LexicalEncoder, TextEncoder
from engine.errors import FailedPrecondition, InvalidInput
from engine.explain import Explainer
from engine.fusion import FUSED, VectorFuser, mix_clip
from engine.query import ChannelQuery, FusedHit, Fusion, HybridQuery, ItemFilter, SparseVector
from engine.rerank import RerankScores, merge_order
from engine.store import VectorStore
from engine.types import SearchHit, SearchResult

log = logging.getLogger(__name__)

CLIP, TEXT, LEXICAL = "clip", "text", "lexical"
DEADLINE_MARGIN = 0.05
"""Seconds kept back from the gRPC deadline to build and send the response."""


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A validated search and every knob a caller may turn."""

    text: str
    image: Image.Image | None
    top_k: int
    tenant: str
    filter: ItemFilter = field(default_factory=ItemFilter)
    explain: bool = False
    explain_reason: bool = False
    rerank: bool | None = None
    rerank_top_k: int = 0
    budget_ms: int = 0
    fusion: Fusion | None = None
    rrf_k: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)
    candidates: int = 0
    deadline: float | None = None
    """``time.monotonic()`` by which the answer must be ready (from the gRPC deadline)."""


@dataclass(frozen=True, slots=True)
class RankedItem:
    """A result in its final place, with what the explainer needs."""

    hit: FusedHit
    fused_rank: int
    rerank_score: float | None = None


@dataclass(frozen=True, slots=True)
class EncodedQuery:
    """The query in every channel that can read it."""

    vectors: dict[str, np.ndarray | SparseVector]


class QueryEncoder:
    """Text and/or image into the named vectors items are stored with."""

    def __init__(self, *, text: TextEncoder, clip: ClipEncoder | None,
                 lexical: LexicalEncoder | None, fuser: VectorFuser, image_weight: float,
                 clip_off_reason: str) -> None:
        self.text, self.clip, self.lexical, self.fuser = text, clip, lexical, fuser
        self.image_weight = image_weight
        self.clip_off_reason = clip_off_reason

    def encode(self, text: str, image: Image.Image | None) -> EncodedQuery:
        """A text query fills CLIP with CLIP text; an image query with CLIP image; both mix."""
        if image is not None and self.clip is None:
            raise FailedPrecondition(
                f"image search needs the CLIP channel, which is off: {self.clip_off_reason}")
        if not text and image is None:
            raise InvalidInput("a search needs text, an image, or both")
        dense: dict[str, np.ndarray] = {}
        if text:
            dense[TEXT] = self.text.encode_queries([text])[0]
        if self.clip is not None:
            img = self.clip.encode_images([image])[0] if image is not None else None
            txt = self.clip.encode_texts([text])[0] if text else None
            dense[CLIP] = mix_clip(img, txt, self.image_weight)
        vectors: dict[str, np.ndarray | SparseVector] = {FUSED: self.fuser.fuse(dense)}
        vectors.update((name, dense[name]) for name in self.fuser.dims if name in dense)
        if text and self.lexical is not None:
            sparse = self.lexical.encode_queries([text])[0]
            if len(sparse):
                vectors[LEXICAL] = sparse
        return EncodedQuery(vectors)


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


class Budgeted(Protocol):
    """A request with an LLM budget and a call deadline (search or recommend)."""

    @property
    def budget_ms(self) -> int:
        """Milliseconds the LLM may spend; 0 means the default."""

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` by which the answer must be ready, if any."""


def deadline_for(request: Budgeted, default_budget_ms: int) -> float:
    """When the LLM must stop: the budget from now, never past the call's deadline."""
    budget = (request.budget_ms or default_budget_ms) / 1000
    deadline = time.monotonic() + budget
    if request.deadline is not None:
        deadline = min(deadline, request.deadline - DEADLINE_MARGIN)
    return deadline


def rerank_order(hits: list[FusedHit], scores: list[float | None]) -> list[RankedItem]:
    """Hits in final order under the re-ranker's merge rule (:func:`engine.rerank.merge_order`).

    ``scores`` covers the first ``len(scores)`` hits (the re-ranked head); scored
    hits are sorted by LLM score within their slots, the rest keep fused order.
    """
    full = list(scores) + [None] * (len(hits) - len(scores))
    return [RankedItem(hits[i], i + 1, full[i]) for i in merge_order(full)]


class Reranker(Protocol):
    """What the pipeline needs from the LLM re-ranker (engine.rerank.LlmReranker)."""

    def score(self, query: str, candidates: Sequence[str], *, deadline: float | None = None
              ) -> RerankScores:
        """LLM relevance of each candidate; None for those not reached before ``deadline``."""


class SearchPipeline:
    """Encode -> retrieve -> re-rank -> explain, under one budget."""

    def __init__(self, encoder: QueryEncoder, retriever: HybridRetriever,
                 reranker: Reranker | None, reranker_off_reason: str, explainer: Explainer,
                 settings: RerankSettings) -> None:
        self.encoder, self.retriever, self.reranker = encoder, retriever, reranker
        self.reranker_off_reason = reranker_off_reason
        self.explainer, self.settings = explainer, settings

    def search(self, request: SearchRequest) -> SearchResult:
        """Run every stage; the re-ranker and reasons stop at the budget, never the search."""
        encoded = self.encoder.encode(request.text, request.image)
        rerank = self._wants_rerank(request)
        top_k = request.rerank_top_k or self.settings.top_k
        limit = max(request.top_k, top_k if rerank else 0)
        hits, fusion, channels = self.retriever.retrieve(encoded, request, limit)
        deadline = deadline_for(request, self.settings.budget_ms)
        reranked, exhausted = 0, False
        if rerank and hits and self.reranker is not None:
            head = hits[:top_k]
            scores = self.reranker.score(request.text, [h.record.document_text for h in head],
                                         deadline=deadline)
            items = rerank_order(hits, scores.scores)
            reranked, exhausted = scores.scored, scores.scored < len(head)
        else:
            items = [RankedItem(hit, rank) for rank, hit in enumerate(hits, start=1)]
        items = items[:request.top_k]
        explanations = None
        if request.explain:
            explanations = self.explainer.explain(request.text, items,
                                                  with_reason=request.explain_reason,
                                                  deadline=deadline)
        return SearchResult(hits=[SearchHit(i.hit.record, i.hit.score) for i in items],
                            channels=channels, fusion=fusion, reranked=reranked,
                            budget_exhausted=exhausted, explanations=explanations)

    def _wants_rerank(self, request: SearchRequest) -> bool:
        """Asked for (or on by default), possible (a text query), and a model is loaded."""
        return wants_rerank(self.settings, request.rerank, self.reranker,
                            self.reranker_off_reason, has_query=bool(request.text))


def wants_rerank(settings: RerankSettings, asked: bool | None, reranker: Reranker | None,
                 off_reason: str, *, has_query: bool) -> bool:
    """Whether to re-rank: asked for (or on by default), possible, and a model is loaded.

    Asking explicitly while no LLM is loaded is FAILED_PRECONDITION with the reason;
    the configured default silently does nothing without a model or a query.
    """
    if asked and reranker is None:
        raise FailedPrecondition(
            f"re-ranking was asked for but the LLM is not loaded: {off_reason}")
    wanted = settings.enabled if asked is None else asked
    return bool(wanted and has_query and reranker is not None)
