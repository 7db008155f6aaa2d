"""``mmrec train-rerank``: train the listwise LLM re-ranker on the catalog's own interactions.

Run after ``mmrec train-seq``. From each user's sequence (a log file, or the
events recorded in the store) it takes two cut points:

- validation: the last item, given everything before it (as ``train-seq``);
- training: the second-to-last item, given everything before that.

Leakage: the served behaviour models were fitted on every event, so their
candidates for those cut points would be easier than at serving time. The
candidates therefore come from a *shadow* first stage fitted on each sequence
without its last two items (SASRec for the served model's epoch count, the
co-occurrence embeddings, and the content vectors from the store), fused with
the served fusion settings by :class:`~engine.recommend.offline.OfflineFirstStage`.
Neither the training nor the validation targets were seen by it.

The re-ranker learns (LoRA, :mod:`engine.rerank.training`), its blend weight
with the first stage is chosen on validation, and the artefact is saved where
the engine loads it (``EngineConfig.rerank_path()``), with its provenance.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from engine.behaviour import BehaviourModel
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialSettings, train_sequential
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, COOCCURRENCE, DEFAULT_TENANT, InvalidInput, ItemRecord
from engine.recommend.offline import FusionSettings, OfflineFirstStage
from engine.rerank.artifact import RerankArtifact, model_fingerprint
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.loading import RerankerSpec, load_causal_lm
from engine.rerank.prompt import PromptSettings
from engine.rerank.training import (
    RerankExample,
    TrainSettings,
    choose_blend,
    lora_model,
    planned_steps,
    position_bias,
    score_lists,
    train_listwise,
)
from engine.runtime.engine import Engine
from engine.runtime.rerankers import current_provenance
from indexers.behaviour import catalog_vectors, log_sequences
from indexers.interactions import LogStats

log = logging.getLogger(__name__)
CANDIDATES = 20


@dataclass(frozen=True, slots=True)
class RerankSummary:
    """What a run did, for the command's last line."""

    source: str
    users: int
    train_examples: int
    valid_examples: int
    artifact: RerankArtifact
    path: Path


Pairs = list[tuple[list[str], str]]
"""(history, target) cut points."""


def cut_points(sequences: list[list[str]], known: set[str]
               ) -> tuple[list[list[str]], Pairs, Pairs]:
    """Shadow sequences, training (history, target) and validation (history, target) pairs.

    Users need three known items: one of history, one to train on, one to validate.
    """
    shadow, train, valid = [], [], []
    for events in sequences:
        events = [e for e in events if e in known]
        if len(events) < 3:
            continue
        shadow.append(events[:-2])
        train.append((events[:-2], events[-2]))
        valid.append((events[:-1], events[-1]))
    return shadow, train, valid


def shadow_models(shadow: list[list[str]], engine: Engine, config: EngineConfig,
                  epochs: int | None, progress: bool, tenant: str = DEFAULT_TENANT
                  ) -> dict[str, BehaviourModel]:
    """Behaviour models fitted without the last two items of any user (see the module doc).

    One per channel that serves ``tenant``: the first stage replicated is that tenant's.
    """
    models: dict[str, BehaviourModel] = {}
    serving = engine.behaviour.for_tenant(tenant)
    served = serving.get(BEHAVIOUR)
    if served is not None and epochs != 0:
        facts = getattr(served, "facts", None)
        count = epochs or max(getattr(facts, "best_epoch", 0), 1)
        settings = SequentialSettings(dim=config.behaviour.dim, epochs=count)
        models[BEHAVIOUR] = train_sequential(shadow, settings, progress=progress, tenant=tenant)
    if COOCCURRENCE in serving and config.behaviour.cooccurrence_dim:
        models[COOCCURRENCE] = CooccurrenceModel.fit(
            shadow, dim=config.behaviour.cooccurrence_dim,
            decay=config.behaviour.cooccurrence_decay, tenant=tenant)
    return models


def build_examples(stage: OfflineFirstStage, fusion: FusionSettings,
                   pairs: Pairs, limit: int, rng: random.Random
                   ) -> list[RerankExample]:
    """First-stage candidates for each (history, target), subsampled to ``limit`` pairs."""
    if len(pairs) > limit:
        pairs = rng.sample(pairs, limit)
    histories = [h for h, _ in pairs]
    lists = stage.candidates_for(histories, fusion, CANDIDATES, exclude=histories)
    return [RerankExample(tuple(h), tuple(c), t)
            for (h, t), c in zip(pairs, lists, strict=True) if c]


