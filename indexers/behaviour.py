"""``mmrec train-seq``: learn the behavioural channels from an interaction log, tune their fusion.

Reads the user sequences (a log file, or the events recorded in the store) and
holds out each user's last item (:func:`validation_split`). Then:

1. trains the SASRec-style model of :mod:`engine.behaviour.sequential`,
   early-stopped on the held-out items, and by default trains it once more on
   every item for the best epoch count (the refit: the model that is served);
2. fits the co-occurrence embeddings of :mod:`engine.behaviour.cooccurrence` on
   the whole sequences (served), and once more without the held-out items;
3. chooses the recommend fusion (per-channel weights, 0 = off; RRF k; RRF or
   DBSF) on the held-out items with the models that never saw them (the
   early-stopped SASRec, the co-occurrence without them, the store's content
   vectors) through :mod:`engine.recommend.offline`'s replica of the first stage,
   and saves the choice as ``fusion.json`` (:mod:`engine.recommend.tuning`);
4. writes every known item's ``behaviour`` and ``cooccurrence`` vectors into the
   store and saves the served models where the engine loads them
   (``EngineConfig.behaviour_path()``), the validation ones in its
   ``validation/`` folder (for re-ranker training: candidates from models that
   did not see the targets).

Run it while no service holds the data dir (the embedded store is locked by one
process); a service started afterwards uses the new models and fusion.

Trade-offs: the refit doubles the training time, and its weights are not
checked against held-out items (its epoch count is the one that was). Without
it (``refit=False``) the served model never learns the users' latest steps,
which on MovieLens-100k cost 0.008 test NDCG@10 (see
:mod:`engine.behaviour.sequential.train`). The fusion is chosen for the
validation models and served with the refit ones, which are a little stronger;
``benchmarks/fusion_transfer.py`` measures how well the choice transfers.
The search costs seconds (one channel scan per user, then numpy per setting;
``tune_users`` caps the users scored): small beside the training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.behaviour import BehaviourModel
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialModel, SequentialSettings, train_sequential
from engine.behaviour.sequential.train import validation_split
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, COOCCURRENCE, DEFAULT_TENANT, InvalidInput, ModelUnavailable
from engine.recommend.offline import FusionSettings, OfflineFirstStage
from engine.recommend.profiles import ProfileWeights
from engine.recommend.tuning import FUSION_FILE, FusionGrid, TunedFusion, tune_fusion
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
    fusion: TunedFusion | None = None
    """The fusion chosen on validation (None: not tuned, ``fusion_note`` says why)."""
    fusion_note: str = ""


VALIDATION_DIR = "validation"
"""Folder (in the behaviour path) of the models that did not see each user's last item."""


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
    """Train, tune the fusion, store the item vectors, save everything; see the module docstring."""
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
        full = list(users.values())
        histories, targets = validation_split(full)
        searched = train_sequential(histories, settings, valid_targets=targets, progress=progress,
                                    tenant=tenant)
        model = refit_model(searched, full, progress) if refit else searched
        served: dict[str, BehaviourModel] = {BEHAVIOUR: model}
        unseen: dict[str, BehaviourModel] = {BEHAVIOUR: searched}
        if config.behaviour.cooccurrence_dim:
            dim, decay = config.behaviour.cooccurrence_dim, config.behaviour.cooccurrence_decay
            served[COOCCURRENCE] = CooccurrenceModel.fit(full, dim=dim, decay=decay,
                                                         tenant=tenant)
            unseen[COOCCURRENCE] = CooccurrenceModel.fit(histories, dim=dim, decay=decay,
                                                         tenant=tenant)
        fusion, note = tune_on_validation(engine, config, tenant, unseen, full, histories,
                                          targets)
        folder = config.behaviour_path()
        written = engine.use_behaviour(BEHAVIOUR, model, tenant)
        for name in served.keys() - {BEHAVIOUR}:
            engine.use_behaviour(name, served[name], tenant)
        save_models(folder, served, unseen, fusion)
    finally:
        engine.close()
    facts = model.facts
    return BehaviourSummary(
        source=source, users=len(users), interactions=sum(len(s) for s in full),
        items_in_model=len(model.item_ids), epochs_run=facts.epochs_run,
        refit_epochs=facts.refit_epochs, best_valid_ndcg=facts.best_valid_ndcg,
        train_seconds=facts.train_seconds, vectors_written=written, model_path=folder,
        skipped_rows=stats.skipped, fusion=fusion, fusion_note=note)


