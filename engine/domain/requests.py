"""Validated requests: a search and a recommendation, with every knob a caller may turn.

The service builds these from protobuf messages after validating them; the
search and recommend stages read nothing else. A zero or None knob means "the
configured default".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.domain.queries import Fusion, ItemFilter

if TYPE_CHECKING:
    from PIL import Image

STRATEGIES = ("profile", "average_vector", "best_score", "sum_scores")
"""How the content channel reads a user's history: the decayed profile vector, the mean of
the recent positives (minus the negatives), or Qdrant's recommend strategies."""


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
    explain_reason: bool = False
    """With ``explain``: the LLM writes each reason from the facts (checked)."""
    deadline: float | None = None
    """``time.monotonic()`` by which the answer must be ready (from the gRPC deadline)."""