def train_reranker(config: EngineConfig, log_file: Path | None, *,
                   tenant: str = DEFAULT_TENANT, settings: TrainSettings | None = None,
                   shadow_epochs: int | None = None, progress: bool = True) -> RerankSummary:
    """Build the examples, train, choose the blend, save; see the module docstring."""
    settings = settings or TrainSettings()
    rng = random.Random(settings.seed)
    engine = Engine.from_config(config, load_reranker=False)
    try:
        users, source = _sequences(engine, config, log_file, tenant)
        catalog = _catalog(engine, users, tenant)
        shadow, train_pairs, valid_pairs = cut_points(list(users.values()), set(catalog))
        if not train_pairs:
            raise InvalidInput(f"no user in {source} has 3 or more items of the catalog")
        models = shadow_models(shadow, engine, config, shadow_epochs, progress, tenant)
        stage, fusion = _first_stage(engine, config, catalog, models, tenant)
        train = build_examples(stage, fusion, train_pairs, settings.max_examples, rng)
        valid = build_examples(stage, fusion, valid_pairs, settings.valid_examples, rng)
        provenance = current_provenance(config, engine.store, tenant, base_fingerprint="")
    finally:
        engine.close()
    spec = RerankerSpec.from_settings(config.rerank, data_dir=Path(config.store.data_dir),
                                      device=config.device)
    base, tokenizer, name = load_causal_lm(spec)
    model = lora_model(base, settings)
    reranker = ListwiseReranker(model, tokenizer, name=name, prompt=PromptSettings())
    run = _train(reranker, catalog, train, valid, settings, progress)
    scores = score_lists(reranker, catalog, valid, skip_missing=True)
    blend, trials = choose_blend(valid, scores)
    informative = [e for e in valid if e.target in e.candidates]
    first, llm, blended = trials[0.0], trials[1.0], trials[blend.weight]
    training: dict[str, Any] = {
        "examples": len(train), "steps": run.steps, "seconds": round(run.seconds, 1),
        "examples_per_second": round(run.examples_per_second, 3), "best_step": run.best_step,
        "curve": run.curve, "blend_trials": trials, "candidates": CANDIDATES,
        "leakage": "candidates from a shadow first stage fitted without each user's last "
                   "two items", "source": source, "settings": _plain(settings),
        "position_bias": position_bias(reranker, catalog, informative[:50])}
    artifact = RerankArtifact(
        replace(provenance, base_fingerprint=model_fingerprint(base.config)),
        reranker.prompts.settings, blend,
        {"first_stage": first, "llm": llm, "blended": blended,
         "gain": blended / first if first else 0.0}, training)
    folder = config.rerank_path()
    artifact.save(folder, model)
    return RerankSummary(source, len(users), len(train), len(valid), artifact, folder)


def _sequences(engine: Engine, config: EngineConfig, log_file: Path | None, tenant: str
               ) -> tuple[dict[str, list[str]], str]:
    """Users' positive items in time order, from the file or the store's recorded events."""
    if log_file is not None:
        return log_sequences(log_file, config, tenant, LogStats()), str(log_file)
    source = f"events recorded in the store (tenant {tenant!r})"
    users = {u: list(s) for u, s in engine.profiles.histories(tenant)}
    if not users:
        raise InvalidInput(f"no interactions found in {source}")
    return users, source


def _catalog(engine: Engine, users: dict[str, list[str]], tenant: str) -> dict[str, ItemRecord]:
    """The records of every item the users touched that the store holds."""
    ids = sorted({i for events in users.values() for i in events})
    records: dict[str, ItemRecord] = {}
    for start in range(0, len(ids), 512):
        records.update({r.id: r for r in engine.store.get(ids[start:start + 512], tenant=tenant)})
    return records


def _first_stage(engine: Engine, config: EngineConfig, catalog: dict[str, ItemRecord],
                 models: dict[str, BehaviourModel], tenant: str
                 ) -> tuple[OfflineFirstStage, FusionSettings]:
    """The shadow models and the store's content vectors under ``tenant``'s served fusion."""
    ids, content = catalog_vectors(engine, config, tenant, [list(catalog)])
    settings = engine.recommend_settings(tenant)
    stage = OfflineFirstStage.from_settings(ids, models, content if ids else None, settings,
                                            config.profiles, tenant=tenant)
    return stage, FusionSettings.from_recommend(settings, stage.channels)


def _train(reranker: ListwiseReranker, catalog: dict[str, ItemRecord],
           train: list[RerankExample], valid: list[RerankExample], settings: TrainSettings,
           progress: bool) -> Any:
    """Train with a progress bar whose first steps state the expected time."""
    steps = planned_steps(settings, len(train))
    bar = tqdm(total=steps, desc="train-rerank", unit="step", disable=not progress)
    started = time.monotonic()

    def tick(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step == 3:
            per_step = (time.monotonic() - started) / 3
            evals = steps // settings.eval_every + 1
            scored = sum(e.target in e.candidates for e in valid)
            bar.write(f"train-rerank: {steps} steps at {per_step:.1f} s each plus {evals} "
                      f"validations of {scored} lists (those holding their target): about "
                      f"{(steps * per_step + evals * scored * per_step / 3) / 60:.0f} min")

    try:
        return train_listwise(reranker, catalog, train, valid, settings, progress=tick)
    finally:
        bar.close()


def _plain(settings: TrainSettings) -> dict[str, Any]:
    """The settings as JSON-ready values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