def refit_model(searched: SequentialModel, sequences: Sequence[Sequence[str]], progress: bool
                ) -> SequentialModel:
    """A fresh model trained on every item for the early-stopped model's best epoch count.

    What ``train_sequential(..., refit=True)`` does, keeping the early-stopped model
    too (the fusion is tuned with it); the facts are the search run's, plus the refit.
    Without validation users there is nothing to refit for: the model is kept.
    """
    facts = searched.facts
    if facts.best_valid_ndcg is None:
        return searched
    again = train_sequential(sequences, replace(searched.settings, epochs=facts.best_epoch),
                             progress=progress)
    return SequentialModel(again.network, again.item_ids, searched.settings, replace(
        facts, refit_epochs=facts.best_epoch,
        train_seconds=round(facts.train_seconds + again.facts.train_seconds, 2)),
        tenant=searched.tenant)


def tune_on_validation(engine: Engine, config: EngineConfig, tenant: str,
                       models: Mapping[str, BehaviourModel], sequences: Sequence[Sequence[str]],
                       histories: Sequence[Sequence[str]], targets: Sequence[str | None]
                       ) -> tuple[TunedFusion | None, str]:
    """The fusion chosen on the held-out items, or None and why it was not tuned.

    The catalog is the log's items that the store holds (their content vectors
    from it); items the log never names can only come through the content
    channel, and are left out here. At most ``behaviour.tune_users`` validation
    users are scored (a fixed random sample).
    """
    if not config.behaviour.tune_fusion:
        return None, "behaviour.tune_fusion = false"
    if config.recommend.strategy != "profile":
        return None, (f"recommend.strategy is {config.recommend.strategy!r}; the tuning "
                      f"replicates the 'profile' strategy only")
    catalog, content = catalog_vectors(engine, config, tenant, sequences)
    where = {item: row for row, item in enumerate(catalog)}
    pairs = [(h, t) for h, t in zip(histories, targets, strict=True)
             if t is not None and t in where]
    if not pairs:
        return None, f"no held-out item is indexed in the store (tenant {tenant!r})"
    if len(pairs) > config.behaviour.tune_users:
        keep = np.random.default_rng(0).choice(len(pairs), config.behaviour.tune_users,
                                               replace=False)
        pairs = [pairs[i] for i in sorted(keep.tolist())]
    stage = OfflineFirstStage.from_settings(catalog, models, content, config.recommend,
                                            config.profiles, tenant=tenant)
    defaults = FusionSettings.from_recommend(config.recommend, stage.channels)
    tuned = tune_fusion(stage, [h for h, _ in pairs], [t for _, t in pairs], defaults,
                        grid=FusionGrid())
    log.info("fusion tuned on validation: %s", tuned.summary())
    return tuned, ""


def catalog_vectors(engine: Engine, config: EngineConfig, tenant: str,
                    sequences: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """The log's items that the store holds (sorted), and their content vectors (rows aligned)."""
    ids = sorted({item for seq in sequences for item in seq})
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), 1000):
        found.update(engine.store.vectors(ids[start:start + 1000], tenant=tenant,
                                          using=config.recommend.content_vector))
    catalog = [i for i in ids if i in found]
    width = next(iter(found.values())).shape[0] if found else 1
    return catalog, np.stack([found[i] for i in catalog]) if catalog else np.zeros((0, width))


def validation_stage(engine: Engine, config: EngineConfig, tenant: str,
                     sequences: Sequence[Sequence[str]]) -> OfflineFirstStage:
    """The first stage of the saved validation models (blind to each user's last item).

    For training on the held-out items (re-ranker candidates) after ``mmrec
    train-seq``: the models of ``validation/``, the catalog and content vectors
    of :func:`catalog_vectors`. ``ModelUnavailable`` when train-seq has not run, or
    ran for another tenant (its models know that tenant's items, not these).
    """
    folder = config.behaviour_path() / VALIDATION_DIR
    sasrec = SequentialModel.load(folder)
    models: dict[str, BehaviourModel] = {BEHAVIOUR: sasrec}
    if (folder / "cooccurrence.json").exists():
        models[COOCCURRENCE] = CooccurrenceModel.load(folder)
    if sasrec.tenant != tenant:
        raise ModelUnavailable(f"the models in {folder} were trained for tenant "
                               f"{sasrec.tenant!r}, not {tenant!r}; run mmrec train-seq "
                               f"--tenant {tenant} first")
    catalog, content = catalog_vectors(engine, config, tenant, sequences)
    return OfflineFirstStage.from_settings(catalog, models, content, config.recommend,
                                           config.profiles, tenant=tenant)


def save_models(folder: Path, served: Mapping[str, BehaviourModel],
                unseen: Mapping[str, BehaviourModel], fusion: TunedFusion | None) -> None:
    """The served models and the fusion where the engine loads them; the validation ones below.

    A fusion file of earlier models is removed when this run chose none, so the
    engine never applies settings tuned for other models.
    """
    for target, models in ((folder, served), (folder / VALIDATION_DIR, unseen)):
        for model in models.values():
            if isinstance(model, SequentialModel | CooccurrenceModel):
                model.save(target)
    if fusion is not None:
        fusion.save(folder / FUSION_FILE)
    else:
        (folder / FUSION_FILE).unlink(missing_ok=True)
