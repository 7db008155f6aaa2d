"""`mmrec train-seq` chooses the recommend fusion on validation; the next engine applies it.

Runs the real command on a tiny catalog and log (the ``trained`` fixture of
test_train_seq.py), then checks the saved choice, the models kept for
validation, the settings the next engine serves with (request > tuned >
config), the switch that ignores them, and how `mmrec info` shows them.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialModel
from engine.cli.render import print_info
from engine.config import EngineConfig
from engine.domain import EngineInfo, ItemInput, ItemRecord, ModelStatus, RecommendRequest
from engine.recommend.tuning import FUSION_FILE, TunedFusion
from engine.runtime.engine import Engine
from engine.service import convert
from indexers.behaviour import validation_stage
from tests.test_train_seq import ITEMS, trained

__all__ = ["trained"]  # the fixture, imported for pytest


def fusion_status(engine: Engine) -> ModelStatus:
    """The engine's status line of the tuned fusion."""
    return next(m for m in engine.info().models if m.role == "fusion")


def test_train_seq_saves_the_fusion_chosen_on_validation(trained: tuple[Path, Path]) -> None:
    config, data_dir = trained
    folder = EngineConfig.load(config, store={"data_dir": data_dir}).behaviour_path()
    tuned = TunedFusion.load(folder / FUSION_FILE)
    assert tuned.users == 12 and tuned.notes["unscorable"] == 0        # every user's last item
    assert set(tuned.alone) == {"behaviour", "cooccurrence", "fused"}
    assert tuned.best_ndcg >= max(tuned.defaults_ndcg, *tuned.alone.values()) - 1e-9
    assert tuned.settings == (tuned.best if tuned.z >= tuned.min_z else tuned.defaults)
    assert tuned.grid_size == 343 and tuned.seconds >= 0
    # the models that never saw the held-out items are kept beside the served ones
    validation = folder / "validation"
    assert SequentialModel.load(validation).facts.refit_epochs == 0
    assert SequentialModel.load(folder).facts.refit_epochs > 0
    held_out, served = CooccurrenceModel.load(validation), CooccurrenceModel.load(folder)
    assert held_out.item_ids == served.item_ids
    assert not (held_out.embeddings == served.embeddings).all()


def test_the_next_engine_serves_with_the_tuned_fusion(trained: tuple[Path, Path]) -> None:
    config, data_dir = trained
    cfg = EngineConfig.load(config, store={"data_dir": data_dir})
    tuned = TunedFusion.load(cfg.behaviour_path() / FUSION_FILE)
    engine = Engine.from_config(cfg, load_reranker=False)
    try:
        assert tuned.tenant == "default"
        settings = engine.recommend_settings("default")
        assert settings.rrf_k == tuned.settings.rrf_k and settings.fusion == tuned.settings.fusion
        assert settings.weights == {**cfg.recommend.weights, **tuned.settings.weights}
        assert engine.recommend_settings("other") is cfg.recommend        # tuned for default
        status = fusion_status(engine)
        assert status.loaded and status.details == tuned.details()
        result = engine.recommend(RecommendRequest(tenant="default", positive_ids=("m1",)))
        assert result.fusion == tuned.settings.fusion
        other = "dbsf" if tuned.settings.fusion == "rrf" else "rrf"
        asked = engine.recommend(RecommendRequest(tenant="default", positive_ids=("m1",),
                                                  fusion=other))
        assert asked.fusion == other                                     # the request wins
    finally:
        engine.close()


def test_recommend_tuned_false_keeps_the_configured_fusion(trained: tuple[Path, Path]) -> None:
    config, data_dir = trained
    cfg = EngineConfig.load(config, store={"data_dir": data_dir}, recommend={"tuned": False})
    engine = Engine.from_config(cfg, load_reranker=False)
    try:
        assert engine.recommend_settings("default") == cfg.recommend
        status = fusion_status(engine)
        assert not status.loaded and "recommend.tuned = false" in status.reason
        assert "valid_ndcg@10 alone" in status.details                  # still shown
    finally:
        engine.close()


def test_a_broken_fusion_file_is_reported_and_ignored(trained: tuple[Path, Path]) -> None:
    config, data_dir = trained
    cfg = EngineConfig.load(config, store={"data_dir": data_dir})
    (cfg.behaviour_path() / FUSION_FILE).write_text('{"format": 1, "settings": {}}')
    engine = Engine.from_config(cfg, load_reranker=False)
    try:
        assert engine.recommend_settings("default") == cfg.recommend
        status = fusion_status(engine)
        assert not status.loaded and "mmrec train-seq" in status.reason
        assert len(engine.recommend(RecommendRequest(tenant="default", positive_ids=(ITEMS[1],),
                                                     top_k=3)).hits) == 3
    finally:
        engine.close()


def test_info_carries_and_shows_the_details() -> None:
    status = ModelStatus("fusion", "tuned on validation", True,
                         details={"fusion": "RRF k=30; weights behaviour 1, fused 0",
                                  "valid_ndcg@10 alone": "behaviour 0.1200, fused 0.0200"})
    info = EngineInfo("1", "cpu", "qdrant-edge", 3, models=[status])
    assert convert.info_from_response(convert.info_response(info)) == info
    out = io.StringIO()
    print_info(Console(file=out, width=200), info)
    text = out.getvalue()
    assert "model fusion: tuned on validation" in text
    assert "    fusion: RRF k=30; weights behaviour 1, fused 0" in text
    assert "    valid_ndcg@10 alone: behaviour 0.1200, fused 0.0200" in text


def test_a_channel_switched_off_stays_off_in_the_cold_start_with_context(
        engine: Engine) -> None:
    """A tuned (or asked) weight of 0 on ``fused`` used to reach the store and be refused."""
    engine.upsert([ItemInput(ItemRecord(id=f"b{k}", title=f"road bike {k}")) for k in range(4)])
    request = RecommendRequest(tenant="default", user_id="new", context="bike", top_k=3,
                               weights={"fused": 0.0})
    result = engine.recommend(request)
    assert result.cold_start and "fused" not in result.channels
    assert result.channels[-1] == "popularity" and len(result.hits) == 3
    off = {name: 0.0 for name in ("fused", "clip", "text", "lexical")}
    none_on = engine.recommend(RecommendRequest(tenant="default", user_id="new",
                                                context="bike", weights=off))
    assert none_on.channels == ["popularity"]


def test_the_validation_stage_serves_candidates_from_the_blind_models(
        trained: tuple[Path, Path]) -> None:
    config, data_dir = trained
    cfg = EngineConfig.load(config, store={"data_dir": data_dir})
    engine = Engine.from_config(cfg, load_reranker=False)
    try:
        history = ["m0", "m1", "m2"]
        stage = validation_stage(engine, cfg, "default", [ITEMS, history])
        assert stage.channels == ("behaviour", "cooccurrence", "fused")
        sasrec = stage.models["behaviour"]
        assert isinstance(sasrec, SequentialModel) and sasrec.facts.refit_epochs == 0
        tuned = TunedFusion.load(cfg.behaviour_path() / FUSION_FILE)
        [candidates] = stage.candidates_for([history], tuned.settings, 3)
        assert len(candidates) == 3 and not set(candidates) & set(history)
    finally:
        engine.close()
