"""Hybrid search, backend-neutral: validating a ``HybridQuery`` and assembling its hits.

Each backend turns a :class:`HybridPlan` into ONE Qdrant request: a prefetch per
channel (its query, its limit, the filter) fused by RRF or DBSF, with the same
filter on the outer query. A channel's query is a nearest search on its vector,
or Qdrant's recommend query for an ``engine.domain.RecommendVectors`` (the channel
score is then the recommend score). With ``with_channel_hits`` the request goes in
one batch together with each channel's own query (same filter and limit), so
the per-channel ranks reported are the ranks the fusion used. A plan with one
channel skips fusion: its hits carry that channel's own scores.

With a ``popularity_weight`` the request nests one level deeper: the outer RRF
(``rrf_k``, weights ``[1, popularity_weight]``) fuses A, the channels' fusion (or
the one channel) keeping :attr:`HybridPlan.candidate_limit` candidates, and B, the
same A re-ordered by Qdrant's ``order_by`` on the popularity payload field
(descending; items without a popularity drop out of B). The answer stays among A's
candidates. Its per-channel batch adds B alone, reported as the channel
``popularity`` with the popularity value as score.

Fusion, as Qdrant defines it (checked on qdrant-edge and in qdrant-client's
local mode, ``qdrant_client/hybrid/fusion.py``), with ``rank`` 1-based:

* RRF: ``score = sum over channels of 1 / (k - 1 + rank / weight)``; with weight 1
  that is ``1 / (k + rank - 1)``, i.e. ``1 / (k + position)`` for a 0-based position.
* DBSF: per channel, ``(score - (mean - 3 std)) / (6 std)`` with the sample standard
  deviation (n - 1) of that channel's hits; a channel with one hit, or all hits
  equal, gives 0.5; the normalised scores are summed. Weights do not apply.

Sparse channels compute IDF over the tenant's items only (``idf_corpus`` is the
tenant filter): one tenant's catalog does not shift another's scores, and the
statistics are those of live points on both backends (qdrant-edge's global IDF
keeps counting deleted and replaced points until their segment is vacuumed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from engine.domain import (
    POPULARITY,
    ChannelHit,
    ChannelQuery,
    FusedHit,
    HybridQuery,
    InvalidInput,
    RecommendVectors,
)
from engine.store.base import payload_to_record
from engine.store.filters import FilterPlan, plan_filter
from engine.store.schema import (
    VectorSchema,
    VectorValues,
    any_vector_values,
    check_dense_name,
    check_limit,
    vector_values,
)

RECOMMEND_STRATEGIES = ("best_score", "sum_scores")


class RecommendValues(NamedTuple):
    """A validated recommend query: dense example vectors and the strategy's name."""

    positives: list[list[float]]
    negatives: list[list[float]]
    strategy: str


class ChannelPlan(NamedTuple):
    """One validated channel: vector name, query (vector or recommend), candidate limit,
    RRF weight, sparse or not."""

    using: str
    vector: VectorValues | RecommendValues
    limit: int
    weight: float
    sparse: bool


@dataclass(frozen=True, slots=True)
class HybridPlan:
    """A validated hybrid query, ready for a backend to turn into one request."""

    channels: tuple[ChannelPlan, ...]
    limit: int
    fusion: str
    rrf_k: int
    filter: FilterPlan
    with_channel_hits: bool
    popularity_weight: float = 0.0

    @property
    def fused(self) -> bool:
        """Whether the query fuses several channels (one channel is a plain nearest search)."""
        return len(self.channels) > 1

    @property
    def popularity(self) -> bool:
        """Whether the candidates' popularity ranking is fused in (``popularity_weight > 0``)."""
        return self.popularity_weight > 0

    @property
    def plain(self) -> bool:
        """Whether the request is one plain nearest search: one channel, no popularity."""
        return not self.fused and not self.popularity

    @property
    def candidate_limit(self) -> int:
        """How many candidates the channels' fusion keeps before popularity re-ranks them:
        the largest channel limit or ``limit``, whichever is more (one channel: its limit)."""
        if not self.fused:
            return self.channels[0].limit
        return max(self.limit, *(channel.limit for channel in self.channels))

    @property
    def result_limit(self) -> int:
        """How many hits the request asks for (one channel cannot bring more than its limit)."""
        return self.limit if self.fused else min(self.limit, self.channels[0].limit)

    @property
    def weights(self) -> list[float]:
        """The RRF weight of each channel, in prefetch order."""
        return [channel.weight for channel in self.channels]

    @property
    def popularity_weights(self) -> list[float]:
        """The outer RRF's weights: the candidates' fused ranking, then their popularity's."""
        return [1.0, self.popularity_weight]

    @property
    def ranking_names(self) -> list[str]:
        """The rankings reported per hit, in batch order: each channel, then popularity."""
        names = [channel.using for channel in self.channels]
        return [*names, POPULARITY] if self.popularity else names


