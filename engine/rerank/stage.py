"""The post-retrieval stage search and recommend share: plan, LLM re-rank within budget, order.

Both paths retrieve fused candidates, optionally let the LLM re-score the head
of the list, and keep every candidate the LLM did not reach in fused order. The
budget (the request's, else the configured one) never passes the call's gRPC
deadline: re-ranking is cut short rather than running late, and the result says
how many candidates were re-ranked.

The re-scored head is ordered by a *blend* of the two rankings, never by the
LLM alone: ``(1 - w) / (k + fused rank) + w / (k + LLM rank)``. The weight
``w`` comes with the re-ranker (chosen on validation data: a trained
re-ranker stores it, the zero-shot scorer reads it from the config), so an LLM
that measured no better than the first stage gets ``w = 0`` and returns the
fused order exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.config import RerankSettings
from engine.domain import FailedPrecondition, FusedHit, ItemRecord, RankedItem, SearchHit

DEADLINE_MARGIN = 0.05
"""Seconds kept back from the gRPC deadline to build and send the response."""
BLEND_K = 10
"""RRF's k in the blend of fused and LLM ranks (small: the head holds about 20 items)."""


@dataclass(frozen=True, slots=True)
class Blend:
    """How the LLM's ranking mixes with the fused one (see the module docstring)."""

    weight: float = 1.0
    """0 keeps the fused order, 1 the LLM's."""
    k: int = BLEND_K

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0 or self.k < 1:
            raise ValueError("blend weight must be in [0, 1] and k >= 1")


@dataclass(frozen=True, slots=True)
class RerankQuery:
    """What the LLM conditions on: the search text, and for recommend the recent history."""

    text: str = ""
    """The search query, or a recommendation's context text."""
    history: Sequence[ItemRecord] = ()
    """Recommend: the user's recent positive items, oldest first."""


@dataclass(frozen=True, slots=True)
class RerankScores:
    """LLM relevance per candidate, in input order."""

    scores: list[float | None]
    """Higher is more relevant; None for candidates not scored before the deadline."""
    scored: int
    """How many candidates have a score (always the first ``scored`` ones)."""
    seconds: float
    """Wall time of the call."""


class Reranker(Protocol):
    """What the stage needs from an LLM re-ranker (zero-shot or trained listwise)."""

    @property
    def name(self) -> str:
        """The model's name, for `mmrec info`."""

    @property
    def blend(self) -> Blend:
        """How its ranking mixes with the fused one."""

    def score(self, query: RerankQuery, candidates: Sequence[ItemRecord], *,
              deadline: float | None = None) -> RerankScores:
        """LLM relevance of each candidate; None for those not reached before ``deadline``."""


