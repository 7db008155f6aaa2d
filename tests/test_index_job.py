"""The JSONL indexing job: good rows stored once, bad rows dead-lettered, re-runs idempotent."""

from __future__ import annotations

import json
from pathlib import Path

from engine.pipeline import Engine
from indexers.job import index_catalog
from tests.conftest import png_bytes


def write_catalog(folder: Path) -> Path:
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "ok.png").write_bytes(png_bytes(1))
    (folder / "img" / "truncated.png").write_bytes(png_bytes(2)[:50])
    lines = [
        json.dumps({"id": "a", "title": "Apple", "text": "Red fruit", "colour": "red"}),
        json.dumps({"id": 7, "title": "Seven"}),
        json.dumps({"id": "pic", "image": "img/ok.png"}),
        json.dumps({"id": "uri", "title": "By URI", "image": f"file://{folder}/img/ok.png"}),
        "",
        "{not json",
        json.dumps({"title": "no id"}),
        json.dumps({"id": "empty"}),
        json.dumps({"id": "typed", "title": 5}),
        json.dumps({"id": "trunc", "title": "T", "image": "img/truncated.png"}),
        json.dumps({"id": "gone", "title": "G", "image": "img/missing.png"}),
        json.dumps([1, 2]),
    ]
    path = folder / "catalog.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "bad\xff"}\n')
    return path


def test_index_catalog_counts_dead_letters_and_is_idempotent(engine: Engine, tmp_path: Path
                                                             ) -> None:
    catalog = write_catalog(tmp_path / "cat")
    letters = tmp_path / "dead.jsonl"
    summary = index_catalog(engine, catalog, batch_size=2, dead_letter=letters, progress=False)
    assert summary.indexed == 4
    assert summary.failed == 8
    assert engine.store.count() == 4
    dead = [json.loads(line) for line in letters.read_text().splitlines()]
    by_line = {d["line"]: d for d in dead}
    assert sorted(by_line) == [6, 7, 8, 9, 10, 11, 12, 13]
    assert "not valid JSON" in by_line[6]["reason"]
    assert "no `id`" in by_line[7]["reason"]
    assert "no title, no text and no image" in by_line[8]["reason"]
    assert "`title` must be a string" in by_line[9]["reason"]
    assert "corrupt or truncated" in by_line[10]["reason"] and by_line[10]["id"] == "trunc"
    assert "does not exist" in by_line[11]["reason"]
    assert "JSON object" in by_line[12]["reason"]
    assert "UTF-8" in by_line[13]["reason"]
    [apple] = engine.get(["a"], "default")
    assert apple.attributes == {"colour": "red"}
    assert [r.id for r in engine.get(["7", "pic", "uri"], "default")] == ["7", "pic", "uri"]

    again = index_catalog(engine, catalog, batch_size=3, progress=False)
    assert (again.indexed, again.failed) == (4, 8)
    assert engine.store.count() == 4
