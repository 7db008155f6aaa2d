"""What the retrieval stages return: hits, ranked items, explanations, whole results.

A store answers with :class:`FusedHit` (the item, its fused score and, when
asked, its standing in each channel). The re-rank stage turns them into
:class:`RankedItem` (final place, fused place, LLM score) and, when asked,
:class:`Explanation`, whose sentence is made from :class:`ReasonFacts`. Callers
receive a :class:`SearchResult` or a :class:`RecommendResult`.
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
class ReasonFacts:
    """All a "why you'll like it" sentence may say about one result.

    Built by the explainer from what the stages recorded: the item, the history
    items the recommender attributed it to, the attributes they share, the words
    it matched. The LLM is shown these facts and nothing else, and its sentence is
    checked against them; the plain sentence is made of them alone.
    """

    title: str
    """The result's title (the start of its text when it has none)."""
    attributes: list[str] = field(default_factory=list)
    """Its descriptive attribute values, e.g. a film's year and genres."""
    liked: list[str] = field(default_factory=list)
    """Titles of the history items behind it, most influential first (recommend)."""
    shared: list[str] = field(default_factory=list)
    """Attribute values it shares with those history items."""
    query: str = ""
    """The search text, or the recommendation's context."""
    matched_terms: list[str] = field(default_factory=list)
    """Query words its text contains."""
    channels: list[str] = field(default_factory=list)
    """The channels that found it (those recorded with the hit)."""


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
    """One sentence saying why: the LLM's when it passed the checks, else built from the facts."""
    because_of: list[str] = field(default_factory=list)
    """Recommendations: the history items closest to this result, most influential first."""
    because_of_titles: list[str] = field(default_factory=list)
    """The titles of ``because_of``, in the same order ("" for an item the store lacks)."""
    shared_attributes: list[str] = field(default_factory=list)
    """Attribute values (genres, category) this result shares with ``because_of``."""
    reason_source: str = ""
    """Who wrote ``reason``: ``"llm"``, ``"facts"`` (the plain sentence), or "" for none."""
    reason_rejected: str = ""
    """Why the LLM's sentence was replaced by the plain one (``engine.rerank.faithfulness``
    names the rules: ``unknown_title``, ``repetitive``, ``too_long``, ``empty``, ``no_time``);
    "" when it was kept or not asked for."""


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
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    """Wall milliseconds per stage that ran (``encode``, ``retrieve``, ``rerank``,
    ``explain``); their sum is at most the call's time."""


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
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    """Wall milliseconds per stage that ran (``profile``, ``encode``, ``retrieve``,
    ``rerank``, ``diversify``, ``explain``); their sum is at most the call's time."""