# The checks below take ``object``: a query's fields are typed, but its caller may not be
# type-checked, and this is where a wrong value is reported.


def _check_rrf_k(rrf_k: object) -> None:
    """``InvalidInput`` unless ``rrf_k`` is an integer >= 1 (a bool is not one)."""
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1:
        raise InvalidInput(f"rrf_k must be an integer >= 1, got {rrf_k!r}")


def _channel_weight(using: str, weight: object) -> float:
    """A channel's RRF weight as given; ``InvalidInput`` unless a finite number > 0."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
        math.isfinite(weight) and weight > 0
    ):
        raise InvalidInput(f"channel {using!r} weight must be > 0, got {weight!r}")
    return weight


def _popularity_weight(weight: object) -> float:
    """The popularity ranking's RRF weight; ``InvalidInput`` unless a finite number >= 0."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
        math.isfinite(weight) and weight >= 0
    ):
        raise InvalidInput(f"popularity_weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


def plan_hybrid(schema: VectorSchema, query: HybridQuery) -> HybridPlan | None:
    """Validate ``query`` against the schema; ``None`` when no channel can match anything.

    A sparse channel with an empty vector (a query of stopwords only) is dropped:
    it would find nothing and contributes nothing to either fusion.
    """
    if query.fusion not in ("rrf", "dbsf"):
        raise InvalidInput(f"fusion must be 'rrf' or 'dbsf', got {query.fusion!r}")
    _check_rrf_k(query.rrf_k)
    popularity_weight = _popularity_weight(query.popularity_weight)
    limit = check_limit(query.limit)
    if not query.channels:
        raise InvalidInput("a hybrid query needs at least one channel")
    names = [channel.using for channel in query.channels]
    if len(set(names)) != len(names):
        raise InvalidInput(f"each vector may be queried once per hybrid query, got {names}")
    if popularity_weight > 0 and POPULARITY in names:
        raise InvalidInput(f"a channel may not be named {POPULARITY!r} with a popularity_weight")
    item_filter = plan_filter(query.tenant, query.filter)
    channels: list[ChannelPlan] = []
    for channel in query.channels:
        weight = _channel_weight(channel.using, channel.weight)
        channel_limit = check_limit(channel.limit, f"channel {channel.using!r} limit")
        vector = _channel_vector(schema, channel)
        if vector is not None:
            sparse = channel.using in schema.sparse
            channels.append(ChannelPlan(channel.using, vector, channel_limit, weight, sparse))
    if not channels:
        return None
    return HybridPlan(
        tuple(channels), limit, query.fusion, query.rrf_k, item_filter, query.with_channel_hits,
        popularity_weight,
    )


def _examples(
    schema: VectorSchema, using: str, kind: str, vectors: Iterable[Any]
) -> list[list[float]]:
    """The validated positive or negative examples of a recommend channel.

    ``vectors`` should be a sequence of vectors; any iterable is taken and each element
    checked, except a string, bytes or one vector (an array of under 2 dimensions)."""
    if isinstance(vectors, str | bytes) or (isinstance(vectors, np.ndarray) and vectors.ndim < 2):
        raise InvalidInput(f"recommend {kind} on {using!r} must be a sequence of vectors")
    try:
        examples = list(vectors)
    except TypeError:
        raise InvalidInput(f"recommend {kind} on {using!r} must be a sequence of vectors") from None
    return [vector_values(schema, using, example) for example in examples]


def _recommend_values(
    schema: VectorSchema, using: str, query: RecommendVectors
) -> RecommendValues:
    """Validate a recommend channel: a dense vector, one example or more, a known strategy.

    Qdrant itself refuses a recommend query without examples (qdrant-client) or
    scores every point 0 (qdrant-edge); both accept negatives alone.
    """
    if using in schema.sparse:
        raise InvalidInput(f"recommend queries work on dense vectors only; {using!r} is sparse")
    check_dense_name(schema, using)
    if query.strategy not in RECOMMEND_STRATEGIES:
        raise InvalidInput(
            f"recommend strategy must be 'best_score' or 'sum_scores', got {query.strategy!r}"
        )
    positives = _examples(schema, using, "positives", query.positives)
    negatives = _examples(schema, using, "negatives", query.negatives)
    if not positives and not negatives:
        raise InvalidInput(
            f"a recommend query on {using!r} needs at least one positive or negative example"
        )
    return RecommendValues(positives, negatives, query.strategy)


def _channel_vector(
    schema: VectorSchema, channel: ChannelQuery
) -> VectorValues | RecommendValues | None:
    """The validated query of a channel; ``None`` for an empty sparse vector."""
    if isinstance(channel.vector, RecommendVectors):
        return _recommend_values(schema, channel.using, channel.vector)
    return any_vector_values(schema, channel.using, channel.vector)


ScoredId = tuple[str, float]
"""A point id (as a string) and its score."""


def _channel_standing(
    plan: HybridPlan, rankings: Sequence[Sequence[ScoredId]]
) -> dict[str, dict[str, ChannelHit]]:
    """Point id -> channel name -> rank (1-based) and score, from each channel's own ranking
    (and the popularity ranking, if the plan has one)."""
    standing: dict[str, dict[str, ChannelHit]] = {}
    for name, ranking in zip(plan.ranking_names, rankings, strict=True):
        for rank, (point, score) in enumerate(ranking, start=1):
            standing.setdefault(point, {})[name] = ChannelHit(rank, float(score))
    return standing


def fused_hits(
    plan: HybridPlan,
    points: Sequence[tuple[str, Mapping[str, Any] | None, float]],
    rankings: Sequence[Sequence[ScoredId]] | None = None,
) -> list[FusedHit]:
    """``FusedHit`` objects from the fused points (id, payload, score), best first.

    ``rankings`` are the channels' own results, then the popularity ranking if the plan
    has one, scored by popularity (for a plain one-channel plan, the fused points
    themselves serve). Equal scores are ordered by item id, so both
    backends return ties in one order. Points without our payload are skipped.
    """
    if plan.with_channel_hits and rankings is None:
        rankings = [[(point, score) for point, _, score in points]]
    standing = _channel_standing(plan, rankings) if plan.with_channel_hits and rankings else {}
    hits: list[FusedHit] = []
    for point, payload, score in points:
        if not payload or "item_id" not in payload or "tenant" not in payload:
            continue
        value = float(score)
        hits.append(FusedHit(
            record=payload_to_record(payload),
            score=-math.inf if math.isnan(value) else value,
            channels=standing.get(point, {}),
        ))
    hits.sort(key=lambda hit: (-hit.score, hit.record.id))
    return hits


def hits_per_plan(plans: Sequence[HybridPlan], sizes: Sequence[int],
                  results: Sequence[Sequence[Any]]) -> list[list[FusedHit]]:
    """Each plan's hits from one batched answer of both backends: ``results`` holds the
    points of every sub-request in order (``sizes[i]`` of them are plan ``i``'s: its fused
    request, then its rankings); a point has ``id``, ``payload``, ``score`` and
    ``order_value``."""
    hits, start = [], 0
    for plan, size in zip(plans, sizes, strict=True):
        first, *rankings = results[start:start + size]
        start += size
        points = [(str(p.id), p.payload, p.score) for p in first]
        # A nearest ranking scores by similarity, the popularity ranking by popularity.
        ranked = [[(str(p.id), p.score if p.order_value is None else p.order_value)
                   for p in ranking] for ranking in rankings]
        hits.append(fused_hits(plan, points, ranked or None))
    return hits
