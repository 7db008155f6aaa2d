"""A behaviour model serves the one tenant whose log trained it, and keeps that tenant on disk.

Tenants' item ids collide (both tenants here hold ``m0``..``m7``), so a model applied
by id alone would hand one tenant's vectors, queries and explanations to the other.
Checked on real embedded stores and tiny models: the other tenant's items get no
behaviour vector and its answers equal those of an engine without any model; the
tenant (of SASRec, co-occurrence and the tuned fusion) survives save and load; files
from before the tenant was recorded load as the default tenant's; GetInfo with auth
shows a key no model of another tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.behaviour import BehaviourModel
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialModel, SequentialSettings, train_sequential
from engine.config import EngineConfig
from engine.domain import (
    BEHAVIOUR,
    COOCCURRENCE,
    DEFAULT_TENANT,
    EngineInfo,
    Event,
    ItemInput,
    ItemRecord,
    ModelStatus,
    ModelUnavailable,
    RecommendRequest,
    RecommendResult,
)
from engine.recommend.offline import FusionSettings
from engine.recommend.tuning import FUSION_FILE, TunedFusion
from engine.runtime.engine import Engine
from engine.service.auth import tenant_view
from indexers.behaviour import VALIDATION_DIR, save_models, validation_stage
from tests.conftest import make_config

TITLES = ["red apple", "green pear", "mountain bike", "road bike", "blue vase", "clay pot",
          "jazz record", "rock record"]
IDS = [f"m{k}" for k in range(len(TITLES))]
BASKETS = [["m0", "m1", "m2"], ["m1", "m2", "m3"], ["m2", "m4"], ["m3", "m4", "m5"],
           ["m6", "m7"], ["m0", "m7"]]


def config_at(folder: Path, text_dir: Path) -> EngineConfig:
    """A tiny engine config (text only) with both behaviour channels in the store."""
    cfg = make_config(folder, text_dir)
    cfg.clip.enabled = False
    cfg.behaviour.dim, cfg.behaviour.cooccurrence_dim = 8, 16
    return cfg


def models_of(tenant: str) -> tuple[SequentialModel, CooccurrenceModel]:
    """A SASRec and a co-occurrence model trained on ``tenant``'s (tiny) log."""
    sasrec = train_sequential(BASKETS, SequentialSettings(dim=8, layers=1, max_len=4, epochs=2,
                                                          seed=1), progress=False, tenant=tenant)
    return sasrec, CooccurrenceModel.fit(BASKETS, dim=16, tenant=tenant)


def catalog(tenant: str) -> list[ItemInput]:
    """The same ids and titles in every tenant: a leak by id cannot hide."""
    return [ItemInput(ItemRecord(id=i, tenant=tenant, title=t))
            for i, t in zip(IDS, TITLES, strict=True)]


def answer(engine: Engine, tenant: str) -> RecommendResult:
    """A recommendation from history and explicit positives, explained."""
    return engine.recommend(RecommendRequest(tenant=tenant, user_id="u", positive_ids=("m2",),
                                             explain=True, top_k=4))


def comparable(result: RecommendResult) -> tuple[object, ...]:
    """What a tenant sees of a result: channels, ids, scores and the history behind each."""
    return (result.channels, result.fusion, [(h.record.id, round(h.score, 6))
                                             for h in result.hits],
            [e.because_of for e in result.explanations or []])


@pytest.fixture
def engines(tmp_path: Path, tiny_text_dir: Path) -> Iterator[tuple[Engine, Engine]]:
    """An engine serving both models for tenant ``a`` and one without models, same encoders."""
    trained = Engine.from_config(config_at(tmp_path / "trained", tiny_text_dir),
                                 load_reranker=False)
    plain = Engine(config_at(tmp_path / "plain", tiny_text_dir), trained.models)
    yield trained, plain
    trained.close()
    plain.close()


def test_a_model_for_tenant_a_leaves_tenant_b_as_if_no_model_were_loaded(
        engines: tuple[Engine, Engine]) -> None:
    trained, plain = engines
    sasrec, cooccurrence = models_of("a")
    trained.upsert(catalog("a"))
    assert trained.use_behaviour(BEHAVIOUR, sasrec, "a") == len(IDS)
    assert trained.use_behaviour(COOCCURRENCE, cooccurrence, "a") == len(IDS)
    history = [Event("u", i, "view", 0.0, 1.0 + k) for k, i in enumerate(("m0", "m1"))]
    for engine in (trained, plain):
        engine.upsert(catalog("b"))            # re-indexing copies a model's vectors by id
        engine.record_events([Event(e.user_id, e.item_id, e.kind, e.value, e.timestamp,
                                    tenant="b") for e in history])
    for name in (BEHAVIOUR, COOCCURRENCE):
        assert trained.store.vectors(IDS, tenant="b", using=name) == {}
        assert set(trained.store.vectors(IDS, tenant="a", using=name)) == set(IDS)
    assert comparable(answer(trained, "b")) == comparable(answer(plain, "b"))
    trained.record_events([Event(e.user_id, e.item_id, e.kind, e.value, e.timestamp,
                                 tenant="a") for e in history])
    assert answer(trained, "a").channels[:2] == [BEHAVIOUR, COOCCURRENCE]
    assert trained.behaviour.for_tenant("b") == {}
    statuses = {m.role: m for m in trained.info().models}
    assert statuses[BEHAVIOUR].details == statuses[COOCCURRENCE].details == {"tenant": "a"}


