"""`mmrec train-rerank` end to end: a real store, train-seq, a tiny real LLM, the artefact
served by the next engine, and refused once the first stage is retrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.config import EngineConfig
from engine.domain import DEFAULT_TENANT, RecommendRequest
from engine.rerank.listwise import ListwiseReranker
from engine.runtime.engine import Engine
from tests.test_train_seq import trained  # noqa: F401  # why: the shared fixture
from tests.tiny_llm import make_tiny_llm

runner = CliRunner()


@pytest.fixture
def tiny_llm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The configured LLM is a tiny local model (the environment beats the TOML file)."""
    folder = make_tiny_llm(tmp_path / "llm")
    monkeypatch.setenv("MMREC_RERANK__MODEL", str(folder))
    return folder


def test_train_rerank_saves_an_artefact_the_engine_serves_until_train_seq_reruns(
        trained: tuple[Path, Path], tmp_path: Path, tiny_llm_env: Path) -> None:  # noqa: F811
    config, data_dir = trained
    log = tmp_path / "events.jsonl"
    result = runner.invoke(app, ["train-rerank", str(log), "--config", str(config),
                                 "--data-dir", str(data_dir), "--steps", "12",
                                 "--shadow-epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "cut points of 12 users" in said and "blend weight" in said, said
    meta = json.loads((data_dir / "models" / "rerank" / "rerank.json").read_text())
    assert meta["training"]["steps"] == 12 and meta["provenance"]["catalog_items"] == 6
    assert 0.0 <= meta["blend"]["weight"] <= 1.0
    cfg = EngineConfig.load(config, store={"data_dir": data_dir})
    engine = Engine.from_config(cfg)
    try:
        status = {m.role: m for m in engine.info().models}["reranker"]
        assert status.loaded and "blend_weight" in status.details, status
        assert isinstance(engine.recommender.rerank_for(DEFAULT_TENANT).reranker, ListwiseReranker)
        assert engine.recommender.rerank_for("shop").reranker is not \
            engine.recommender.rerank_for(DEFAULT_TENANT).reranker  # another tenant: zero-shot
        result_ = engine.recommend(RecommendRequest(
            tenant=DEFAULT_TENANT, positive_ids=("m1", "m2"), top_k=3, rerank=True))
        assert result_.reranked >= 2 and len(result_.hits) == 3
    finally:
        engine.close()
    rerun = runner.invoke(app, ["train-seq", str(log), "--config", str(config), "--data-dir",
                                str(data_dir), "--epochs", "1", "--no-progress"])
    assert rerun.exit_code == 0, rerun.output
    engine = Engine.from_config(cfg)
    try:
        status = {m.role: m for m in engine.info().models}["reranker"]
        assert not status.loaded and "train-seq ran since" in status.reason
    finally:
        engine.close()


def test_train_rerank_without_enough_events_says_so(
        trained: tuple[Path, Path], tmp_path: Path, tiny_llm_env: Path) -> None:  # noqa: F811
    config, data_dir = trained
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"user_id": "u", "item_id": "m1", "timestamp": 1}) + "\n")
    result = runner.invoke(app, ["train-rerank", str(short), "--config", str(config),
                                 "--data-dir", str(data_dir), "--no-progress"])
    assert result.exit_code == 2 and "3 or more items" in " ".join(result.output.split())
