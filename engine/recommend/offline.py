"""The recommend first stage replicated in numpy: the same candidates, without a store.

Why: choosing the fusion settings on a catalog's validation split needs each
user's ranking under hundreds of settings, and training a re-ranker needs
first-stage candidates from models that never saw the held-out items. Both
would be one store query per user and setting; here the channels are computed
once per user (a batched brute-force scan of the item vectors) and fused per
setting in numpy.

What it replicates: ``Recommender.recommend`` for a user whose history is
``history`` (item ids, oldest first, every event positive with one weight, as
``mmrec train-seq`` reads a log), under the default ``"profile"`` strategy, no
context, no explicit items (``engine.recommend.channels`` and ``recommender``):

* events of items outside the catalog are dropped (the engine refuses them);
  every item of the history is seen, so excluded from every channel;
* the examples are the distinct items of the last ``max_events`` events, each at
  its latest position; each behaviour model (``behaviour``, then
  ``cooccurrence``) encodes them into a query, and its channel is the
  ``candidates`` unseen items of highest cosine among the items with its vector;
* the content channel's query is the profile vector
  ``S = sum_p decay ** (age_p) * v(item_p)`` over every event (``v`` the item's
  unit content vector, ``decay`` per newer event; ``profiles.half_life_days`` is
  not replicated: histories carry no times), ranked by cosine the same way;
* a channel with a zero query, or weight 0, is left out; one channel is its own
  ranking; more are fused by Qdrant's RRF or DBSF (docs/ARCHITECTURE.md, "Fusion
  and IDF, exactly"), RRF in float32 in channel order as Qdrant sums it;
* a list shorter than the limit is topped up with the most popular unseen items
  (when ``popularity`` is given), equal popularity in point id order as the store
  gives them.

Where the two may differ: the store's HNSW is approximate on large catalogs
(small ones are scanned exactly), cosines agree to float rounding, and Qdrant
leaves fused ties unordered while here they go by first appearance (channel
order, then rank). ``tests/test_offline_stage.py`` holds the two to the same
rankings on a real store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from engine.behaviour import BehaviourModel
from engine.config import ProfileSettings, RecommendSettings
from engine.domain import BEHAVIOUR_CHANNELS, DEFAULT_TENANT, FUSED, Fusion, InvalidInput, point_id

__all__ = ["ChannelList", "FusionSettings", "OfflineFirstStage", "UserLists", "dbsf_normalise",
           "rrf_contributions"]

_BATCH = 256


@dataclass(frozen=True)
class FusionSettings:
    """How the history channels' lists become one: per-channel weight (0 = off), RRF k, fusion.

    A channel not named in ``weights`` has weight 1, as in a request. DBSF ignores
    the weights except that 0 still switches a channel off (Qdrant's DBSF has none).
    """

    weights: dict[str, float] = field(default_factory=dict)
    rrf_k: int = 10
    fusion: Fusion = "rrf"

    def __post_init__(self) -> None:
        # typed fields, but values read from a file arrive unchecked: ``object`` here
        fusion, rrf_k, weights = cast(object, self.fusion), cast(object, self.rrf_k), cast(
            Mapping[str, object], self.weights)
        if fusion not in ("rrf", "dbsf"):
            raise InvalidInput(f"fusion must be 'rrf' or 'dbsf', not {fusion!r}")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1:
            raise InvalidInput(f"rrf_k must be an integer >= 1, not {rrf_k!r}")
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
                    math.isfinite(weight) and weight >= 0):
                raise InvalidInput(f"channel {name!r} weight must be a number >= 0, not {weight!r}")

    def weight(self, channel: str) -> float:
        """The channel's weight (1 when not named)."""
        return float(self.weights.get(channel, 1.0))

    def active(self, channels: Iterable[str]) -> list[str]:
        """The channels of ``channels`` (in their order) that these settings keep on."""
        return [c for c in channels if self.weight(c) > 0]

    def describe(self) -> str:
        """One line for people: fusion, k and the weights."""
        weights = ", ".join(f"{name} {weight:g}" for name, weight in self.weights.items())
        head = f"RRF k={self.rrf_k}" if self.fusion == "rrf" else "DBSF"
        return f"{head}; weights {weights or 'all 1'}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {"weights": dict(self.weights), "rrf_k": self.rrf_k, "fusion": self.fusion}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> FusionSettings:
        """Settings from :meth:`to_json` output."""
        return cls(weights={str(k): float(v) for k, v in dict(values["weights"]).items()},
                   rrf_k=int(values["rrf_k"]), fusion=cast(Fusion, str(values["fusion"])))

    @classmethod
    def from_recommend(cls, settings: RecommendSettings, channels: Iterable[str]
                       ) -> FusionSettings:
        """The configured settings (``recommend`` section), restricted to ``channels``."""
        return cls(weights={c: float(settings.weights.get(c, 1.0)) for c in channels},
                   rrf_k=settings.rrf_k, fusion=settings.fusion)

    def __str__(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True, slots=True)
class ChannelList:
    """One channel's answer for one user: catalog indices best first, and their cosines."""

    items: np.ndarray
    """int64 indices into ``OfflineFirstStage.item_ids``."""
    scores: np.ndarray
    """float32 cosine of each item with the channel's query (what the store returns)."""


@dataclass(frozen=True, slots=True)
class UserLists:
    """Every channel's list for one history, and the catalog indices it excludes."""

    channels: dict[str, ChannelList]
    seen: np.ndarray


def rrf_contributions(length: int, weight: float, k: int) -> np.ndarray:
    """Qdrant's RRF term per position, float32: ``1 / ((pos + 1) / weight + k - 1)``."""
    positions = np.arange(1, length + 1, dtype=np.float32)
    return np.float32(1.0) / (positions / np.float32(weight) + np.float32(k) - np.float32(1.0))


def dbsf_normalise(scores: np.ndarray) -> np.ndarray:
    """Qdrant's DBSF normalisation of one list: ``(s - (mean - 3 std)) / (6 std)``.

    Sample standard deviation; one score, or all equal, gives 0.5.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2:
        return np.full(len(scores), 0.5, np.float32)
    std = float(scores.std(ddof=1))
    if std == 0.0:
        return np.full(len(scores), 0.5, np.float32)
    low = float(scores.mean()) - 3 * std
    return ((scores - low) / (6 * std)).astype(np.float32)


class OfflineFirstStage:
    """The first stage over a catalog held in memory (see the module docstring).

    ``item_ids`` is the catalog; ``models`` maps behaviour channel names
    (``behaviour``, ``cooccurrence``) to models, whose vectors are taken for the
    catalog's items only; ``content`` holds the catalog's content vectors (the
    store's ``fused`` vectors, rows aligned with ``item_ids``; a zero row has
    none), or None for no content channel; ``popularity`` (aligned, > 0 for
    items the store counts as popular) tops up short lists, ties in the point id
    order of ``tenant``'s items.
    """

    def __init__(self, item_ids: Sequence[str], models: Mapping[str, BehaviourModel],
                 content: np.ndarray | None = None, *, content_channel: str = FUSED,
                 candidates: int = 200, decay: float = 0.5, max_events: int = 200,
                 popularity: np.ndarray | None = None, tenant: str = DEFAULT_TENANT) -> None:
        self.item_ids = list(item_ids)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        if len(self.index) != len(self.item_ids):
            raise InvalidInput("catalog item ids must be unique")
        if candidates < 1 or max_events < 1 or not 0.0 < decay <= 1.0:
            raise InvalidInput("candidates and max_events must be >= 1 and decay in (0, 1]")
        self.candidates, self.decay, self.max_events = candidates, decay, max_events
        self.content_channel = content_channel
        self._models: dict[str, tuple[BehaviourModel, np.ndarray, np.ndarray]] = {}
        for name in BEHAVIOUR_CHANNELS:  # the engine's query order
            if name in models:
                self._models[name] = (models[name], *self._aligned(models[name]))
        self._content: tuple[np.ndarray, np.ndarray] | None = None
        if content is not None:
            content = np.asarray(content, dtype=np.float32)
            if content.shape[0] != len(self.item_ids):
                raise InvalidInput(f"{content.shape[0]} content vectors for "
                                   f"{len(self.item_ids)} items")
            norms = np.linalg.norm(content, axis=1)
            rows = np.flatnonzero(norms > 0)
            self._content = rows, content[rows] / norms[rows, None]
        self.popularity = None if popularity is None else np.asarray(popularity, np.float64)
        self.tenant = tenant
        self._popular_order: list[int] | None = None
        self.channels: tuple[str, ...] = (*self._models, *(
            [content_channel] if self._content is not None else []))
        """The channels this stage can answer, in the engine's query order."""

    @classmethod
    def from_settings(cls, item_ids: Sequence[str], models: Mapping[str, BehaviourModel],
                      content: np.ndarray | None, recommend: RecommendSettings,
                      profiles: ProfileSettings, popularity: np.ndarray | None = None,
                      tenant: str = DEFAULT_TENANT) -> OfflineFirstStage:
        """The stage the engine runs under these settings (only the ``profile`` strategy)."""
        if recommend.strategy != "profile":
            raise InvalidInput(f"the offline first stage replicates the 'profile' strategy, "
                               f"not {recommend.strategy!r}")
        decay = 0.5 ** (1.0 / profiles.half_life_events)
        return cls(item_ids, models, content, content_channel=recommend.content_vector,
                   candidates=recommend.candidates, decay=decay,
                   max_events=profiles.max_events, popularity=popularity, tenant=tenant)

    @property
    def models(self) -> dict[str, BehaviourModel]:
        """The behaviour models this stage queries, by channel."""
        return {name: entry[0] for name, entry in self._models.items()}

    def _aligned(self, model: BehaviourModel) -> tuple[np.ndarray, np.ndarray]:
        """Catalog indices of the items the model has a vector for, and those vectors."""
        ids, vectors = model.item_vectors()
        pairs = [(self.index[item], row) for row, item in enumerate(ids) if item in self.index]
        rows = np.array([p[0] for p in pairs], dtype=np.int64)
        return rows, np.asarray(vectors, np.float32)[[p[1] for p in pairs]]

    # -- channels -----------------------------------------------------------------------------

    def channel_lists(self, histories: Sequence[Sequence[str]], *,
                      exclude: Sequence[Collection[str]] | None = None,
                      limit: int | None = None) -> list[UserLists]:
        """Every channel's top ``limit`` (default ``candidates``) unseen items per history.

        ``exclude[u]`` names more items to leave out for history ``u``.
        """
        if exclude is not None and len(exclude) != len(histories):
            raise InvalidInput("exclude needs one collection per history")
        limit = limit or self.candidates
        out: list[UserLists] = []
        for start in range(0, len(histories), _BATCH):
            known = [[i for i in h if i in self.index] for h in histories[start:start + _BATCH]]
            extra = exclude[start:start + _BATCH] if exclude is not None else [()] * len(known)
            seen = [np.array(sorted({self.index[i] for i in [*h, *more] if i in self.index}),
                             dtype=np.int64) for h, more in zip(known, extra, strict=True)]
            lists: list[dict[str, ChannelList]] = [{} for _ in known]
            examples = [self._examples(h) for h in known]
            for name, (model, rows, matrix) in self._models.items():
                queries = model.encode(examples)
                self._rank(name, queries, rows, matrix, seen, limit, lists)
            if self._content is not None:
                rows, matrix = self._content
                self._rank(self.content_channel, self._profiles(known), rows, matrix, seen,
                           limit, lists)
            out += [UserLists(c, s) for c, s in zip(lists, seen, strict=True)]
        return out

    def _examples(self, history: list[str]) -> list[str]:
        """The distinct items of the last ``max_events`` events, each at its latest position."""
        latest: dict[str, None] = {}
        for item in history[-self.max_events:]:
            latest.pop(item, None)
            latest[item] = None
        return list(latest)

    def _profiles(self, histories: list[list[str]]) -> np.ndarray:
        """Unit profile vectors ``S / |S|`` of the histories (zero rows for none)."""
        rows, matrix = cast(tuple[np.ndarray, np.ndarray], self._content)
        where = np.full(len(self.item_ids), -1, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        out = np.zeros((len(histories), matrix.shape[1]), np.float64)
        for u, history in enumerate(histories):
            found = where[[self.index[i] for i in history]] if history else np.zeros(0, np.int64)
            ages = np.arange(len(found) - 1, -1, -1, dtype=np.float64)[found >= 0]
            if len(ages):
                out[u] = (self.decay ** ages) @ matrix[found[found >= 0]]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)

    def _rank(self, name: str, queries: np.ndarray, rows: np.ndarray, matrix: np.ndarray,
              seen: list[np.ndarray], limit: int, lists: list[dict[str, ChannelList]]) -> None:
        """Each non-zero query's top ``limit`` unseen items among ``rows`` into ``lists``."""
        if not len(rows):
            return
        scores = np.full((len(queries), len(self.item_ids)), -np.inf, np.float32)
        scores[:, rows] = np.asarray(queries, np.float32) @ matrix.T
        for u, query in enumerate(queries):
            if not np.any(query):
                continue
            row = scores[u]
            row[seen[u]] = -np.inf
            top = np.argpartition(-row, min(limit, len(row) - 1))[:limit]
            top = top[np.isfinite(row[top])]
            top = top[np.lexsort((top, -row[top]))]
            if len(top):
                lists[u][name] = ChannelList(top.astype(np.int64), row[top].copy())

    # -- fusion -------------------------------------------------------------------------------

    def fuse(self, lists: UserLists, settings: FusionSettings, limit: int) -> list[int]:
        """The fused top ``limit`` catalog indices, as the store's hybrid query ranks them."""
        items, _ = self.fused_scores(lists, settings)
        ranked = items[:limit].tolist()
        return self._popular(lists.seen, ranked, limit) if len(ranked) < limit else ranked

    def fused_scores(self, lists: UserLists, settings: FusionSettings
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Every fused candidate best first, with the score the store gives it.

        One active channel keeps its own list and cosines (the store skips fusion);
        none gives empty arrays (the engine then answers with popular items).
        """
        active = [c for c in settings.active(self.channels) if c in lists.channels]
        if not active:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if len(active) == 1:
            channel = lists.channels[active[0]]
            return channel.items, channel.scores
        items = np.concatenate([lists.channels[c].items for c in active])
        parts = [self._terms(lists.channels[c], settings, c) for c in active]
        unique, first, inverse = np.unique(items, return_index=True, return_inverse=True)
        fused = np.zeros(len(unique), np.float32)
        np.add.at(fused, inverse, np.concatenate(parts))  # in channel order, as Qdrant sums
        order = np.lexsort((first, -fused))
        return unique[order], fused[order]

    @staticmethod
    def _terms(channel: ChannelList, settings: FusionSettings, name: str) -> np.ndarray:
        """A channel's fused-score terms per position under ``settings``."""
        if settings.fusion == "rrf":
            return rrf_contributions(len(channel.items), settings.weight(name), settings.rrf_k)
        return dbsf_normalise(channel.scores)

    def _popular(self, seen: np.ndarray, ranked: list[int], limit: int) -> list[int]:
        """``ranked`` topped up with the most popular items neither seen nor in it."""
        if self.popularity is None:
            return ranked
        if self._popular_order is None:
            popularity = self.popularity
            keys = [point_id(self.tenant, item) for item in self.item_ids]
            self._popular_order = sorted((i for i in range(len(keys)) if popularity[i] > 0),
                                         key=lambda i: (-popularity[i], keys[i]))
        taken = {*seen.tolist(), *ranked}
        more = [i for i in self._popular_order if i not in taken][:limit - len(ranked)]
        return ranked + more

    def candidates_for(self, histories: Sequence[Sequence[str]], settings: FusionSettings,
                       limit: int, *, exclude: Sequence[Collection[str]] | None = None
                       ) -> list[list[str]]:
        """Each history's top ``limit`` item ids, as ``Recommender.recommend`` would list them."""
        lists = self.channel_lists(histories, exclude=exclude, limit=max(limit, self.candidates))
        return [[self.item_ids[i] for i in self.fuse(user, settings, limit)] for user in lists]
