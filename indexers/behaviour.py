"""``mmrec train-seq``: learn the behavioural channel from an interaction log.

Reads the user sequences (a log file, or the events recorded in the store),
trains the SASRec-style model of :mod:`engine.behaviour.sequential` with each user's last
item held out for early stopping (then, by default, once more on every item for
the best epoch count), fits the co-occurrence embeddings of
:mod:`engine.behaviour.cooccurrence` on the whole sequences, writes every known item's
``behaviour`` and ``cooccurrence`` vectors into the store, and saves both
where the engine loads them (``EngineConfig.behaviour_path()``). Run it while
no service holds the data dir (the embedded store is locked by one process); a
service started afterwards uses the new models.

Trade-off: the refit doubles the training time, and its weights are not
checked against held-out items (its epoch count is the one that was). Without
it (``refit=False``) the served model never learns the users' latest steps,
which on MovieLens-100k cost 0.008 test NDCG@10 (see :mod:`engine.behaviour.sequential.train`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialSettings, train_sequential
from engine.behaviour.sequential.train import validation_split
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, COOCCURRENCE, DEFAULT_TENANT, InvalidInput
from engine.recommend.profiles import ProfileWeights
from engine.runtime.engine import Engine
from indexers.interactions import LogStats, read_events, sequences

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BehaviourSummary:
    """What a training run did: data, model quality on held-out items, vectors written."""

    source: str
    users: int
    interactions: int
    items_in_model: int
    epochs_run: int
    refit_epochs: int
    best_valid_ndcg: float | None
    train_seconds: float
    vectors_written: int
    model_path: Path
    skipped_rows: int = 0


def log_sequences(path: Path, config: EngineConfig, tenant: str, stats: LogStats
                  ) -> dict[str, list[str]]:
    """Users' positive items in time order from a log file (negative kinds left out)."""
    weights = ProfileWeights(config.profiles)

    def positive(kind: str, value: float) -> bool:
        try:
            return weights.weight(kind, value) > 0
        except InvalidInput:
            stats.skip(0, f"unknown kind {kind!r}")
            return False

    events = (e for e in read_events(path, tenant=tenant, stats=stats)
              if positive(e.kind, e.value))
    return sequences(events)


def train_behaviour(config: EngineConfig, log_file: Path | None, *,
                    tenant: str = DEFAULT_TENANT, settings: SequentialSettings | None = None,
                    refit: bool = True, progress: bool = True) -> BehaviourSummary:
    """Train, store the item vectors, save the model; see the module docstring."""
    settings = replace(settings or SequentialSettings(), dim=config.behaviour.dim)
    stats = LogStats()
    engine = Engine.from_config(config, load_reranker=False)
    try:
        if log_file is not None:
            users = log_sequences(log_file, config, tenant, stats)
            source = str(log_file)
        else:
            users = dict(engine.profiles.histories(tenant))
            source = f"events recorded in the store (tenant {tenant!r})"
        if not users:
            raise InvalidInput(f"no interactions found in {source}")
        histories, targets = validation_split(list(users.values()))
        model = train_sequential(histories, settings, valid_targets=targets, refit=refit,
                                 progress=progress)
        written = engine.use_behaviour(BEHAVIOUR, model, tenant)
        folder = config.behaviour_path()
        model.save(folder)
        if config.behaviour.cooccurrence_dim:
            together = CooccurrenceModel.fit(list(users.values()),
                                             dim=config.behaviour.cooccurrence_dim,
                                             decay=config.behaviour.cooccurrence_decay)
            engine.use_behaviour(COOCCURRENCE, together, tenant)
            together.save(folder)
    finally:
        engine.close()
    facts = model.facts
    return BehaviourSummary(
        source=source, users=len(users), interactions=sum(len(s) for s in users.values()),
        items_in_model=len(model.item_ids), epochs_run=facts.epochs_run,
        refit_epochs=facts.refit_epochs, best_valid_ndcg=facts.best_valid_ndcg,
        train_seconds=facts.train_seconds,
        vectors_written=written, model_path=folder, skipped_rows=stats.skipped)

