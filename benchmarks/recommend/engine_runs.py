"""The mmrec rows of the recommendation benchmark: the real engine, fed the real events.

The MovieLens films are indexed into an embedded store with the packaged text
encoder (MiniLM; CLIP is off: there are no weights here), every training
interaction goes through ``Engine.record_events`` (the same path as the
RecordEvents RPC) with its real timestamp, and each user's list comes from
``Engine.recommend`` with the seen items excluded by the engine, which is the
protocol's history masking. Moving from the validation to the test stage is one
more live event per user (the validation item); the co-occurrence channel is
fitted on what each stage may see.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from benchmarks.recommend.protocol import Split, Stage
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialModel
from engine.config import EngineConfig
from engine.domain import (
    BEHAVIOUR,
    COOCCURRENCE,
    DEFAULT_TENANT,
    Event,
    Fusion,
    ItemInput,
    ItemRecord,
    RecommendRequest,
)
from engine.runtime.engine import Engine
from indexers.datasets import movielens_dir, movielens_items

KIND = "view"
"""Every rating is an interaction of equal weight, as the protocol says."""


def item_id(raw: str) -> str:
    """The catalog id of a MovieLens item (``indexers.datasets.movielens_items``)."""
    return f"ml-{raw}"


class EngineHarness:
    """One engine over the MovieLens catalog whose profiles follow the protocol's stages."""

    def __init__(self, split: Split, work: Path, *, load_reranker: bool, progress: bool = True
                 ) -> None:
        """Index the catalog and record the training events into a fresh store under ``work``."""
        self.split, self.progress = split, progress
        if (work / "store").exists():  # a previous run's events would count twice
            shutil.rmtree(work / "store")
        self.config = EngineConfig.load(
            clip={"enabled": False}, store={"data_dir": work / "store"},
            behaviour={"path": work / "no-model"}, rerank={"model": "" if not load_reranker
                                                            else EngineConfig().rerank.model})
        self.engine = Engine.from_config(self.config, load_reranker=load_reranker)
        self.ids = [item_id(raw) for raw in split.data.item_ids]
        self.index = {item: i for i, item in enumerate(self.ids)}
        self.stage: Stage = "valid"
        self._index_catalog()
        self._record(lambda u: (split.train[u], split.data.timestamps[u][:len(split.train[u])]))
        self.fit_cooccurrence()

    def _index_catalog(self) -> None:
        """Every film of ml-100k.item (also those no kept user rated)."""
        rows = list(movielens_items(movielens_dir()))
        batch = 64
        for start in tqdm(range(0, len(rows), batch), desc="index films", unit="batch",
                          disable=not self.progress):
            self.engine.upsert([ItemInput(ItemRecord(
                id=r["id"], title=r["title"], text=r["text"],
                attributes={"genres": r["genres"], "year": r["year"]}))
                for r in rows[start:start + batch]])
        self.engine.store.optimize(wait=True)

    def _record(self, items_of) -> None:  # type: ignore[no-untyped-def]
        """Send each user's events (item indices, timestamps) through the engine."""
        data = self.split.data
        events: list[Event] = []
        for u in tqdm(range(self.split.n_users), desc=f"events ({self.stage})", unit="user",
                      disable=not self.progress):
            items, stamps = items_of(u)
            events += [Event(f"u{data.user_ids[u]}", self.ids[i], KIND, 0.0, float(t))
                       for i, t in zip(items, stamps, strict=True)]
            if len(events) >= 5000:
                self._send(events)
        self._send(events)

    def _send(self, events: list[Event]) -> None:
        outcome = self.engine.record_events(events)
        if outcome.rejected:
            raise RuntimeError(f"the engine refused benchmark events: {outcome.rejected[:3]}")
        events.clear()

    def advance_to_test(self) -> None:
        """Record each user's validation item: the test stage's history."""
        if self.stage == "test":
            return
        self.stage = "test"
        stamps = self.split.data.timestamps
        self._record(lambda u: ([self.split.valid[u]], [stamps[u][len(self.split.train[u])]]))
        self.fit_cooccurrence()

    def use_model(self, model: SequentialModel) -> None:
        """Serve this seed's behaviour model."""
        self.engine.use_behaviour(BEHAVIOUR, model, DEFAULT_TENANT)

    def fit_cooccurrence(self) -> None:
        """Fit and serve the co-occurrence channel on what the current stage may see."""
        config = self.config.behaviour
        sequences = [[self.ids[i] for i in h] for h in self.split.history(self.stage)]
        model = CooccurrenceModel.fit(sequences, dim=config.cooccurrence_dim,
                                      decay=config.cooccurrence_decay)
        self.engine.use_behaviour(COOCCURRENCE, model, DEFAULT_TENANT)

    def rankings(self, weights: Mapping[str, float], *, users: Sequence[int] | None = None,
                 top_k: int = 50, rerank: bool = False, budget_ms: int = 60_000,
                 fusion: Fusion | None = None, rrf_k: int = 0, label: str = ""
                 ) -> dict[int, list[int]]:
        """Each user's recommended item indices through ``Engine.recommend``.

        ``fusion`` and ``rrf_k`` override the engine's settings (0 / None: keep them).
        """
        data, out = self.split.data, {}
        chosen = range(self.split.n_users) if users is None else users
        for u in tqdm(chosen, desc=label or "recommend", unit="user", disable=not self.progress):
            result = self.engine.recommend(RecommendRequest(
                tenant=DEFAULT_TENANT, user_id=f"u{data.user_ids[u]}", top_k=top_k,
                weights=dict(weights), rerank=rerank, budget_ms=budget_ms, fusion=fusion,
                rrf_k=rrf_k))
            out[u] = [self.index[h.record.id] for h in result.hits if h.record.id in self.index]
        return out

    def close(self) -> None:
        """Close the engine's stores."""
        self.engine.close()
