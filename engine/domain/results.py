"""What the retrieval stages return: hits, ranked items, explanations, whole results.

A store answers with :class:`FusedHit` (the item, its fused score and, when
asked, its standing in each channel). The re-rank stage turns them into
:class:`RankedItem` (final place, fused place, LLM score) and, when asked,
:class:`Explanation`. Callers receive a :class:`SearchResult` or a
:class:`RecommendResult`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.domain.items import ItemRecord


@dataclass(frozen=True, slots=True)
class ChannelHit:
    """Where one item stood in one channel: 1-based rank and that channel's raw score."""

    rank: int
    score: float


@dataclass(frozen=True, slots=True)
class FusedHit:
    """A fused result: the item, its fused score, and per-channel standing when asked."""

    record: ItemRecord
    score: float
    channels: Mapping[str, ChannelHit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result: the item and its score (higher is better)."""

    record: ItemRecord
    score: float


@dataclass(frozen=True, slots=True)
class RankedItem:
    """A result in its final place, with what the explainer needs."""

    hit: FusedHit
    fused_rank: int
    rerank_score: float | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything known about one result's place in the ranking."""

    rank: int
    fused_rank: int
    fused_score: float
    channels: Mapping[str, ChannelHit] = field(default_factory=dict)
    rerank_score: float | None = None
    matched_terms: list[str] = field(default_factory=list)
    reason: str = ""
    because_of: list[str] = field(default_factory=list)
    """Recommendations: the history items closest to this result, most influential first."""


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Hits best first, the channels searched, and how the ranking was made."""

    hits: list[SearchHit]
    channels: list[str]
    fusion: str = ""
    reranked: int = 0
    budget_exhausted: bool = False
    explanations: list[Explanation] | None = None
    """One per hit, when asked."""


@dataclass(frozen=True, slots=True)
class RecommendResult:
    """Recommended items best first and how they were found."""

    hits: list[SearchHit]
    channels: list[str]
    fusion: str
    strategy: str
    cold_start: bool
    reranked: int = 0
    budget_exhausted: bool = False
    explanations: list[Explanation] | None = None
