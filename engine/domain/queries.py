"""What a hybrid query asks: payload filters, channel queries, and their fusion.

The search and recommend stages build a :class:`HybridQuery`; a store answers it
with one Query API call (a prefetch per channel, fused by RRF or DBSF, the filter
applied inside every prefetch). A channel may also be Qdrant's recommend query
(:class:`RecommendVectors`: positive and negative example vectors on one dense
vector). Nothing here knows Qdrant or protobuf types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from engine.domain.vectors import SparseVector

Fusion = Literal["rrf", "dbsf"]
RecommendStrategy = Literal["best_score", "sum_scores"]


@dataclass(frozen=True, slots=True)
class Match:
    """Payload ``key`` equals ``value`` (keyword, integer or bool)."""

    key: str
    value: str | int | bool


@dataclass(frozen=True, slots=True)
class MatchAny:
    """Payload ``key`` equals any of ``values`` (for list-valued keys: shares one)."""

    key: str
    values: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Range:
    """Numeric payload ``key`` within the given bounds (any may be None)."""

    key: str
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


Condition = Match | MatchAny | Range


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """What results must satisfy: every ``must`` condition, no ``must_not`` condition,
    and not be one of ``exclude_ids``. Keys name item attributes (``genres``, ``year``),
    which the stores keep under ``attributes.<key>``."""

    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()
    exclude_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.must or self.must_not or self.exclude_ids)


@dataclass(frozen=True, slots=True)
class RecommendVectors:
    """Qdrant's recommend query on one named dense vector: positive and negative example vectors.

    Recommendation from a user's history: the items liked are positives, the
    ones disliked negatives. Scores, as Qdrant defines them (cosine similarities
    ``sim``; checked equal on qdrant-edge and qdrant-client):

    * ``best_score``: with ``p`` the best similarity to a positive and ``n`` the best
      to a negative, ``s(p)`` if ``p > n`` else ``-s(n)``, where
      ``s(x) = 0.5 + 0.5 * x / (1 + |x|)``; with no positives every score is ``-s(n)``.
    * ``sum_scores``: the sum of similarities to the positives minus the sum to the negatives.

    At least one example is needed (positives, negatives or both); negatives alone
    rank by dissimilarity.
    """

    positives: Sequence[np.ndarray]
    negatives: Sequence[np.ndarray] = ()
    strategy: RecommendStrategy = "best_score"


@dataclass(frozen=True, slots=True)
class ChannelQuery:
    """One prefetch: a query for one named vector and how many candidates it brings.

    The query is a vector (nearest search: cosine for a dense vector, BM25 for a
    ``SparseVector``) or a :class:`RecommendVectors` (Qdrant's recommend query on a
    dense vector)."""

    using: str
    vector: np.ndarray | SparseVector | RecommendVectors
    limit: int
    weight: float = 1.0
    """Weight of this channel in RRF (ignored by DBSF), > 0: Qdrant adds
    ``1 / (k - 1 + rank / weight)`` per channel, ``rank`` 1-based."""


@dataclass(frozen=True, slots=True)
class HybridQuery:
    """Several channel queries fused into one ranking, within one tenant and filter."""

    channels: Sequence[ChannelQuery]
    limit: int
    tenant: str
    fusion: Fusion = "rrf"
    rrf_k: int = 60
    filter: ItemFilter = field(default_factory=ItemFilter)
    with_channel_hits: bool = False
    """Also return each channel's own ranking (for explanations); same call, batched.

    A query with a single channel is a plain nearest search: its hits carry that
    channel's own scores (cosine, or BM25 for ``lexical``), not fused ones."""
    popularity_weight: float = 0.0
    """Also rank the fused candidates by their popularity and fuse that ranking in by RRF
    with this weight (the candidates' own ranking has weight 1); 0 = off.

    Still one Query API call: the channels' fusion ranks the candidates (as many as the
    largest channel limit or ``limit``, whichever is more), those same candidates are
    ordered by popularity (items without one are not in that ranking), and the two
    rankings are fused by RRF with ``rrf_k``. Results stay among the candidates: popular
    items the channels did not find never come in. Popularity is a ranking here, so the
    outer fusion is RRF whatever ``fusion`` says (``fusion`` fuses the channels). With
    ``with_channel_hits`` each hit's popularity rank and value come as a channel named
    ``popularity``. Equal popularity values have no defined order in Qdrant's
    ``order_by``, so tied items may swap ranks between backends."""