def saved_engine(tmp_path: Path, text_dir: Path, tenant: str, *, strip: bool = False
                 ) -> tuple[EngineConfig, Engine]:
    """A data dir whose saved models (and fusion) were trained for ``tenant``, then opened.

    With ``strip`` the files lose their tenant, as files written before it was recorded.
    """
    cfg = config_at(tmp_path / "store", text_dir)
    sasrec, cooccurrence = models_of(tenant)
    fusion = TunedFusion(settings=FusionSettings({BEHAVIOUR: 1.0, "fused": 0.5}, 30, "rrf"),
                         valid_ndcg=0.5, best=FusionSettings(), best_ndcg=0.5, z=0.0, min_z=2.0,
                         alone={}, defaults_ndcg=0.4, defaults=FusionSettings(), users=3,
                         grid_size=1, seconds=0.0, tenant=tenant)
    folder = cfg.behaviour_path()
    models: dict[str, BehaviourModel] = {BEHAVIOUR: sasrec, COOCCURRENCE: cooccurrence}
    save_models(folder, models, models, fusion)
    if strip:
        for path in (folder / "model.json", folder / "cooccurrence.json", folder / FUSION_FILE,
                     folder / VALIDATION_DIR / "model.json"):
            meta = json.loads(path.read_text())
            del meta["tenant"]
            path.write_text(json.dumps(meta))
    return cfg, Engine.from_config(cfg, load_reranker=False)


def test_the_tenant_survives_save_and_load(tmp_path: Path, tiny_text_dir: Path) -> None:
    cfg, engine = saved_engine(tmp_path, tiny_text_dir, "a")
    try:
        assert SequentialModel.load(cfg.behaviour_path()).tenant == "a"
        assert CooccurrenceModel.load(cfg.behaviour_path()).tenant == "a"
        assert [engine.behaviour.tenant_of(n) for n in (BEHAVIOUR, COOCCURRENCE)] == ["a", "a"]
        assert engine.recommend_settings("a").rrf_k == 30
        assert engine.recommend_settings(DEFAULT_TENANT) is cfg.recommend
        engine.upsert(catalog(DEFAULT_TENANT) + catalog("a"))
        assert engine.store.vectors(IDS, tenant=DEFAULT_TENANT, using=BEHAVIOUR) == {}
        assert set(engine.store.vectors(IDS, tenant="a", using=BEHAVIOUR)) == set(IDS)
        result = engine.recommend(RecommendRequest(tenant=DEFAULT_TENANT, positive_ids=("m2",)))
        assert result.channels == ["fused"] and result.fusion == cfg.recommend.fusion
        with pytest.raises(ModelUnavailable, match="trained for tenant 'a', not 'default'"):
            validation_stage(engine, cfg, DEFAULT_TENANT, BASKETS)
        assert validation_stage(engine, cfg, "a", BASKETS).tenant == "a"
        details = {m.role: m.details.get("tenant") for m in engine.info().models}
        assert details[BEHAVIOUR] == details[COOCCURRENCE] == details["fusion"] == "a"
    finally:
        engine.close()


def test_an_artefact_without_a_tenant_is_the_default_tenants(tmp_path: Path,
                                                             tiny_text_dir: Path) -> None:
    cfg, engine = saved_engine(tmp_path, tiny_text_dir, "a", strip=True)
    try:
        folder = cfg.behaviour_path()
        assert SequentialModel.load(folder).tenant == DEFAULT_TENANT
        assert CooccurrenceModel.load(folder).tenant == DEFAULT_TENANT
        assert TunedFusion.load(folder / FUSION_FILE).tenant == DEFAULT_TENANT
        assert engine.behaviour.tenant_of(BEHAVIOUR) == DEFAULT_TENANT
        assert engine.recommend_settings(DEFAULT_TENANT).rrf_k == 30
        engine.upsert(catalog(DEFAULT_TENANT))
        result = engine.recommend(RecommendRequest(tenant=DEFAULT_TENANT, positive_ids=("m2",)))
        assert result.channels[:2] == [BEHAVIOUR, COOCCURRENCE]
    finally:
        engine.close()


def test_get_info_shows_a_key_no_model_of_another_tenant() -> None:
    info = EngineInfo(version="0", device="cpu", store="/srv/data", item_count=9, models=[
        ModelStatus("text", "tiny", True),
        ModelStatus(BEHAVIOUR, "SASRec at /srv/data/models/sequential", True,
                    details={"tenant": "a"}),
        ModelStatus("fusion", "tuned", True, details={"tenant": "a", "fusion": "RRF k=30"})],
        channels=[])
    theirs = tenant_view(info, 3, "qdrant-edge shard", frozenset({"b"}))
    assert [(m.role, m.loaded, m.reason, m.details) for m in theirs.models] == [
        ("text", True, "", {}), (BEHAVIOUR, False, "serves another tenant", {}),
        ("fusion", False, "serves another tenant", {})]
    assert theirs.models[1].name == "SASRec at …/sequential"
    ours = tenant_view(info, 3, "qdrant-edge shard", frozenset({"a", "b"}))
    assert [(m.loaded, m.details) for m in ours.models] == [
        (True, {}), (True, {"tenant": "a"}), (True, {"tenant": "a", "fusion": "RRF k=30"})]
