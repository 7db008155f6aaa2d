"""Interaction logs and `mmrec train-seq`: read every format, skip bad rows, train both
behaviour models, store their item vectors, and have the next engine serve them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.config import EngineConfig
from engine.domain import ItemInput, ItemRecord, RecommendRequest
from engine.runtime.engine import Engine
from indexers.interactions import LogStats, read_events, sequences
from tests.test_cli import write_config

runner = CliRunner()
ITEMS = [f"m{k}" for k in range(6)]


def test_read_events_in_every_format(tmp_path: Path) -> None:
    inter = tmp_path / "log.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     "1\t10\t4\t100\n1\t2\t5\t100\n2\t10\tx\t50\n\t3\t1\t1\n")
    stats = LogStats()
    events = list(read_events(inter, stats=stats))
    assert [(e.user_id, e.item_id, e.kind, e.value) for e in events] == [
        ("1", "10", "rating", 4.0), ("1", "2", "rating", 5.0)]
    assert (stats.rows, stats.skipped) == (4, 2)
    assert "unreadable number" in stats.problems[0] and "missing" in stats.problems[1]
    csv_log = tmp_path / "log.csv"
    csv_log.write_text("user_id,item_id,timestamp,kind\nu,a,3,click\nu,b,1,\n")
    assert [(e.item_id, e.kind) for e in read_events(csv_log)] == [("a", "click"), ("b", "view")]
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"user_id": "u", "item_id": "a", "timestamp": 2}\nnot json\n[1]\n')
    stats = LogStats()
    assert len(list(read_events(jsonl, stats=stats))) == 1 and stats.skipped == 2


def test_sequences_sort_by_time_then_numeric_item_id(tmp_path: Path) -> None:
    inter = tmp_path / "log.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                     "1\t10\t100\n1\t9\t100\n1\t7\t50\n2\tb\t1\n2\ta\t1\n")
    assert sequences(read_events(inter)) == {"1": ["7", "9", "10"], "2": ["a", "b"]}


@pytest.fixture
def trained(tmp_path: Path, tiny_text_dir: Path) -> tuple[Path, Path]:
    """A tiny catalog indexed into a data dir and `mmrec train-seq` run on a chain log."""
    config = write_config(tmp_path / "mmrec.toml", tiny_text_dir)
    with (tmp_path / "mmrec.toml").open("a") as toml:
        toml.write("[behaviour]\ndim = 8\ncooccurrence_dim = 4\n")
    data_dir = tmp_path / "store"
    cfg = EngineConfig.load(config, store={"data_dir": data_dir})
    engine = Engine.from_config(cfg, load_reranker=False)
    engine.upsert([ItemInput(ItemRecord(id=i, title=f"item {i}")) for i in ITEMS])
    engine.close()
    log = tmp_path / "events.jsonl"
    rows = [{"user_id": f"u{u}", "item_id": ITEMS[(u + k) % 6], "timestamp": k, "kind": "view"}
            for u in range(12) for k in range(5)]
    rows.append({"user_id": "u0", "item_id": "ghost", "timestamp": 9, "kind": "teleport"})
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = runner.invoke(app, ["train-seq", str(log), "--config", str(config), "--data-dir",
                                 str(data_dir), "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())                     # the console wraps lines
    assert "trained on 12 users / 60 interactions" in said
    assert re.search(r"\(\d+ epochs, then \d+ on every event\)", said), said
    assert "6 of 6 items got behaviour vectors" in said and "1 rows skipped" in said
    return config, data_dir


def test_train_seq_stores_vectors_and_the_next_engine_serves_them(
        trained: tuple[Path, Path]) -> None:
    config, data_dir = trained
    cfg = EngineConfig.load(config, store={"data_dir": data_dir})
    engine = Engine.from_config(cfg, load_reranker=False)
    try:
        assert engine.sequential is not None and engine.cooccurrence is not None
        for name in ("behaviour", "cooccurrence"):
            assert len(engine.store.vectors(ITEMS, tenant="default", using=name)) == 6
        # both channels asked for: the fusion tuned on this tiny log may switch one off
        result = engine.recommend(RecommendRequest(tenant="default", positive_ids=("m1", "m2"),
                                                   top_k=3, weights={"behaviour": 1.0,
                                                                     "cooccurrence": 1.0}))
        assert result.channels[:2] == ["behaviour", "cooccurrence"] and len(result.hits) == 3
        engine.upsert([ItemInput(ItemRecord(id="m3", title="item m3, renamed"))])
        assert "m3" in engine.store.vectors(["m3"], tenant="default", using="behaviour")
    finally:
        engine.close()


def test_train_seq_says_what_is_missing(tmp_path: Path, tiny_text_dir: Path) -> None:
    config = write_config(tmp_path / "mmrec.toml", tiny_text_dir)
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id,timestamp\n")
    result = runner.invoke(app, ["train-seq", str(empty), "--config", str(config),
                                 "--data-dir", str(tmp_path / "store"), "--no-progress"])
    assert result.exit_code != 0
    assert "no interactions found" in str(result.exception)