class Budgeted(Protocol):
    """A request with an LLM budget and a call deadline (search or recommend)."""

    @property
    def budget_ms(self) -> int:
        """Milliseconds the LLM may spend; 0 means the default."""

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` by which the answer must be ready, if any."""


class RerankRequest(Budgeted, Protocol):
    """A request that may ask for re-ranking (search or recommend)."""

    @property
    def rerank(self) -> bool | None:
        """True or False to decide; None for the configured default."""

    @property
    def rerank_top_k(self) -> int:
        """How many of the first candidates the LLM may re-score; 0 means the default."""

    @property
    def top_k(self) -> int:
        """How many results the caller wants."""


def deadline_for(request: Budgeted, default_budget_ms: int) -> float:
    """When the LLM must stop: the budget from now, never past the call's deadline."""
    budget = (request.budget_ms or default_budget_ms) / 1000
    deadline = time.monotonic() + budget
    if request.deadline is not None:
        deadline = min(deadline, request.deadline - DEADLINE_MARGIN)
    return deadline


def merge_order(scores: Sequence[float | None], blend: Blend | None = None) -> list[int]:
    """Input indices in final order: scored ones re-ordered within their slots, unscored stay.

    Scored candidates are sorted by the blend of their input (fused) rank and
    their LLM rank; ``blend`` None is the LLM's order alone. Ties keep input order.
    """
    blend = blend or Blend()
    slots = [i for i, value in enumerate(scores) if value is not None]
    by_llm = sorted(slots, key=lambda i: -(scores[i] or 0.0))  # stable: ties keep fused order
    llm_rank = {index: rank for rank, index in enumerate(by_llm, start=1)}
    fused_rank = {index: rank for rank, index in enumerate(slots, start=1)}
    w, k = blend.weight, blend.k

    def blended(i: int) -> float:
        return (1.0 - w) / (k + fused_rank[i]) + w / (k + llm_rank[i])

    ranked = sorted(slots, key=lambda i: -blended(i))  # stable: ties keep fused order
    order = list(range(len(scores)))
    for slot, index in zip(slots, ranked, strict=True):
        order[slot] = index
    return order


def rerank_order(hits: list[FusedHit], scores: list[float | None],
                 blend: Blend | None = None) -> list[RankedItem]:
    """Hits in final order under :func:`merge_order`.

    ``scores`` covers the first ``len(scores)`` hits (the re-ranked head); scored
    hits are ordered by the blend within their slots, the rest keep fused order.
    """
    full = list(scores) + [None] * (len(hits) - len(scores))
    return [RankedItem(hits[i], i + 1, full[i]) for i in merge_order(full, blend)]


@dataclass(frozen=True, slots=True)
class Reranked:
    """Every candidate in final order, and what the LLM did."""

    items: list[RankedItem]
    reranked: int
    """Candidates the LLM scored."""
    budget_exhausted: bool
    """True when time ran out before the LLM scored every candidate it was given."""
    deadline: float
    """When later LLM work (reasons) must stop."""


def search_hits(items: Sequence[RankedItem]) -> list[SearchHit]:
    """The caller-facing hits of ranked items (record and fused score)."""
    return [SearchHit(i.hit.record, i.hit.score) for i in items]


class RerankStage:
    """Decides whether to re-rank, how many candidates to fetch, and re-ranks them in budget."""

    def __init__(self, reranker: Reranker | None, off_reason: str,
                 settings: RerankSettings) -> None:
        self.reranker, self.off_reason, self.settings = reranker, off_reason, settings

    def wanted(self, request: RerankRequest, *, has_query: bool) -> bool:
        """Whether to re-rank: asked for (or on by default), possible, and a model is loaded.

        Asking explicitly while no LLM is loaded is FAILED_PRECONDITION with the
        reason; the configured default silently does nothing without a model or
        a query.
        """
        if request.rerank and self.reranker is None:
            raise FailedPrecondition(
                f"re-ranking was asked for but the LLM is not loaded: {self.off_reason}")
        wanted = self.settings.enabled if request.rerank is None else request.rerank
        return bool(wanted and has_query and self.reranker is not None)

    def head_size(self, request: RerankRequest) -> int:
        """How many of the first candidates the LLM re-scores."""
        return request.rerank_top_k or self.settings.top_k

    def pool_size(self, request: RerankRequest, *, rerank: bool) -> int:
        """How many candidates to retrieve: the caller's top k, or the re-ranked head if larger."""
        return max(request.top_k, self.head_size(request) if rerank else 0)

    def apply(self, hits: list[FusedHit], query: RerankQuery, request: RerankRequest, *,
              rerank: bool) -> Reranked:
        """``hits`` in final order: the head re-scored by the LLM when ``rerank``, within budget."""
        deadline = deadline_for(request, self.settings.budget_ms)
        if not (rerank and hits and self.reranker is not None):
            items = [RankedItem(hit, rank) for rank, hit in enumerate(hits, start=1)]
            return Reranked(items, 0, False, deadline)
        head = hits[:self.head_size(request)]
        scores = self.reranker.score(query, [h.record for h in head], deadline=deadline)
        return Reranked(rerank_order(hits, scores.scores, self.reranker.blend), scores.scored,
                        scores.scored < len(head), deadline)
