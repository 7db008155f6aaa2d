"""The recommend channels: a user's history (and context) as one query per named vector.

* **behaviour** / **cooccurrence**: each behaviour model serving the request's
  tenant encodes the latest positive items into a query on its named vector (a
  model trained on another tenant's log says nothing here: ids name different
  items in different tenants);
* **content** (the ``fused`` vector by default): the decayed profile vector, the
  mean of the recent positives, or Qdrant's recommend strategies over the
  recent positives and negatives;
* **context** text, when given: its ``text``/``clip``/``lexical`` channels; it
  also steers the content query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np

from engine.behaviour import ServedModels
from engine.config import RecommendSettings
from engine.domain import (
    BEHAVIOUR_CHANNELS,
    CLIP,
    FUSED,
    LEXICAL,
    TEXT,
    ChannelQuery,
    RecommendRequest,
    RecommendStrategy,
    RecommendVectors,
    SparseVector,
)
from engine.encoders.vectoriser import Vectoriser
from engine.recommend.profiles import ProfileBook, UserProfile
from engine.store import VectorStore

ChannelVector = np.ndarray | SparseVector | RecommendVectors


@dataclass(frozen=True, slots=True)
class Examples:
    """What the request says about taste: positives (oldest first), negatives, seen items."""

    profile: UserProfile | None
    positives: list[str]
    negatives: list[str]
    seen: list[str]


class RecommendChannels:
    """Builds one channel query per source of evidence that has something to say."""

    def __init__(self, profiles: ProfileBook, store: VectorStore, vectoriser: Vectoriser,
                 models: ServedModels, settings: RecommendSettings, *,
                 tuned: Mapping[str, RecommendSettings] | None = None) -> None:
        self.profiles, self.store, self.vectoriser = profiles, store, vectoriser
        self.models, self.settings = models, settings
        self.tuned = dict(tuned or {})
        """Tenant -> its settings with the fusion train-seq tuned on its log over them."""

    def settings_for(self, tenant: str) -> RecommendSettings:
        """The settings ``tenant``'s requests start from: its tuned ones, else the configured."""
        return self.tuned.get(tenant, self.settings)

    def weights(self, request: RecommendRequest) -> dict[str, float]:
        """Per-channel weights: the request's over its tenant's settings; 0 switches off."""
        return {**self.settings_for(request.tenant).weights, **request.weights}

    def build(self, examples: Examples, request: RecommendRequest, strategy: str,
              limit: int) -> list[ChannelQuery]:
        """One prefetch per channel that has a query and a weight > 0."""
        weights = self.weights(request)
        candidates = max(request.candidates or self.settings.candidates, limit)
        queries: dict[str, ChannelVector] = {}
        context_fused = None
        if request.context:
            encoded = self.vectoriser.query(request.context, None, deadline=request.deadline)
            fused = encoded.vectors.get(FUSED)
            context_fused = fused if isinstance(fused, np.ndarray) else None
            queries.update((name, vector) for name, vector in encoded.vectors.items()
                           if name in (TEXT, CLIP, LEXICAL))
        if examples.positives:
            models = self.models.for_tenant(request.tenant)
            for name in BEHAVIOUR_CHANNELS:  # SASRec's channel first, then co-occurrence's
                model = models.get(name)
                vector = model.encode([examples.positives])[0] if model is not None else None
                if vector is not None and np.any(vector):
                    queries[name] = vector
        content = self._content(examples, request, strategy, context_fused)
        if content is not None:
            queries[self.settings.content_vector] = content
        return [ChannelQuery(name, vector, candidates, weights.get(name, 1.0))
                for name, vector in queries.items() if weights.get(name, 1.0) > 0]

    def _content(self, examples: Examples, request: RecommendRequest, strategy: str,
                 context: np.ndarray | None) -> np.ndarray | RecommendVectors | None:
        """The content channel's query under ``strategy`` (None without examples)."""
        recent = self.profiles.settings.recent
        pos_ids, neg_ids = examples.positives[-recent:], examples.negatives[-recent:]
        found = self.store.vectors([*pos_ids, *neg_ids], tenant=request.tenant,
                                   using=self.settings.content_vector)
        pos = [found[i] for i in pos_ids if i in found]
        neg = [found[i] for i in neg_ids if i in found]
        if strategy in ("best_score", "sum_scores"):
            if context is not None:
                pos.append(context)
            if not pos:
                return None
            return RecommendVectors(pos, neg, cast(RecommendStrategy, strategy))
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
